"""What the CLI tells a user about the model and the answers, beside the answers themselves.

- The embedded default model is a demo trained on synthetic shapes: a run on it says so once on
  stderr, and the JSON it writes carries the same note (:func:`model_info`).
- A mask whose predicted IoU (the model's own score) is below :data:`LOW_CONFIDENCE_SCORE` is
  marked low-confidence on the console and ``"low_confidence": true`` in the JSON. The threshold is
  the model's own estimate that at least half of the mask is right; docs/cli.md gives the numbers
  behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from samdeploy.package import ModelPackage

#: A mask scored below this predicted IoU is reported as low-confidence.
LOW_CONFIDENCE_SCORE = 0.5

DEMO_NOTE = (
    "the embedded default model is a small demo trained on synthetic shapes (like examples/shapes.png);"
    " on photographs its masks are unreliable. For real images export an official checkpoint:"
    " `samdeploy export sam_vit_b_01ec64.pth --output models/sam_vit_b`, then pass"
    " `--model models/sam_vit_b` (see docs/export.md)"
)


def is_demo(package: ModelPackage) -> bool:
    """Whether ``package`` is the embedded default model (however its folder was named)."""
    from samdeploy.sam.model import DEFAULT_MODEL

    return Path(package.root).resolve() == DEFAULT_MODEL.resolve()


def model_info(package: ModelPackage) -> dict[str, Any]:
    """The ``model`` entry of a JSON result: which package answered, and the demo note if it is one."""
    info: dict[str, Any] = {
        "package": "default" if is_demo(package) else str(package.root),
        "model_type": package.model_type,
        "precision": package.precision,
        "low_confidence_below": LOW_CONFIDENCE_SCORE,
    }
    if is_demo(package):
        info["demo"] = True
        info["note"] = DEMO_NOTE
    return info


def say_if_demo(package: ModelPackage, console: Console) -> None:
    """One stderr line when ``package`` is the embedded demo model; nothing otherwise."""
    if is_demo(package):
        console.print(f"[yellow]note:[/] {DEMO_NOTE}", highlight=False, soft_wrap=True, markup=True)


def is_low_confidence(score: float) -> bool:
    """Whether a mask with this predicted IoU is reported as low-confidence."""
    return float(score) < LOW_CONFIDENCE_SCORE


def low_confidence_label(count: int | None = None) -> str:
    """The console's mark: ``low confidence (score < 0.5)``, or ``3 low confidence (...)``."""
    what = "low confidence" if count is None else f"{count} low confidence"
    return f"[yellow]{what} (score < {LOW_CONFIDENCE_SCORE:g})[/]"
