"""Faster packages: turn an exported fp32 package into one tuned for CPU inference.

    from samdeploy.export.precision import optimize_package
    report = optimize_package("models/sam_vit_b", "models/sam_vit_b_int8", precision="int8")

Five kinds, measured on 2-core machines (docs/performance.md has the numbers):

* **Chunked global attention** (every precision; :mod:`samdeploy.export.attention`). ``samdeploy
  export`` bands it in 4-row bands already, the fastest for ONNX Runtime (fp32, int8). Here the
  encoder's attention is banded again for the package's backend: packages that run on OpenVINO (bf16,
  int8-bf16) take 32-row bands, which its fused attention kernel runs 2-3% faster, and packages
  exported with ``attention_rows=0`` or by earlier versions get bands.
* **Token rows** (:mod:`samdeploy.export.layout`): the encoder's channels-last residual stream
  carried as ``[B, H*W, C]``, so OpenVINO does not transpose it around every layer norm and residual
  add (3-5% of the int8-bf16 encoder; the same arithmetic, reshaped). ``samdeploy export`` does it
  for every package; here it is done for the bf16 and int8-bf16 packages of sources exported before.
* **int8** (``precision="int8"``): the encoder's 48 linear layers (qkv, proj, MLP: 70% of its
  FLOPs) run as int8 MatMulInteger with per-call activation quantization (ONNX Runtime dynamic
  quantization), weights int8 per output channel with ``reduce_range`` (7-bit). Without VNNI, x86 multiplies u8 x s8
  pairs with ``vpmaddubsw``, whose int16 sums saturate with full 8-bit weights: on the vit_b test
  that costs embedding cosine 0.982; 7-bit weights keep it at 0.9998. Attention products and the
  convolutions stay float32. The decoder stays float32: it is a few ms.
* **bf16** (``precision="bf16"``): the float32 graphs (the encoder's bands and token rows set for
  OpenVINO, the same arithmetic), and ``runtime`` in the manifest
  asking for the encoder and decoders to run on OpenVINO at bf16 inference precision: every matrix
  product, attention included, in bfloat16 on CPUs that multiply it natively (AVX512-BF16, AMX). Where that
  cannot run (no OpenVINO, an older CPU), ``load_model`` warns and runs the float32 graphs. The
  decoders' attention to the image is multiplied as ``(V^T P^T)^T``
  (:mod:`samdeploy.export.decoder_attention`), which OpenVINO runs as plain matrix products rather
  than its fused attention kernel: clicks 1.2-1.3x faster on the AMX Xeon, the same arithmetic.
* **int8-bf16** (``precision="int8-bf16"``): the bf16 package, with the encoder's linear layers on
  int8 weights (per output channel, stored as int8 + ``DequantizeLinear``). OpenVINO runs those
  layers in int8, quantizing their inputs on the fly per group of ``quantization_group`` channels
  (the encoder's width). The attention scores QK^T of chains over 128 keys or more are multiplied
  in int8 too, inside OpenVINO's fused attention kernel, from q and k rounded to int8 per token on the fly
  (:func:`~samdeploy.export.attention.int8_attention_scores`); the soft-max, xV, convolutions and
  decoders run in bf16. It needs what bf16 needs; elsewhere the same graph runs in float32 on ONNX
  Runtime, from the int8 weights and the rounded q and k.
* **fp32-openvino** (``precision="fp32-openvino"``): the fp32 package's float32 arithmetic, with
  the encoder (in OpenVINO's band height) asked to run on OpenVINO at f32, whose fused attention
  kernel keeps each band's scores in cache: the encoder closest to the CPU's matrix-multiply peak
  (vit_b on Zen 4: 92% of it, against ONNX Runtime's 78-83%). The decoders stay on ONNX Runtime,
  faster there per click. It needs OpenVINO, any CPU; elsewhere ONNX Runtime runs the same graphs. It
  is held to a faithful bar (:data:`FAITHFUL_BAR`), not the fast packages' one.

The new package is validated against its source through the runtime itself (embedding cosine on
several images, mask agreement of every parity prompt) and timed against it side by side; the
figures go into ``model.json`` under ``export.precision``. A package below the accuracy bar
(cosine >= 0.999, masks agreeing on >= 98% of pixels) is refused unless ``strict=False``.

SAM 2.x packages take the same options through ``SAM2ImagePredictor``; their bar adds the cosine of
both high-resolution feature maps (the decoder reads them too), int8-bf16 groups follow Hiera's
width (the trunk's ``embed_dim``), the attention chunking finds nothing to rewrite in Hiera (its
global blocks have no relative-position terms) so it leaves the encoder as traced, and int8-bf16
takes int8 scores in Hiera's global blocks and 196-key windows.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from samdeploy.errors import ExportError
from samdeploy.export.attention import (
    DEFAULT_ATTENTION_ROWS,
    MIN_CHUNK_TOKENS,
    OPENVINO_ATTENTION_ROWS,
    chunk_global_attention,
    int8_attention_scores,
    unchunk_global_attention,
)
from samdeploy.export.checks import (
    BF16_PRECISIONS,
    BF16_RUNTIME,
    OPENVINO_PRECISIONS,
    check_attention_rows,
    check_output,
    check_package_runtime,
    check_precision,
)
from samdeploy.export.decoder_attention import transpose_value_products
from samdeploy.export.exporter import move_into_place, new_staging
from samdeploy.export.layout import flatten_token_grid
from samdeploy.export.optimize import compress_weights_int8, quantize_int8
from samdeploy.export.validate import cosine
from samdeploy.package import (
    ENCODER,
    ModelPackage,
    describe_files,
    write_manifest,
)

# Where an fp32-openvino package's encoder runs: OpenVINO at f32 (its decoders stay on ONNX Runtime).
F32_OPENVINO_RUNTIME = {"backend": "openvino", "precision": "f32"}
# The accuracy bar of issue 7 for a fast package, against the fp32 package it was made from.
ACCURACY_BAR = {"embeddings_cosine": 0.999, "mask_agreement": 0.98}
# The bar of a package that keeps the fp32 arithmetic on another runtime: float32 rounding apart
# (relative differences around 1e-6), the same embeddings and masks.
FAITHFUL_BAR = {"embeddings_cosine": 0.99999, "mask_agreement": 0.999}
# Precisions held to FAITHFUL_BAR instead of the fast packages' bar.
FAITHFUL_PRECISIONS = ("fp32-openvino",)
# SAM 2's decoder reads two more encoder outputs, the high-resolution feature maps: each is held to
# the embedding's cosine bar.
SAM2_ACCURACY_BAR = {**ACCURACY_BAR, "high_res_feats_0_cosine": 0.999, "high_res_feats_1_cosine": 0.999}


@dataclass
class PrecisionReport:
    """What :func:`optimize_package` wrote and measured."""

    output: Path
    precision: str
    transforms: list[str]
    accuracy: dict[str, Any]
    speed: dict[str, Any] | None
    passed: bool
    files: dict[str, int]
    manifest: dict[str, Any] = field(repr=False)


# ----------------------------------------------------------------------------- checking and timing


def _parity_prompts(height: int, width: int) -> dict[str, dict[str, Any]]:
    """Prompt kinds of the export validation, as ``SamPredictor.predict`` arguments."""
    box = np.array([0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height])
    return {
        "point": {"point_coords": np.array([[0.35 * width, 0.3 * height]]), "point_labels": np.array([1])},
        "points_with_negatives": {
            "point_coords": np.array(
                [[0.35 * width, 0.3 * height], [0.7 * width, 0.55 * height], [0.5 * width, 0.9 * height]]
            ),
            "point_labels": np.array([1, 0, 1]),
        },
        "box": {"box": box, "multimask_output": False},
        "box_and_point": {
            "box": box,
            "point_coords": np.array([[0.3 * width, 0.25 * height]]),
            "point_labels": np.array([0]),
            "multimask_output": False,
        },
        "box_batch": {
            "box": np.array(
                [
                    [0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height],
                    [0.55 * width, 0.4 * height, 0.9 * width, 0.75 * height],
                    [0.05 * width, 0.6 * height, 0.35 * width, 0.95 * height],
                ]
            ),
            "multimask_output": False,
        },
    }


def compare_packages(
    reference: str | Path, candidate: str | Path, images: int = 2, threads: int | None = None
) -> dict[str, Any]:
    """Accuracy of ``candidate`` against ``reference`` through the runtime (the family's predictor).

    For ``images`` synthetic pictures of different shapes: embedding cosine and max abs
    difference; for every parity prompt (plus a ``mask_input`` chain from the point result), the
    fraction of mask pixels that agree, and the largest score difference. ``worst`` holds the
    figures the accuracy bar applies to.
    """
    from samdeploy.export.validate import synthetic_image
    from samdeploy.loading import load_model, predictor_for

    shapes = [(480, 640), (640, 480), (600, 600), (300, 900)][: max(1, images)]
    # The family's predictor: SamPredictor, or SAM2ImagePredictor for a SAM 2 package.
    ref = predictor_for(load_model(reference, threads=threads, cache_mb=0))
    new = predictor_for(load_model(candidate, threads=threads, cache_mb=0))
    report: dict[str, Any] = {"images": [], "prompts": {}}
    agreements, score_diffs, cosines = [], [], []
    map_cosines: dict[str, list[float]] = {}
    try:
        for seed, (height, width) in enumerate(shapes):
            image = synthetic_image(height, width, seed=seed)
            ref.set_image(image)
            new.set_image(image)
            a, b = ref.get_image_embedding(), new.get_image_embedding()
            similarity = cosine(a, b)
            cosines.append(similarity)
            figures = {
                "height": height,
                "width": width,
                "embeddings_cosine": similarity,
                "embeddings_max_abs": float(np.abs(a - b).max()),
            }
            for name, (a, b) in _high_res_feats(ref, new).items():
                figures[f"{name}_cosine"] = cosine(a, b)
                figures[f"{name}_max_abs"] = float(np.abs(a - b).max())
                map_cosines.setdefault(name, []).append(figures[f"{name}_cosine"])
            report["images"].append(figures)
            cases = dict(_parity_prompts(height, width))
            for name, case in list(cases.items()):
                want, want_scores, want_low = ref.predict(**case)
                got, got_scores, _ = new.predict(**case)
                agreement = float(np.mean(want == got))
                agreements.append(agreement)
                score_diffs.append(float(np.abs(want_scores - got_scores).max()))
                report["prompts"][f"{name}@{height}x{width}"] = {
                    "mask_agreement": agreement,
                    "scores_max_abs": score_diffs[-1],
                }
                if name == "point":  # chain the best mask, as an interactive tool does
                    best = int(np.argmax(want_scores))
                    chained = {**case, "mask_input": want_low[best : best + 1], "multimask_output": False}
                    want, want_scores, _ = ref.predict(**chained)
                    got, got_scores, _ = new.predict(**chained)
                    agreements.append(float(np.mean(want == got)))
                    score_diffs.append(float(np.abs(want_scores - got_scores).max()))
                    report["prompts"][f"mask_input@{height}x{width}"] = {
                        "mask_agreement": agreements[-1],
                        "scores_max_abs": score_diffs[-1],
                    }
    finally:
        ref.model.close()
        new.model.close()
    report["worst"] = {
        "embeddings_cosine": min(cosines),
        "mask_agreement": min(agreements),
        "mean_mask_agreement": float(np.mean(agreements)),
        "scores_max_abs": max(score_diffs),
        **{f"{name}_cosine": min(values) for name, values in map_cosines.items()},
    }
    return report


def _high_res_feats(ref: Any, new: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SAM 2's high-resolution feature maps of the image set on both predictors, by name (none for SAM)."""
    if not hasattr(ref, "_features"):
        return {}
    pairs = zip(ref._features["high_res_feats"], new._features["high_res_feats"], strict=True)
    return {f"high_res_feats_{level}": (a, b) for level, (a, b) in enumerate(pairs)}


def accuracy_bar(package: ModelPackage, precision: str | None = None) -> dict[str, float]:
    """The figures of :func:`compare_packages` a ``precision`` copy of ``package`` must reach, by
    name: the fast packages' bar, or :data:`FAITHFUL_BAR` for the ``FAITHFUL_PRECISIONS``."""
    bar = dict(SAM2_ACCURACY_BAR if package.is_sam2 else ACCURACY_BAR)
    if precision in FAITHFUL_PRECISIONS:  # SAM 2's feature maps at the embedding's faithful cosine
        bar = {key: FAITHFUL_BAR.get(key, FAITHFUL_BAR["embeddings_cosine"]) for key in bar}
    return bar


def quantization_group(package: ModelPackage) -> int:
    """Input channels per dynamic int8 scale for an int8-bf16 encoder: the encoder's width.

    SAM's ViT has one width (``encoder_embed_dim``). Hiera's widths double at each stage from the
    trunk's ``embed_dim`` (96 for tiny, 112 for base+), so that one divides the input width of
    every linear layer; a group that does not divide a layer's width leaves it unquantized.
    """
    architecture = package.manifest.get("architecture", {})
    if package.is_sam2:
        return int(architecture["image_encoder"]["trunk"].get("embed_dim", 96))
    return int(architecture.get("encoder_embed_dim", 128))


def time_encoders(
    models: dict[str, Path | tuple[Path, str, dict[str, Any]]],
    image_size: int,
    threads: int | None = None,
    runs: int = 3,
) -> dict[str, Any]:
    """Median encoder time of each model, run round-robin (so background load hits all alike);
    ``speedup`` of each against the first, as the median of per-round ratios.

    A model is an ONNX file (run by ONNX Runtime) or ``(file, backend, backend options)``.
    """
    from samdeploy.engine.backends import create_backend

    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    backends = {}
    for name, model in models.items():
        path, backend, options = model if isinstance(model, tuple) else (model, "onnxruntime", {})
        backends[name] = create_backend(backend, path, **options, **({"threads": threads} if threads else {}))
        backends[name].run({"image": x})  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(max(1, runs)):
        for name, runner in backends.items():
            start = time.perf_counter()
            runner.run({"image": x})
            samples[name].append(time.perf_counter() - start)
    first = samples[next(iter(samples))]
    return {
        "threads": threads or os.cpu_count(),
        "runs": max(1, runs),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "encoder_s": {name: statistics.median(values) for name, values in samples.items()},
        "speedup": {
            name: statistics.median(a / b for a, b in zip(first, values, strict=True))
            for name, values in samples.items()
        },
    }


# ----------------------------------------------------------------------------- the package


def default_attention_rows(precision: str) -> int:
    """Query rows per global-attention band for a package of ``precision``, the fastest measured for
    the backend it runs on (docs/performance.md)."""
    return OPENVINO_ATTENTION_ROWS if precision in OPENVINO_PRECISIONS else DEFAULT_ATTENTION_ROWS


def _band_attention(
    encoder: onnx.ModelProto, precision: str, rows: int | None, source_rows: int
) -> tuple[int, int, int]:
    """Band ``encoder``'s global attention (in place) for a package of ``precision``, whatever bands
    it has: ``rows`` per band (0: as traced; None: :func:`default_attention_rows`, or ``source_rows``
    where that does not divide the grid). Returns (rows, blocks banded, blocks the source had banded).
    """
    unbanded = unchunk_global_attention(encoder)
    # Blocks the source had banded are banded again whatever their size (a test model's small grid).
    min_tokens = 1 if unbanded else MIN_CHUNK_TOKENS
    wanted = default_attention_rows(precision) if rows is None else rows
    blocks = chunk_global_attention(encoder, rows=wanted, min_tokens=min_tokens) if wanted else 0
    if not wanted or blocks >= unbanded:
        return wanted, blocks, unbanded
    if rows is None:  # the default does not divide this grid: the bands the source had
        return source_rows, chunk_global_attention(encoder, rows=source_rows, min_tokens=min_tokens), unbanded
    raise ExportError(
        f"attention_rows={rows} cannot band this encoder's global attention: choose a divisor of its"
        " grid's rows smaller than the grid (or 0 for the attention as traced)"
    )


def optimize_package(
    source: str | Path,
    output: str | Path,
    precision: str = "int8",
    *,
    attention_rows: int | None = None,
    threads: int | None = None,
    measure_runs: int = 2,
    check_images: int = 2,
    strict: bool = True,
    force: bool = False,
    log: Any = None,
) -> PrecisionReport:
    """Write a CPU-tuned copy of the fp32 package ``source`` to ``output``.

    Args:
        source: a package made by ``samdeploy export`` at fp32 (the faithful one).
        output: the new package folder; an existing package is replaced only with ``force``.
        precision: ``auto`` (the best of the others for this CPU: :func:`samdeploy.cpu.auto_precision`,
            recorded under ``export.precision.auto``),
            ``fp32`` (chunked global attention only: same numbers, far less memory),
            ``int8`` (chunked attention and dynamic int8 linear layers in the encoder), ``bf16``
            (the fp32 graphs, with the manifest asking for them to run on OpenVINO at bf16
            inference precision; needs OpenVINO and a CPU with native bf16 to be made) or
            ``int8-bf16`` (bf16, with the encoder's linear layers on int8 weights that OpenVINO
            multiplies in int8; needs the same) or ``fp32-openvino`` (the fp32 graphs, the encoder
            asked to run on OpenVINO at f32; needs OpenVINO; held to :data:`FAITHFUL_BAR`).
        attention_rows: query-grid rows per global-attention band, whatever bands the source has
            (0: the attention as traced; None: :func:`default_attention_rows` of ``precision``).
        threads: threads for the speed measurement (None: ONNX Runtime's default, all cores).
        measure_runs: encoder runs per model when timing new against source (0: skip timing).
        check_images: images for the accuracy check (each with every parity prompt).
        strict: refuse (ExportError, nothing written) a package below :func:`accuracy_bar`.
        log: a callable taking one line of progress, or None.

    Returns a :class:`PrecisionReport`; the same figures are in the new ``model.json`` under
    ``export.precision``, and its ``precision`` field is ``precision``.
    """
    say = log or (lambda _line: None)
    source, output = Path(source), Path(output)
    auto = None
    if precision == "auto":  # the best precision for this CPU (samdeploy.cpu), recorded below
        from samdeploy.cpu import auto_precision

        auto = auto_precision()
        precision = auto.precision
        say(f"precision auto: {precision} ({auto.reason})")
    check_precision(precision)
    check_attention_rows(attention_rows)
    check_package_runtime(precision)
    package = ModelPackage.load(source, verify=True)
    if package.precision != "fp32":
        raise ExportError(f"{source} is a {package.precision} package; start from the fp32 export")
    if output.resolve() == source.resolve():
        raise ExportError("output must be a new folder, not the source package")
    check_output(output, force)
    encoder_entry = package.manifest["models"][ENCODER]
    if any(
        name != encoder_entry["file"] and name.startswith(encoder_entry["file"])
        for name in package.manifest["files"]
    ):
        raise ExportError("encoders with external weight files (vit_h) are not supported here yet")

    # Dynamic quantization groups as wide as the encoder: one scale per token for the width-K
    # layers, four for the MLP's second layer (fastest on vit_b; measured in docs/performance.md).
    group = quantization_group(package)
    bar = accuracy_bar(package, precision)
    output.parent.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    staging = new_staging(output)
    try:  # from here on, an error or an interrupt removes the staging folder (below)
        transforms: list[str] = []
        start = time.perf_counter()
        encoder = onnx.load(str(package.encoder_path))
        source_rows = package.manifest.get("export", {}).get("attention_rows") or DEFAULT_ATTENTION_ROWS
        attention_rows, blocks, unbanded = _band_attention(encoder, precision, attention_rows, source_rows)
        if blocks:
            say(f"global attention in bands of {attention_rows} rows ({blocks} blocks)")
            transforms.append(f"chunked global attention: {blocks} blocks, {attention_rows} rows per band")
        elif unbanded:
            transforms.append(f"global attention as traced ({unbanded} blocks)")
        flat = flatten_token_grid(encoder) if precision in OPENVINO_PRECISIONS else 0
        if flat:  # a source exported before samdeploy export did this itself
            say(f"residual stream as rows of tokens ({flat} tensors)")
            transforms.append(
                f"token grid carried as [B, H*W, C] ({flat} tensors): no layout reorders on OpenVINO"
            )
        timings["rewrite"] = round(time.perf_counter() - start, 2)
        scored = 0  # attention chains whose scores are multiplied in int8 (int8-bf16)
        if precision == "int8-bf16":
            say("storing the encoder's linear-layer weights as int8 (per output channel)")
            start = time.perf_counter()
            layers = compress_weights_int8(encoder)
            transforms.append(
                f"int8 weights for {layers} MatMul/Gemm layers (per output channel), multiplied in int8 by"
                f" OpenVINO with inputs quantized per {group} channels; the rest bf16"
            )
            scored = int8_attention_scores(encoder)
            if scored:
                say(f"attention scores QK^T in int8 ({scored} chains)")
                transforms.append(
                    f"attention scores QK^T in int8 ({scored} chains): q and k rounded per token to int8 on"
                    " the fly, inside OpenVINO's fused attention kernel; soft-max and xV bf16"
                )
            timings["quantize"] = round(time.perf_counter() - start, 2)
        rewritten_path = staging / f"{ENCODER}.rewritten.onnx"
        onnx.save_model(encoder, str(rewritten_path))
        del encoder
        encoder_path = staging / encoder_entry["file"]
        if precision == "int8":
            say("quantizing the encoder's linear layers (dynamic int8, 7-bit weights)")
            start = time.perf_counter()
            quantize_int8(rewritten_path, encoder_path, external_data=False)
            rewritten_path.unlink()
            transforms.append(
                "dynamic int8 MatMul/Gemm (weights s8 per channel, 7-bit; activations u8 per call)"
            )
            timings["quantize"] = round(time.perf_counter() - start, 2)
        else:
            rewritten_path.rename(encoder_path)
            if precision == "bf16":
                transforms.append("bf16 inference precision on OpenVINO (the graph stays float32)")
            elif precision == "fp32-openvino":
                transforms.append(
                    "the encoder on OpenVINO at f32 (its fused attention kernel, the same float32 arithmetic);"
                    " the decoders on ONNX Runtime"
                )
        onnx.checker.check_model(str(encoder_path))
        files = [encoder_entry["file"]]
        unfused = 0  # decoder attention products rewritten for OpenVINO (bf16, int8-bf16)
        for role in package.manifest["models"]:
            if role != ENCODER:  # the decoders, whichever the package has
                decoder_file = package.manifest["models"][role]["file"]
                decoder = onnx.load(str(package.model_path(role))) if precision in BF16_PRECISIONS else None
                rewritten = transpose_value_products(decoder) if decoder is not None else 0
                if rewritten:
                    onnx.save_model(decoder, str(staging / decoder_file))
                    unfused += rewritten
                else:
                    shutil.copy2(package.model_path(role), staging / decoder_file)
                files.append(decoder_file)
        if unfused:
            transforms.append(
                f"decoders: {unfused} soft-max x value products as (V^T P^T)^T, so OpenVINO runs them as"
                " plain matrix products instead of its fused attention kernel"
            )

        manifest = {key: value for key, value in package.manifest.items()}
        manifest["precision"] = precision
        manifest.pop("runtime", None)
        if precision in BF16_PRECISIONS:
            manifest["runtime"] = {role: dict(BF16_RUNTIME) for role in manifest["models"]}
        elif precision == "fp32-openvino":  # OpenVINO f32 answers a click slower than ONNX Runtime
            manifest["runtime"] = {ENCODER: dict(F32_OPENVINO_RUNTIME)}
        if precision == "int8-bf16":
            manifest["runtime"][ENCODER]["quantization_group"] = group
        manifest["files"] = describe_files(staging, files)
        export = dict(manifest.get("export", {}))
        export["quantize"] = {"int8": "int8-dynamic", "int8-bf16": "int8-weights"}.get(precision, "none")
        if blocks or unbanded or flat or scored:  # the encoder's graph as this package has it
            nodes = {role: dict(counts) for role, counts in export.get("nodes", {}).items()}
            encoder_nodes = nodes.setdefault(ENCODER, {})
            if blocks or unbanded:
                export["attention_rows"] = attention_rows if blocks else None
                if blocks:
                    encoder_nodes["chunked_attention_blocks"] = blocks
                else:
                    encoder_nodes.pop("chunked_attention_blocks", None)
            if flat:
                encoder_nodes["token_rows"] = flat
            if scored:
                encoder_nodes["int8_attention_scores"] = scored
            export["nodes"] = nodes
        export["precision"] = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "path": str(source.resolve()),
                "encoder_sha256": package.manifest["files"][encoder_entry["file"]]["sha256"],
            },
            "precision": precision,
            "transforms": transforms,
            "decoder": "fp32 graphs, attention products transposed for OpenVINO"
            if unfused
            else "fp32 (copied)",
        }
        if auto is not None:
            export["precision"]["auto"] = auto.to_json()
        manifest["export"] = export
        write_manifest(staging, manifest)

        say("checking accuracy against the source package")
        start = time.perf_counter()
        accuracy = compare_packages(source, staging, images=check_images, threads=threads)
        timings["check"] = round(time.perf_counter() - start, 2)
        worst = accuracy["worst"]
        problems = [
            f"{key} {worst[key]:.6g} (bar {limit:g})" for key, limit in bar.items() if worst[key] < limit
        ]
        passed = not problems
        if problems and strict:
            raise ExportError(
                f"the {precision} package misses the accuracy bar: {'; '.join(problems)}; nothing was written"
            )
        speed = None
        if measure_runs:
            say(f"timing the encoder against the source ({measure_runs} runs each)")
            start = time.perf_counter()
            candidate: Path | tuple[Path, str, dict[str, Any]] = encoder_path
            if precision in OPENVINO_PRECISIONS:
                request = manifest["runtime"][ENCODER]
                candidate = (
                    encoder_path,
                    request["backend"],
                    {key: value for key, value in request.items() if key != "backend"},
                )
            speed = time_encoders(
                {"source": package.encoder_path, precision: candidate},
                package.image_size,
                threads,
                measure_runs,
            )
            timings["measure"] = round(time.perf_counter() - start, 2)
        export["precision"].update(
            {
                "accuracy": accuracy,
                "accuracy_bar": bar,
                "passed": passed,
                "speed": speed,
                "timings": timings,
            }
        )
        write_manifest(staging, manifest)
        move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrecisionReport(
        output=output,
        precision=precision,
        transforms=transforms,
        accuracy=accuracy,
        speed=speed,
        passed=passed,
        files={name: manifest["files"][name]["bytes"] for name in files},
        manifest=manifest,
    )
