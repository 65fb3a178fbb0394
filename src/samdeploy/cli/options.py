"""Options shared by the sub-commands that run a model, declared once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

ModelOption = Annotated[
    Path | None, typer.Option("--model", "-m", help="model package folder (default: embedded)")
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        help="inference backend: onnxruntime or openvino (default: onnxruntime, or what the package"
        " asks for: a bf16 package runs on OpenVINO at bf16)"
    ),
]
ThreadsOption = Annotated[int | None, typer.Option(help="intra-op threads per model (default: backend's)")]
MaxPixelsOption = Annotated[
    int, typer.Option(help="refuse images with more pixels (decompression-bomb guard); 0: no limit")
]
ProfileOption = Annotated[bool, typer.Option(help="print per-node timings")]

# The automatic mask generator's options, as ``samdeploy everything`` and ``samdeploy batch`` take them:
# (name, type, default, help). The defaults are the official generator's.
GENERATOR_OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("points_per_side", int, 32, "grid points along each image side"),
    ("points_per_batch", int, 64, "points answered by one decoder call"),
    ("pred_iou_thresh", float, 0.88, "keep masks with predicted IoU above this"),
    ("stability_score_thresh", float, 0.95, "keep masks at least this stable"),
    ("stability_score_offset", float, 1.0, "logit shift for the stability score"),
    ("box_nms_thresh", float, 0.7, "box IoU that marks duplicates"),
    ("crop_n_layers", int, 0, "layers of image crops run again (0: none)"),
    ("crop_nms_thresh", float, 0.7, "box IoU for duplicates across crops"),
    ("crop_overlap_ratio", float, 512 / 1500, "crop overlap, fraction of the short side"),
    ("crop_n_points_downscale_factor", int, 1, "grid downscale per crop layer"),
    ("min_mask_region_area", int, 0, "fill holes / drop islands below this area"),
)


def generator_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command the generator's options (``--points-per-side``, ...).

    The command declares a ``generator_options: dict`` parameter; it receives them as one dict,
    keyed by the generator's argument names. Declared once here, so every command that runs the
    generator spells, documents and defaults them alike.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "generator_options"]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[kind, typer.Option(help=help_text)],
        )
        for name, kind, default, help_text in GENERATOR_OPTIONS
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name, *_ in GENERATOR_OPTIONS}
        return command(*args, generator_options=options, **kwargs)

    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's own
    return wrapper
