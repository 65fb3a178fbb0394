"""Export SAM checkpoints to samdeploy model packages (needs the ``export`` extra: torch, onnx).

    from samdeploy.export import export_model
    report = export_model("sam_vit_b_01ec64.pth", "models/sam_vit_b")   # model type detected

This is the only part of samdeploy that imports torch; runtimes read the package it writes.
"""

from __future__ import annotations

from samdeploy.export.checkpoint import MODEL_TYPES, load_sam, load_state_dict, resolve_config
from samdeploy.export.config import PRESETS, SamConfig, build_sam, detect_config, preset_name, random_sam
from samdeploy.export.exporter import ExportReport, export_model
from samdeploy.export.optimize import DEFAULT_SIMPLIFIER, QUANTIZATIONS, SIMPLIFIERS
from samdeploy.export.validate import TOLERANCES, synthetic_image

__all__ = [
    "DEFAULT_SIMPLIFIER",
    "MODEL_TYPES",
    "PRESETS",
    "QUANTIZATIONS",
    "SIMPLIFIERS",
    "TOLERANCES",
    "ExportReport",
    "SamConfig",
    "build_sam",
    "detect_config",
    "export_model",
    "load_sam",
    "load_state_dict",
    "preset_name",
    "random_sam",
    "resolve_config",
    "synthetic_image",
]
