"""samdeploy: Segment Anything, exported to ONNX and deployed as a graph of nodes without PyTorch.

The public face::

    import samdeploy
    model = samdeploy.load_model()                 # the embedded default model, or a package folder
    predictor = samdeploy.SamPredictor(model)      # drop-in for segment_anything.SamPredictor
    generator = samdeploy.SamAutomaticMaskGenerator(model)
    # a SAM 2.1 package: load_model gives a Sam2Model, for samdeploy.SAM2ImagePredictor and
    # samdeploy.SAM2AutomaticMaskGenerator (drop-ins for the official sam2 ones)

Names are imported lazily so that ``import samdeploy`` stays fast and never needs torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from samdeploy.errors import (
    BackendError,
    CheckpointError,
    ExportError,
    GraphError,
    ImageError,
    NodeError,
    PackageError,
    PromptError,
    SamDeployError,
)

__version__ = "0.1.0"

_LAZY = {
    "ModelPackage": "samdeploy.package",
    "load_model": "samdeploy.loading",
    "SamModel": "samdeploy.sam.model",
    "SamPredictor": "samdeploy.sam.predictor",
    "SamAutomaticMaskGenerator": "samdeploy.sam.automatic",
    "Sam2Model": "samdeploy.sam2.model",
    "SAM2ImagePredictor": "samdeploy.sam2.predictor",
    "SAM2AutomaticMaskGenerator": "samdeploy.sam2.automatic",
}

__all__ = [
    "BackendError",
    "CheckpointError",
    "ExportError",
    "GraphError",
    "ImageError",
    "NodeError",
    "PackageError",
    "PromptError",
    "SamDeployError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'samdeploy' has no attribute '{name}'")
