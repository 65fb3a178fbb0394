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

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # the same names, for type checkers
    from samdeploy.export.checkpoint import load_sam as load_sam
    from samdeploy.export.checkpoint import load_state_dict as load_state_dict
    from samdeploy.export.checkpoint import resolve_config as resolve_config
    from samdeploy.export.checks import DEFAULT_SIMPLIFIER as DEFAULT_SIMPLIFIER
    from samdeploy.export.checks import MODEL_TYPES as MODEL_TYPES
    from samdeploy.export.checks import QUANTIZATIONS as QUANTIZATIONS
    from samdeploy.export.checks import SIMPLIFIERS as SIMPLIFIERS
    from samdeploy.export.config import PRESETS as PRESETS
    from samdeploy.export.config import SamConfig as SamConfig
    from samdeploy.export.config import build_sam as build_sam
    from samdeploy.export.config import detect_config as detect_config
    from samdeploy.export.config import preset_name as preset_name
    from samdeploy.export.config import random_sam as random_sam
    from samdeploy.export.exporter import ExportReport as ExportReport
    from samdeploy.export.exporter import export_model as export_model
    from samdeploy.export.validate import TOLERANCES as TOLERANCES
    from samdeploy.export.validate import synthetic_image as synthetic_image
