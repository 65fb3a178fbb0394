"""``export_model``: checkpoint in, complete and validated model package out.

The package is assembled in a hidden temporary folder beside ``output`` and moved into place only
when every step succeeded, so a failed or interrupted export never leaves a half-written package.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import torch
from rich.console import Console
from segment_anything.modeling import Sam

import samdeploy
from samdeploy.errors import CheckpointError, ExportError
from samdeploy.export import optimize
from samdeploy.export.attention import DEFAULT_ATTENTION_ROWS, chunk_global_attention
from samdeploy.export.checkpoint import (
    load_sam,
    load_state_dict,
    normalize_state_dict,
    resolve_config,
)
from samdeploy.export.checks import (
    DEFAULT_SIMPLIFIER,
    check_checkpoint_outside,
    check_export_options,
    check_output,
)
from samdeploy.export.config import SamConfig, detect_config, preset_name
from samdeploy.export.layout import flatten_token_grid
from samdeploy.export.models import (
    decoder_specs,
    encoder_specs,
    export_decoder,
    export_encoder,
    export_image_side,
    export_low_res_decoder,
    export_prepared_decoder,
    image_side_specs,
    low_res_decoder_specs,
    prepared_decoder_specs,
)
from samdeploy.export.validate import failures, non_finite, norm_eps_sensitivity, validate_package
from samdeploy.package import (
    DECODER,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_SIDE,
    LOW_RES_DECODER,
    MANIFEST,
    PREPARED_DECODER,
    TensorSpec,
    describe_files,
    sha256_file,
    write_manifest,
)

# Disk needed per byte of fp32 weights: the traced graph and the final file exist side by side,
# plus the int8 copy when quantizing; with a margin for the graph structure.
_DISK_FACTOR = 2.5
_DISK_MARGIN = 64 * 2**20

logger = logging.getLogger(__name__)


@dataclass
class ExportReport:
    """What an export produced: the package folder, its manifest, and the figures shown to users."""

    output: Path
    model_type: str
    config: SamConfig
    precision: str
    files: dict[str, int]
    nodes: dict[str, dict[str, int]]
    timings: dict[str, float]
    validation: dict[str, Any] | None
    manifest: dict[str, Any] = field(repr=False)


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where the OS cannot tell)."""
    try:
        import resource
    except ImportError:
        return None
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Steps:
    """Times each slow step and notes the peak memory after it; with a console, shows a spinner
    while it runs and a line when done."""

    def __init__(self, console: Console | None) -> None:
        self.console = console
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float | None] = {}

    @contextmanager
    def step(self, key: str, label: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(f"{label}..."):
                yield
        elapsed = time.perf_counter() - start
        self.timings[key] = round(elapsed, 3)
        self.peak_rss_mb[key] = _peak_rss_mb()
        if self.console is not None:
            self.console.print(f"[green]✓[/] {label} [dim]{elapsed:.1f}s[/]", highlight=False)


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (the nearest existing ancestor)."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _config_of_module(sam: Sam) -> SamConfig:
    """Config of an in-memory ``Sam``: shapes, plus what only the module knows (decoder heads, pixel stats)."""
    heads = sam.mask_decoder.transformer.layers[0].self_attn.num_heads
    config = detect_config(sam.state_dict(), decoder_num_heads=heads)
    mean = tuple(float(v) for v in sam.pixel_mean.flatten())
    std = tuple(float(v) for v in sam.pixel_std.flatten())
    eps = {
        float(module.eps)
        for block in sam.image_encoder.blocks
        for module in (block.norm1, block.norm2)
        if isinstance(module, torch.nn.LayerNorm)
    }
    if len(eps) > 1:
        raise ExportError(f"the image encoder's LayerNorms use different eps values {sorted(eps)}: not a SAM")
    values = {**config.to_json(), "pixel_mean": mean, "pixel_std": std}
    if eps:
        values["encoder_norm_eps"] = eps.pop()
    return SamConfig.from_json(values)


def check_finite_weights(sam: torch.nn.Module) -> None:
    """Refuse weights holding NaN or infinities: every output would be NaN, and no comparison with
    NaN exceeds a limit, so validation alone would let such a model through."""
    bad = [
        name
        for name, tensor in sam.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"checkpoint holds NaN or infinite weights in {', '.join(bad[:3])}{more}")


def _check_disk(output: Path, weight_bytes: int) -> None:
    needed = int(weight_bytes * _DISK_FACTOR) + _DISK_MARGIN
    free = free_disk_bytes(output.parent)
    if free < needed:
        raise ExportError(
            f"not enough disk space for {output}: export needs about {needed / 2**30:.1f} GiB,"
            f" {free / 2**30:.1f} GiB free"
        )


def _node_count(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load(
    checkpoint: str | Path | Mapping[str, Any] | Sam,
    model_type: str,
    config: SamConfig | None,
    encoder_norm_eps: float | None = None,
) -> tuple[Sam, SamConfig, dict[str, Any]]:
    """The torch model, its config, and provenance for the report."""
    if isinstance(checkpoint, Sam):
        resolved = config or _config_of_module(checkpoint)
        if model_type != "auto":
            resolve_config(checkpoint.state_dict(), model_type)
        if encoder_norm_eps is not None and encoder_norm_eps != resolved.encoder_norm_eps:
            raise ExportError(
                f"the module's encoder LayerNorms use eps {resolved.encoder_norm_eps:g}, not the"
                f" {encoder_norm_eps:g} asked for: the module is exported as it is"
            )
        return checkpoint.eval(), resolved, {"source": "torch module"}
    if isinstance(checkpoint, Mapping):
        state = normalize_state_dict(checkpoint, source="state dict")
        source: dict[str, Any] = {"source": "state dict"}
    else:
        path = Path(checkpoint)
        state = load_state_dict(path)
        source = {"source": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    # An explicit config adds what shapes cannot tell (decoder heads, pixel statistics); loading
    # the weights into it (strict) still checks every shape.
    detected = resolve_config(state, model_type) if config is None or model_type != "auto" else None
    resolved = config or detected
    if encoder_norm_eps is not None:
        resolved = dataclasses.replace(resolved, encoder_norm_eps=encoder_norm_eps)
    return load_sam(state, resolved), resolved, source


def _is_sam2(checkpoint: Any, config: Any, model_type: str) -> bool:
    """Whether the export is of a SAM 2.x model (config, model type or the weights say so)."""
    if config is not None and not isinstance(config, SamConfig):
        return True
    if model_type != "auto" or isinstance(checkpoint, Sam):
        return model_type.startswith("sam2")
    from samdeploy.export.sam2 import is_sam2_state

    if isinstance(checkpoint, Mapping):
        return is_sam2_state(normalize_state_dict(checkpoint, source="state dict"))
    if isinstance(checkpoint, (str, Path)):
        return is_sam2_state(load_state_dict(Path(checkpoint)))
    return not isinstance(checkpoint, Sam) and hasattr(checkpoint, "sam_mask_decoder")


def model_entry(role: str, specs: tuple[list[TensorSpec], list[TensorSpec]], **extra: Any) -> dict[str, Any]:
    """The manifest's entry of model ``role``: its file ``<role>.onnx``, its input and output tensor
    ``specs`` and any ``extra`` fields (``mask_tokens``, ``contract``)."""
    inputs, outputs = specs
    return {
        "file": f"{role}.onnx",
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        **extra,
    }


def trace_and_simplify(
    role: str, label: str, trace: Callable[[Path], None], work: Path, simplify: str, steps: _Steps
) -> tuple[Path, dict[str, int]]:
    """Trace one graph with ``trace(path)`` into ``work``, then simplify it (unless ``none``).

    Returns the ONNX file to carry on from and its node counts per step. One folder per graph: over
    2 GB the tracer writes every weight as its own file there.
    """
    folder = work / role
    folder.mkdir()
    current = folder / f"{role}.onnx"
    with steps.step(f"trace_{role}", f"tracing the {label}"):
        try:
            trace(current)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ExportError(f"tracing the {label} failed: {_one_line(exc)}") from None
    counts = {"traced": _node_count(current)}
    if simplify != "none":
        simplified = work / f"{role}.simplified" / f"{role}.onnx"
        simplified.parent.mkdir()
        with steps.step(f"simplify_{role}", f"simplifying the {label} ({simplify})"):
            try:
                optimize.simplify(current, simplified, simplify)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(
                    f"{simplify} failed on the {label}: {_one_line(exc)}; retry with --simplify none"
                ) from None
        current = simplified
        counts["simplified"] = _node_count(current)
    return current, counts


def rewrite_encoder(
    current: Path, work: Path, steps: _Steps, attention_rows: int
) -> tuple[Path, dict[str, int]]:
    """Rewrite the traced image encoder for CPUs: its global attention in bands of ``attention_rows``
    query rows (:func:`~samdeploy.export.attention.chunk_global_attention`; 0 leaves it as traced)
    and its token grid carried as rows of tokens (:func:`~samdeploy.export.layout.flatten_token_grid`).
    The same arithmetic either way. Returns the file to carry on from and what was rewritten."""
    rewritten = work / f"{ENCODER}.rewritten" / f"{ENCODER}.onnx"
    rewritten.parent.mkdir()
    with steps.step("rewrite_encoder", "rewriting the image encoder (attention bands, token rows)"):
        model = onnx.load(str(current))
        counts = {
            "chunked_attention_blocks": chunk_global_attention(model, rows=attention_rows)
            if attention_rows
            else 0,
            "token_rows": flatten_token_grid(model),
        }
        if any(counts.values()):
            optimize.save(model, rewritten)
            current = rewritten
        del model
    return current, {key: value for key, value in counts.items() if value}


def save_graph(current: Path, staging: Path, role: str, label: str, steps: _Steps) -> list[str]:
    """Save the finished graph as ``<role>.onnx`` in the package folder, checked; its file names."""
    with steps.step(f"save_{role}", f"saving the {label}"):
        files = optimize.save(onnx.load(str(current)), staging / f"{role}.onnx")
        onnx.checker.check_model(str(staging / f"{role}.onnx"))
    return files


def export_model(
    checkpoint: str | Path | Mapping[str, Any] | Sam,
    output: str | Path,
    model_type: str = "auto",
    *,
    config: SamConfig | Any | None = None,
    opset: int = 17,
    simplify: str = DEFAULT_SIMPLIFIER,
    quantize: str = "none",
    attention_rows: int | None = DEFAULT_ATTENTION_ROWS,
    encoder_norm_eps: float | None = None,
    validate: bool = True,
    force: bool = False,
    console: Console | None = None,
) -> ExportReport:
    """Export a SAM (or SAM 2.x) checkpoint to a model package folder and return what was written.

    The family is detected from the weights: a SAM 2.x checkpoint (or a SAM 2 Hydra YAML path /
    :class:`~samdeploy.export.sam2.Sam2Config` as ``config``) goes to
    :func:`samdeploy.export.sam2.export_sam2` (fp32 only; ``model_type`` may name a SAM 2 preset).

    Args:
        checkpoint: a ``.pth`` file (read with ``weights_only=True``), a state dict, or a ``Sam`` module.
        output: the package folder to create; an existing package is replaced only with ``force``.
        model_type: ``auto`` (detect from tensor shapes), ``vit_b``, ``vit_l`` or ``vit_h`` (checked).
        config: the architecture, when shapes cannot tell it all (a custom decoder head count).
        opset: ONNX opset of both graphs.
        simplify: ``onnxslim``, ``onnxsim`` or ``none``.
        quantize: ``none`` (fp32) or ``int8`` (ONNX Runtime dynamic quantization of MatMul/Gemm).
        attention_rows: rewrite the encoder's global attention over large grids (the official
            64x64) to run on bands of this many query rows (:mod:`samdeploy.export.attention`):
            same numbers, GBs less memory, faster; ``None`` or 0 keeps the attention as traced.
        encoder_norm_eps: epsilon of the image encoder's LayerNorms, which no checkpoint records:
            ``None`` takes ``config``'s (the official 1e-6 by default, or a ``Sam`` module's own);
            pass 1e-5 for a model built with ``ImageEncoderViT``'s default norm layer.
        validate: compare ONNX Runtime with PyTorch after writing; fp32 exports fail beyond
            :data:`samdeploy.export.validate.TOLERANCES`, int8 ones record their differences.
        force: replace an existing package at ``output``.
        console: where to show progress; ``None`` for silence.

    Raises:
        CheckpointError: missing, corrupt, unsafe or non-SAM checkpoint; NaN or infinite weights;
            wrong ``model_type``.
        ExportError: bad option, unusable output folder (not a package, or holding the input
            checkpoint), too little disk, tracing or validation failure (non-finite outputs fail
            at every precision).
    """
    output = Path(output)
    check_export_options(
        model_type=model_type,
        simplify=simplify,
        quantize=quantize,
        attention_rows=attention_rows,
        encoder_norm_eps=encoder_norm_eps,
        opset=opset,
    )
    # Before the checkpoint is read (telling SAM 2 from SAM reads it): a taken folder is refused at once.
    check_output(output, force)
    check_checkpoint_outside(checkpoint, output)
    if _is_sam2(checkpoint, config, model_type):
        from samdeploy.export.sam2 import export_sam2

        if quantize != "none":
            raise ExportError("SAM 2 packages are exported in fp32 only (--quantize none)")
        report = export_sam2(
            checkpoint,
            output,
            config=config,  # type: ignore[arg-type]
            opset=opset,
            simplify=simplify,
            validate=validate,
            force=force,
            console=console,
        )
        if model_type not in ("auto", report.model_type):
            raise CheckpointError(
                f"checkpoint is {report.model_type}, not {model_type}: fix --model-type or use auto"
            )
        return report

    steps = _Steps(console)
    with steps.step("load", "loading checkpoint"):
        sam, sam_config, source = _load(checkpoint, model_type, config, encoder_norm_eps)
    check_finite_weights(sam)
    weight_bytes = sum(t.numel() * t.element_size() for t in sam.state_dict().values())
    _check_disk(output, weight_bytes)
    name = preset_name(sam_config)
    precision = "int8" if quantize == "int8" else "fp32"

    try:
        staging = new_staging(output, console)
    except OSError as exc:
        raise ExportError(f"cannot create {output}: {exc.strerror or exc}") from None
    try:  # from here on, an error or an interrupt removes the staging folder (below)
        work = staging / ".work"
        work.mkdir()
        files: list[str] = []
        nodes: dict[str, dict[str, int]] = {}
        graphs = (
            (ENCODER, "image encoder", lambda path: export_encoder(sam, path, opset)),
            (DECODER, "mask decoder", lambda path: export_decoder(sam, sam_config, path, opset)),
            (
                LOW_RES_DECODER,
                "low-res mask decoder",
                lambda path: export_low_res_decoder(sam, sam_config, path, opset),
            ),
            (
                IMAGE_SIDE,
                "decoder's image side",
                lambda path: export_image_side(sam, sam_config, path, opset),
            ),
            (
                PREPARED_DECODER,
                "prepared mask decoder",
                lambda path: export_prepared_decoder(sam, sam_config, path, opset),
            ),
        )
        for role, label, trace in graphs:
            current, counts = trace_and_simplify(role, label, trace, work, simplify, steps)
            if role == ENCODER:
                current, rewrites = rewrite_encoder(current, work, steps, attention_rows)
                counts.update(rewrites)
            # Only the encoder: the decoders are a few ms a prompt, and stay faithful in float32.
            if quantize == "int8" and role == ENCODER:
                quantized = work / f"{role}.int8" / f"{role}.onnx"
                quantized.parent.mkdir()
                with steps.step(f"quantize_{role}", f"quantizing the {label} (int8)"):
                    optimize.quantize_int8(current, quantized)
                current = quantized
                counts["quantized"] = _node_count(current)
            files += save_graph(current, staging, role, label, steps)
            nodes[role] = counts
        shutil.rmtree(work)

        report = None
        if validate:
            with steps.step("validate", "validating against PyTorch"):
                try:
                    report = validate_package(
                        sam,
                        staging / f"{ENCODER}.onnx",
                        staging / f"{DECODER}.onnx",
                        staging / f"{LOW_RES_DECODER}.onnx",
                        (staging / f"{IMAGE_SIDE}.onnx", staging / f"{PREPARED_DECODER}.onnx"),
                        # What the manifest will say, so a wrong constant there fails validation.
                        pixel_mean=sam_config.pixel_mean,
                        pixel_std=sam_config.pixel_std,
                    )
                except Exception as exc:
                    # ONNX Runtime refusing to run a written graph (onnxslim at opset 16 gives a
                    # decoder that fails on a prompt batch): a failed export, not a traceback.
                    retry = "" if simplify == "none" else f"; retry without --simplify {simplify}"
                    raise ExportError(
                        f"validation could not run the exported graphs ({_one_line(exc)}){retry};"
                        " nothing was written"
                    ) from None
                if name == "custom":
                    # A custom model may come from a bare ImageEncoderViT (eps 1e-5) or build_sam
                    # (1e-6); say how much that choice matters for this checkpoint.
                    report["encoder_norm_eps_sensitivity"] = norm_eps_sensitivity(sam)
            problems = failures(report)
            report["passed"] = not problems
            # Non-finite outputs fail at every precision: such a package computes nothing usable,
            # and its figures (NaN) would never exceed a limit.
            if problems and (precision == "fp32" or non_finite(report)):
                raise ExportError(
                    f"validation against PyTorch failed: {'; '.join(problems)}; nothing was written"
                )

        # Token 0 is the single-mask output, tokens 1..3 the multimask ones (both decoders).
        mask_tokens = {"single": 0, "multimask": list(range(1, sam_config.num_mask_tokens))}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": name,
            "architecture": sam_config.to_json(),
            "image_size": sam_config.image_size,
            "embedding_size": [sam_config.embedding_size] * 2,
            "mask_input_size": [sam_config.mask_input_size] * 2,
            "pixel_mean": list(sam_config.pixel_mean),
            "pixel_std": list(sam_config.pixel_std),
            "preprocessing": {
                "resize": "longest_side",
                "normalize": "runtime",
                "pad": "runtime",
                "channel_order": "RGB",
                "layout": "NCHW",
                "pad_position": "bottom_right",
            },
            "precision": precision,
            "opset": opset,
            "models": {
                ENCODER: model_entry(ENCODER, encoder_specs(sam_config)),
                DECODER: model_entry(DECODER, decoder_specs(sam_config), mask_tokens=mask_tokens),
                LOW_RES_DECODER: model_entry(
                    LOW_RES_DECODER, low_res_decoder_specs(sam_config), mask_tokens=mask_tokens
                ),
                IMAGE_SIDE: model_entry(IMAGE_SIDE, image_side_specs(sam_config)),
                PREPARED_DECODER: model_entry(
                    PREPARED_DECODER, prepared_decoder_specs(sam_config), mask_tokens=mask_tokens
                ),
            },
            "files": describe_files(staging, files),
            "export": {
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "checkpoint": source,
                "versions": {
                    "samdeploy": samdeploy.__version__,
                    "torch": torch.__version__,
                    "segment_anything": _version("segment-anything"),
                    "onnx": onnx.__version__,
                    "onnxruntime": _version("onnxruntime"),
                    simplify: _version(simplify) if simplify != "none" else None,
                },
                "exporter": "torch.onnx TorchScript (dynamo=False)",
                "simplify": simplify,
                "quantize": quantize,
                "attention_rows": attention_rows or None,
                "nodes": nodes,
                "timings": steps.timings,
                "peak_rss_mb": steps.peak_rss_mb,
                "validation": report,
            },
        }
        if bad := non_finite(manifest):
            raise ExportError(
                f"the manifest would hold non-finite values at {', '.join(bad)}; nothing was written"
            )
        write_manifest(staging, manifest)
        move_into_place(staging, output)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"writing {output} failed: {exc.strerror or _one_line(exc)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(
        output=output,
        model_type=name,
        config=sam_config,
        precision=precision,
        files={f: manifest["files"][f]["bytes"] for f in files},
        nodes=nodes,
        timings=steps.timings,
        validation=report,
        manifest=manifest,
    )


_OWNER = ".owner"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(output: Path) -> list[tuple[Path, int]]:
    """Remove the hidden ``.NAME.partial-*`` folders of ``output`` left by exports that died
    without cleaning up (SIGKILL, power loss); returns each removed folder with its size in bytes.

    A partial folder records the process writing it (``.owner``: host and pid); one whose process
    still runs on this host, or that another host writes, is left alone. A folder without that
    record comes from an older samdeploy and is stale.
    """
    removed = []
    host = socket.gethostname()
    for folder in sorted(output.parent.glob(f".{output.name}.partial-*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            owner_host, pid = (folder / _OWNER).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            pass  # no (readable) record: written by a version without one
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(folder, ignore_errors=True)
        removed.append((folder, size))
    return removed


def new_staging(output: Path, console: Console | None = None) -> Path:
    """Create the hidden staging folder beside ``output`` (stale ones of the same target are removed
    first, and said so) and record this process as its owner.

    Interrupted after the folder exists (Ctrl-C, or SIGTERM turned into KeyboardInterrupt), it removes
    the folder itself: the caller's clean-up only covers what follows the return. Callers enter their
    own ``try`` right after it, with nothing in between that could be interrupted.
    """
    for folder, size in remove_stale_partials(output):
        message = f"removed {folder.name} ({size / 2**20:.1f} MiB), left by an interrupted export of {output}"
        logger.warning(message)
        if console is not None:
            console.print(f"[yellow]note[/]: {message}", highlight=False, soft_wrap=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        (staging / _OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _package_files(folder: Path) -> set[str]:
    """Names of the files a package's manifest says are its own, plus ``model.json``: only plain
    names of regular files directly in ``folder`` (a manifest naming ``../x`` or a link names nothing
    that replacing the package may delete)."""
    try:
        listed = set(json.loads((folder / MANIFEST).read_text()).get("files", {}))
    except (OSError, ValueError, AttributeError):
        listed = set()
    own = set()
    for name in listed | {MANIFEST}:
        path = folder / name
        if Path(name).name == name and name not in (".", "..") and path.is_file() and not path.is_symlink():
            own.add(name)
    return own


def move_into_place(staging: Path, output: Path) -> None:
    """Put the finished package at ``output``.

    A new folder is one rename. An existing package is replaced file by file: each new file renamed
    over its old version, the old package's files that the new one no longer has removed, and
    ``model.json`` renamed last; anything else in the folder (notes, a checkpoint) stays.
    """
    (staging / _OWNER).unlink(missing_ok=True)
    if not output.exists():
        staging.rename(output)
        return
    old = _package_files(output)
    new = sorted(p.name for p in staging.iterdir() if p.name != MANIFEST)
    for name in new:
        os.replace(staging / name, output / name)
    for name in sorted(old - set(new) - {MANIFEST}):
        (output / name).unlink(missing_ok=True)
    os.replace(staging / MANIFEST, output / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)
