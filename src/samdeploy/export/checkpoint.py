"""Reading SAM checkpoints safely and turning them into the official torch model.

Checkpoints are pickles, and unpickling can run arbitrary code. They are only ever read with
``torch.load(..., weights_only=True)``, whose restricted unpickler accepts tensors and plain
containers and refuses everything else before it is called.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from samdeploy.errors import CheckpointError
from samdeploy.export.checks import MODEL_TYPES, check_checkpoint_file
from samdeploy.export.config import PRESETS, SamConfig, build_sam, detect_config, preset_name

# Wrappers that training frameworks put around a state dict.
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` SAM state dict.

    Accepts the official files (a bare state dict), a state dict wrapped under ``model`` /
    ``state_dict``, and ``module.`` prefixes left by DataParallel. Raises :class:`CheckpointError`
    for a missing, corrupt or unsafe file and for anything that is not a SAM state dict.
    """
    path = Path(path)
    check_checkpoint_file(path)
    # mmap keeps multi-GB weights in the page cache instead of a private copy; only the zip format
    # (every torch.save since 1.6) supports it.
    mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the failure below says more.
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        named = re.search(r"GLOBAL ([\w.]+)", message)
        calls = [named.group(1)] if named else ([] if mmap else _pickle_globals(path))
        if calls:
            raise CheckpointError(
                f"refusing to load {path}: unpickling it would run code (it calls {', '.join(calls[:3])});"
                " only plain tensor checkpoints are accepted"
            ) from None
        raise CheckpointError(f"corrupt checkpoint {path}: not a readable PyTorch checkpoint") from None
    except Exception as exc:  # the unpickler fails on garbage in many ways (IndexError, KeyError, ...)
        lines = str(exc).strip().splitlines()
        raise CheckpointError(
            f"corrupt checkpoint {path}: {lines[0] if lines else type(exc).__name__}"
        ) from None
    return normalize_state_dict(data, source=str(path))


def _pickle_globals(path: Path) -> list[str]:
    """Callables a plain pickle file would import, read from its opcodes without unpickling it.

    ``weights_only`` loading stops at the first opcode it does not support (e.g. protocol 4 framing)
    before it reaches the import, so this scan is what names the code a hostile pickle would run.
    Returns ``[]`` when the file is not a pickle at all.
    """
    strings: list[str] = []
    found: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings.append(arg)
                elif opcode.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # any parse failure means: not a pickle, so nothing that could run
        return []
    # Tensor rebuilders and ordered dicts are what a plain torch pickle legitimately names.
    return [name for name in found if not name.startswith(("torch.", "collections."))]


def normalize_state_dict(data: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap and check a loaded checkpoint object; see :func:`load_state_dict`."""
    if isinstance(data, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data:
        raise CheckpointError(f"not a SAM checkpoint: {source} does not hold a state dict")
    state = {
        (k[len("module.") :] if isinstance(k, str) and k.startswith("module.") else k): v
        for k, v in data.items()
    }
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"not a SAM checkpoint: {source} holds non-tensor entries")
    if not any(k.startswith(_SAM_PREFIXES) for k in state):
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointError(
            f"not a SAM checkpoint: {source} has no image_encoder/prompt_encoder/mask_decoder weights (keys: {sample}, ...)"
        )
    return state


def resolve_config(state: Mapping[str, torch.Tensor], model_type: str = "auto") -> SamConfig:
    """The architecture of ``state``, checked against ``model_type`` (``auto`` or a preset name)."""
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type '{model_type}': choose one of {', '.join(MODEL_TYPES)}")
    detected = detect_config(state)
    if model_type == "auto":
        return detected
    expected = PRESETS[model_type]
    if detected != expected:
        found = preset_name(detected)
        found = found if found != "custom" else "a custom SAM"
        raise CheckpointError(
            f"checkpoint is {found} ({detected.describe()}), not {model_type} ({expected.describe()}):"
            " fix --model-type or use auto"
        )
    return expected


def load_sam(state: Mapping[str, torch.Tensor], config: SamConfig) -> Sam:
    """The official ``Sam`` for ``config`` holding the weights of ``state`` (eval mode, float32).

    Raises :class:`CheckpointError` when keys or shapes do not match the architecture.
    """
    sam = build_sam(config)
    # Half-precision checkpoints (the default model ships one) run and export in float32, as the
    # official model does; float32 tensors pass through untouched.
    state = {
        name: value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
        for name, value in state.items()
    }
    try:
        # assign=True makes the parameters the (memory-mapped) checkpoint tensors: no second copy.
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint does not match the SAM architecture: {detail[:300]}") from None
    return sam.eval()
