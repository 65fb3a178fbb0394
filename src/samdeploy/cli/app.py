"""The typer application that every ``samdeploy`` sub-command registers itself on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="samdeploy",
    help="Export Segment Anything checkpoints to ONNX and run them without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Export Segment Anything checkpoints to ONNX and run them without PyTorch."""
