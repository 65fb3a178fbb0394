"""Export SAM checkpoints to samdeploy model packages (needs the ``export`` extra: torch, onnx).

    from samdeploy.export import export_model
    report = export_model("sam_vit_b_01ec64.pth", "models/sam_vit_b")   # model type detected

This is the only part of samdeploy that imports torch; runtimes read the package it writes. The
names below are imported on first use, so the light modules (:mod:`samdeploy.export.checks`, the
options an export takes) load without PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Public name -> the submodule that defines it.
_SOURCES = {
    "DEFAULT_SIMPLIFIER": "checks",
    "MODEL_TYPES": "checks",
    "QUANTIZATIONS": "checks",
    "SIMPLIFIERS": "checks",
    "load_sam": "checkpoint",
    "load_state_dict": "checkpoint",
    "resolve_config": "checkpoint",
    "PRESETS": "config",
    "SamConfig": "config",
    "build_sam": "config",
    "detect_config": "config",
    "preset_name": "config",
    "random_sam": "config",
    "ExportReport": "exporter",
    "export_model": "exporter",
    "TOLERANCES": "validate",
    "synthetic_image": "validate",
}

__all__ = [
    "DEFAULT_SIMPLIFIER",
    "ExportReport",
    "MODEL_TYPES",
    "PRESETS",
    "QUANTIZATIONS",
    "SIMPLIFIERS",
    "SamConfig",
    "TOLERANCES",
    "build_sam",
    "detect_config",
    "export_model",
    "load_sam",
    "load_state_dict",
    "preset_name",
    "random_sam",
    "resolve_config",
    "synthetic_image",
]  # the keys of _SOURCES


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from samdeploy.export.checkpoint import load_sam, load_state_dict, resolve_config
    from samdeploy.export.checks import DEFAULT_SIMPLIFIER, MODEL_TYPES, QUANTIZATIONS, SIMPLIFIERS
    from samdeploy.export.config import PRESETS, SamConfig, build_sam, detect_config, preset_name, random_sam
    from samdeploy.export.exporter import ExportReport, export_model
    from samdeploy.export.validate import TOLERANCES, synthetic_image
