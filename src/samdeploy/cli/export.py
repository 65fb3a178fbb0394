"""``samdeploy export`` and ``samdeploy inspect``: write a model package, and show what one holds."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from samdeploy.cli.app import app
from samdeploy.cli.options import parse_model
from samdeploy.errors import ExportError
from samdeploy.export.checks import (
    check_checkpoint_file,
    check_checkpoint_outside,
    check_export_options,
    check_output,
    check_package_runtime,
    check_precision,
)
from samdeploy.package import ModelPackage


def _size(num_bytes: int) -> str:
    value, unit = float(num_bytes), "B"
    for larger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def _validation_table(validation: dict[str, Any]) -> Table:
    worst, limits = validation["worst"], validation["tolerances"]
    table = Table(title="validation: ONNX Runtime vs PyTorch (worst case over prompts)", title_justify="left")
    for column in ("figure", "value", "tolerance"):
        table.add_column(column, justify="right" if column != "figure" else "left")
    above = ("embeddings_cosine", "mask_agreement", "end_to_end_mask_agreement")
    for key, value in worst.items():
        limit = limits.get(key)
        bound = "" if limit is None else (">= " if key in above else "<= ") + f"{limit:g}"
        table.add_row(key, f"{value:.6g}", bound)
    return table


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command()
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="SAM or SAM 2.x checkpoint, e.g. sam_vit_b_01ec64.pth, sam2.1_hiera_tiny.pt"),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="package folder to create")],
    model_type: Annotated[
        str, typer.Option(help="auto (detect from tensor shapes), vit_b, vit_l or vit_h")
    ] = "auto",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    simplify: Annotated[str, typer.Option(help="graph simplifier: onnxsim, onnxslim or none")] = "onnxsim",
    quantize: Annotated[
        str,
        typer.Option(
            help="none or int8: dynamic int8 quantization of the encoder, checked against PyTorch"
            " with differences recorded (--precision int8 holds it to the accuracy bar instead)"
        ),
    ] = "none",
    precision: Annotated[
        str,
        typer.Option(
            help="fp32 (faithful), int8 (dynamic int8 encoder), bf16 (runs on OpenVINO at bf16, for"
            " CPUs with AVX512-BF16/AMX), int8-bf16 (bf16 with the encoder's linear layers in int8 on"
            " OpenVINO: fastest on such CPUs without AMX), fp32-openvino (fp32 with the encoder on OpenVINO: the same"
            " arithmetic, closer to the CPU's peak) or auto (the fastest of the fast ones for the CPU this"
            " runs on, the choice and its reason recorded in the package): these are made from the fp32"
            " export and refused below the accuracy bar (embedding cosine >= 0.999, masks agreeing on"
            " >= 98% of pixels; fp32-openvino: 0.99999 and 99.9%)"
        ),
    ] = "fp32",
    attention_rows: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="run the encoder's global attention in bands of this many query rows (same numbers,"
            " GBs less memory; applies to grids of 2048+ tokens such as the official 64x64); 0 keeps it as"
            " traced [default: 4, or 32 for the packages that run on OpenVINO: bf16, int8-bf16, fp32-openvino]",
        ),
    ] = None,
    encoder_norm_eps: Annotated[
        float | None,
        typer.Option(
            help="epsilon of the image encoder's LayerNorms, which checkpoints do not record: 1e-6"
            " (official build_sam, the default) or 1e-5 for a model built with ImageEncoderViT's default norm layer"
        ),
    ] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="compare with PyTorch")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing package at --output")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="SAM 2 Hydra config (YAML) of a custom SAM 2 model; the official sizes are detected"
        ),
    ] = None,
) -> None:
    """Export a SAM or SAM 2.x checkpoint to a validated ONNX model package (image encoder + mask decoder)."""
    # Everything that can be refused without the checkpoint's contents, before the seconds that
    # PyTorch and the official packages take to import.
    check_checkpoint_file(checkpoint)
    check_output(output, force)
    check_checkpoint_outside(checkpoint, output)
    check_precision(precision, quantize)
    check_package_runtime(precision)
    check_export_options(  # the opset's bound last: it imports onnx (a second)
        model_type=model_type,
        simplify=simplify,
        quantize=quantize,
        attention_rows=attention_rows,
        encoder_norm_eps=encoder_norm_eps,
        opset=opset,
    )
    try:
        from samdeploy.export import export_model
    except ImportError as exc:
        raise ExportError(
            f"export needs PyTorch and the official segment-anything ({exc.name} is missing):"
            " pip install 'samdeploy[export]'"
        ) from None
    from samdeploy.export.attention import DEFAULT_ATTENTION_ROWS

    # A plain `kill` should clean up like Ctrl-C does: the export removes its partial folder on
    # KeyboardInterrupt, but the default SIGTERM action ends the process without unwinding.
    signal.signal(signal.SIGTERM, _interrupt)
    console = Console(stderr=True)
    if precision != "fp32":
        _export_fast(
            checkpoint,
            output,
            precision,
            model_type,
            opset,
            simplify,
            attention_rows,
            force,
            console,
            encoder_norm_eps,
            config,
        )
        return
    report = export_model(
        checkpoint,
        output,
        model_type,
        opset=opset,
        simplify=simplify,
        quantize=quantize,
        attention_rows=DEFAULT_ATTENTION_ROWS if attention_rows is None else attention_rows,
        encoder_norm_eps=encoder_norm_eps,
        validate=validate,
        force=force,
        console=console,
        config=config,
    )
    out = Console()
    files = Table(title=f"{report.output}  ({report.model_type}, {report.precision})", title_justify="left")
    for column in ("file", "size", "nodes"):
        files.add_column(column, justify="left" if column == "file" else "right")
    for name, size in report.files.items():
        counts = report.nodes.get(name.removesuffix(".onnx"), {})
        files.add_row(name, _size(size), " -> ".join(f"{v} {k}" for k, v in counts.items()))
    out.print(files)
    if report.validation is not None:
        out.print(_validation_table(report.validation))
        if not report.validation["passed"]:
            out.print(
                f"[yellow]{report.precision} export: differences above the fp32 tolerances are recorded, not fatal[/]"
            )
    sensitivity = (report.validation or {}).get("encoder_norm_eps_sensitivity")
    if sensitivity and encoder_norm_eps is None and sensitivity["max_rel"] > 1e-4:
        console.print(
            f"[yellow]note[/]: the encoder's LayerNorm eps is not in the checkpoint; this export uses"
            f" {sensitivity['eps']:g} (official). With {sensitivity['other_eps']:g} this model's embeddings"
            f" differ by {sensitivity['max_rel']:.1e} of their maximum on uniform areas: if it was built with"
            f" another eps, export again with --encoder-norm-eps",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"exported in {sum(report.timings.values()):.1f}s: {report.output}", highlight=False, soft_wrap=True
    )


def _export_fast(
    checkpoint: Path,
    output: Path,
    precision: str,
    model_type: str,
    opset: int,
    simplify: str,
    attention_rows: int | None,
    force: bool,
    console: Console,
    encoder_norm_eps: float | None = None,
    config: Path | None = None,
) -> None:
    """The fp32 export (validated against PyTorch) into a scratch folder, then the int8, bf16,
    int8-bf16 or fp32-openvino package made from it and checked against it (``optimize_package``, which also resolves
    ``auto``); the scratch is removed."""
    import shutil

    from samdeploy.export import export_model
    from samdeploy.export.attention import DEFAULT_ATTENTION_ROWS
    from samdeploy.export.exporter import new_staging
    from samdeploy.export.precision import optimize_package

    output.parent.mkdir(parents=True, exist_ok=True)
    # A partial folder of the target (owner recorded): a SIGKILLed run's is removed by the next one.
    scratch = new_staging(output, console)
    try:
        fp32 = export_model(
            checkpoint,
            scratch / "package",
            model_type,
            opset=opset,
            simplify=simplify,
            attention_rows=DEFAULT_ATTENTION_ROWS if attention_rows is None else attention_rows,
            encoder_norm_eps=encoder_norm_eps,
            console=console,
            config=config,
        )
        report = optimize_package(
            fp32.output,
            output,
            precision,
            attention_rows=attention_rows,
            force=force,
            log=lambda line: console.print(f"  {line}", highlight=False),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = Console()
    files = Table(title=f"{report.output}  ({report.precision})", title_justify="left")
    for column in ("file", "size"):
        files.add_column(column, justify="left" if column == "file" else "right")
    for name, size in report.files.items():
        files.add_row(name, _size(size))
    out.print(files)
    worst = report.accuracy["worst"]
    out.print(
        f"against the fp32 export: embedding cosine {worst['embeddings_cosine']:.6f}, masks agree on"
        f" {100 * worst['mask_agreement']:.2f}% of pixels or more, scores within {worst['scores_max_abs']:.2g}",
        highlight=False,
        soft_wrap=True,
    )
    if report.speed is not None:
        speedup = report.speed["speedup"][report.precision]
        out.print(f"encoder {speedup:.2f}x the fp32 package's on this machine", highlight=False)
    auto = report.manifest["export"]["precision"].get("auto")
    if auto:
        out.print(_auto_line(auto), highlight=False, soft_wrap=True)
    runtime = report.manifest.get("runtime", {})
    if runtime:
        out.print(f"runs: {json.dumps(runtime)}", highlight=False, soft_wrap=True)
    out.print(f"exported: {report.output}", highlight=False, soft_wrap=True)


def _auto_line(auto: dict[str, Any]) -> str:
    """One line for the ``export.precision.auto`` record: what was chosen, on which CPU, and why."""
    cpu = auto.get("cpu") if isinstance(auto.get("cpu"), dict) else {}
    numbers = (
        f", family {cpu['family']} model {cpu['model']}"
        if cpu.get("family") is not None and cpu.get("model") is not None
        else ""
    )
    flags = ", ".join(map(str, cpu.get("flags") or [])) or "none known"
    return (
        f"precision auto chose {auto.get('chosen')} on {cpu.get('kind')} ({cpu.get('model_name')}{numbers};"
        f" flags {flags}): {auto.get('reason')}"
    )


@app.command()
def inspect(
    path: Annotated[
        Path | None,
        typer.Argument(
            metavar="DIR",
            parser=parse_model,
            help="model package folder, or 'default': the embedded demo model",
        ),
    ] = None,
) -> None:
    """Print what a model package holds and verify the checksum of every file."""
    from samdeploy.sam.automatic import recommended_settings
    from samdeploy.sam.model import DEFAULT_MODEL

    package = ModelPackage.load(path or DEFAULT_MODEL, verify=True)
    manifest = package.manifest
    out = Console()
    architecture = manifest.get("architecture", {})
    if package.is_sam2:
        trunk = architecture.get("image_encoder", {}).get("trunk", {})
        backbone = f"{package.family}, Hiera {trunk.get('embed_dim')} x {sum(trunk.get('stages', []))} blocks"
    else:
        backbone = f"ViT {architecture.get('encoder_embed_dim')}x{architecture.get('encoder_depth')}"
    out.print(
        f"[bold]{package.root}[/]: {package.model_type}, {package.precision}, opset {manifest.get('opset')},"
        f" input {package.image_size}x{package.image_size}, embedding {manifest.get('embedding_size')},"
        f" {backbone}",
        highlight=False,
        soft_wrap=True,
    )
    models = Table(title="models", title_justify="left")
    for column in ("model", "tensor", "name", "shape", "dtype"):
        models.add_column(column)
    for role in manifest["models"]:
        entry = package.model(role)
        rows = [("in", spec) for spec in entry.inputs] + [("out", spec) for spec in entry.outputs]
        for index, (kind, spec) in enumerate(rows):
            models.add_row(
                entry.file if index == 0 else "", kind, spec.name, str(list(spec.shape)), spec.dtype
            )
    out.print(models)
    for role, runtime in manifest.get("runtime", {}).items():
        options = ", ".join(f"{k} {v}" for k, v in runtime.items() if k not in ("backend", "precision"))
        out.print(
            f"{role} runs on {runtime.get('backend')} at {runtime.get('precision', 'f32')}"
            + (f" ({options})" if options else "")
            + " where available",
            highlight=False,
        )
    files = Table(title="files (sha256 verified)", title_justify="left")
    for column in ("file", "size", "sha256"):
        files.add_column(column, justify="right" if column == "size" else "left")
    for name, info in manifest["files"].items():
        files.add_row(name, _size(info["bytes"]), info["sha256"][:16] + "...")
    out.print(files)
    recommended = recommended_settings(package)
    out.print(
        "segment everything: "
        + (
            "the package recommends " + ", ".join(f"{k} {v:g}" for k, v in recommended.items())
            if recommended
            else "the official defaults (no recommendation in the package)"
        ),
        highlight=False,
        soft_wrap=True,
    )
    record = package.export_report.get("precision")
    auto = record.get("auto") if isinstance(record, dict) else None
    if isinstance(auto, dict):
        out.print(_auto_line(auto), highlight=False, soft_wrap=True)
    validation = package.export_report.get("validation")
    if validation:
        out.print(_validation_table(validation))
    out.print("[green]ok[/]: every checksum matches", highlight=False)
