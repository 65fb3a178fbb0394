"""What an export checks before it loads anything: its options, the checkpoint file, the output folder.

Light on purpose (no PyTorch; onnx only for the opset's upper bound): ``samdeploy export`` runs
these first, so a mistyped option is answered at once rather than after the seconds PyTorch and
the official packages take to import. :func:`~samdeploy.export.export_model`,
:func:`~samdeploy.export.sam2.export_sam2` and
:func:`~samdeploy.export.precision.optimize_package` run the same checks.
"""

from __future__ import annotations

import math
from pathlib import Path

from samdeploy.errors import CheckpointError, ExportError, PackageError
from samdeploy.package import ModelPackage

# ``auto`` and the names of samdeploy.export.config.PRESETS (a test keeps the two in step).
MODEL_TYPES = ("auto", "vit_b", "vit_l", "vit_h")
SIMPLIFIERS = ("onnxslim", "onnxsim", "none")
QUANTIZATIONS = ("none", "int8")
# Chosen by measurement on a random-weight vit_b (docs/export.md): fewest encoder nodes, smallest
# and fastest encoder, seconds instead of minutes to run, and file-to-file support past 2 GB.
DEFAULT_SIMPLIFIER = "onnxsim"
MIN_OPSET = 14

PRECISIONS = ("fp32", "int8", "bf16", "int8-bf16", "fp32-openvino")
# Where a bf16 (or int8-bf16) package's models run: OpenVINO at bf16 inference precision.
BF16_RUNTIME = {"backend": "openvino", "precision": "bf16"}
# The precisions whose packages run on OpenVINO at bf16, so can only be made (and checked) where that runs.
BF16_PRECISIONS = ("bf16", "int8-bf16")
# The precisions whose packages run (some of) their models on OpenVINO: made only where it is
# installed, with the encoder in OpenVINO's band height and token rows.
OPENVINO_PRECISIONS = (*BF16_PRECISIONS, "fp32-openvino")


def check_model_type(model_type: str) -> None:
    """A SAM 1 model type (SAM 2 names, ``sam2...``, are checked by the SAM 2 export)."""
    if not model_type.startswith("sam2") and model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type '{model_type}': choose one of {', '.join(MODEL_TYPES)}")


def check_simplifier(simplify: str) -> None:
    if simplify not in SIMPLIFIERS:
        raise ExportError(f"unknown simplifier '{simplify}': choose one of {', '.join(SIMPLIFIERS)}")


def check_quantization(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization '{quantize}': choose one of {', '.join(QUANTIZATIONS)}")


def check_precision(precision: str, quantize: str = "none") -> None:
    """A known precision (or ``auto``), not combined with ``--quantize`` (both would quantize)."""
    if precision not in (*PRECISIONS, "auto"):
        raise ExportError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)} or auto")
    if precision != "fp32" and quantize != "none":
        raise ExportError("--quantize int8 and a --precision other than fp32 both quantize: pass one")


def check_attention_rows(attention_rows: int | None) -> None:
    if attention_rows is not None and attention_rows < 0:
        raise ExportError(
            f"attention_rows must be positive (or 0 to keep the traced attention), got {attention_rows}"
        )


def check_norm_eps(encoder_norm_eps: float | None) -> None:
    if encoder_norm_eps is not None and not (math.isfinite(encoder_norm_eps) and encoder_norm_eps > 0):
        raise ExportError(f"encoder_norm_eps must be a positive number, got {encoder_norm_eps}")


def check_opset(opset: int) -> None:
    """An opset from :data:`MIN_OPSET` to the newest the installed onnx knows (the upper bound is
    checked only where onnx is installed: without it the export stops at its import anyway)."""
    try:
        import onnx
    except ImportError:
        newest = None
    else:
        newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or (newest is not None and opset > newest):
        raise ExportError(
            f"opset {opset} is not supported: use {MIN_OPSET} to {newest or 'the newest onnx knows'}"
        )


def check_package_runtime(precision: str) -> None:
    """Refuse (ExportError) to make a ``precision`` package where it cannot be checked: no OpenVINO
    for the ``OPENVINO_PRECISIONS``, and no native bf16 for bf16 and int8-bf16. Others pass."""
    from samdeploy.engine.backends import backend_class
    from samdeploy.errors import BackendError

    if precision not in OPENVINO_PRECISIONS:
        return
    try:
        runtime = backend_class(BF16_RUNTIME["backend"])
    except BackendError as exc:
        raise ExportError(f"a {precision} package runs on OpenVINO: {exc}") from None
    if precision in BF16_PRECISIONS and not runtime.supports_precision(BF16_RUNTIME["precision"]):
        raise ExportError(
            f"this CPU has no native bf16 arithmetic (AVX512-BF16 or AMX), so a {precision} package could"
            " neither be checked nor run fast here; make an int8 package instead"
        )


def check_checkpoint_file(path: Path) -> None:
    """A checkpoint path that names a non-empty file (what is in it is the loader's business)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path}")


def check_output(output: Path, force: bool) -> None:
    """Refuse to overwrite anything that is not an empty folder or (with ``force``) a package."""
    if not output.exists():
        return
    if not output.is_dir():
        raise ExportError(f"output {output} exists and is not a folder")
    if not any(output.iterdir()):
        return
    try:
        ModelPackage.load(output)
    except PackageError:
        raise ExportError(
            f"output folder {output} exists and is not a samdeploy model package: choose another --output or empty it"
        ) from None
    if not force:
        raise ExportError(
            f"output folder {output} already holds a model package: pass --force (force=True) to replace it"
        )


def check_checkpoint_outside(checkpoint: object, output: Path) -> None:
    """Refuse an ``output`` folder that holds the input checkpoint file (the default package keeps
    its ``checkpoint.pth`` beside the model files): export never writes where it reads."""
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).resolve().is_relative_to(output.resolve()):
        raise ExportError(
            f"output folder {output} holds the input checkpoint {checkpoint}: export to another folder"
            " (or move the checkpoint out first)"
        )


def check_export_options(
    *,
    model_type: str = "auto",
    simplify: str = DEFAULT_SIMPLIFIER,
    quantize: str = "none",
    attention_rows: int | None = None,
    encoder_norm_eps: float | None = None,
    opset: int = 17,
) -> None:
    """Every option of a SAM export that can be checked without the checkpoint."""
    check_model_type(model_type)
    check_simplifier(simplify)
    check_quantization(quantize)
    check_attention_rows(attention_rows)
    check_norm_eps(encoder_norm_eps)
    check_opset(opset)
