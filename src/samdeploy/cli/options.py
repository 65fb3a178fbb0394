"""Options shared by the sub-commands that run a model, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
