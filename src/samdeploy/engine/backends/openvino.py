"""OpenVINO backend (the optional ``openvino`` extra): runs ONNX or OpenVINO IR (.xml) models."""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine.backends.base import Backend, register_backend, unchanging
from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    dtype = port.get_element_type().to_dtype().name if port.get_element_type().is_static() else "unknown"
    return TensorSpec(name=_port_name(port), shape=shape, dtype=dtype)


def _port_name(port: Any) -> str:
    """The graph's own name of a port. A graph output computed straight by a node carries the
    node's generated name too (``/conv_s0/Conv_output_0``), and ``get_any_name`` may return that
    one; generated names are path-like, so the plain one is preferred."""
    names = sorted(port.get_names(), key=lambda name: ("/" in name, len(name), name))
    return names[0] if names else port.get_any_name()


# Inference precisions the backend takes, as OpenVINO names them.
PRECISIONS = ("f32", "bf16")


def check_allocator() -> None:
    """Refuse (BackendError) to start OpenVINO under a preloaded tcmalloc: OpenVINO 2026.4 aborts
    there ("double free or corruption") on its first device query, taking the process with it."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        raise BackendError(
            f"OpenVINO crashes under a preloaded tcmalloc (LD_PRELOAD={preload}); unset LD_PRELOAD"
            " for this process or use the onnxruntime backend"
        )


def device_supports(precision: str, device: str = "CPU") -> bool:
    """Whether OpenVINO's ``device`` computes in ``precision`` natively (bf16: AVX512-BF16 or AMX)."""
    if precision == "f32":
        return True
    check_allocator()
    return precision.upper() in _capabilities(device)


@functools.lru_cache(maxsize=8)
def _capabilities(device: str) -> frozenset[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of ``device`` (e.g. BF16, INT8), upper-case; asked once."""
    import openvino as ov

    try:
        capabilities = ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return frozenset()
    return frozenset(str(item).upper() for item in capabilities)


@register_backend
class OpenVinoBackend(Backend):
    """Runs a model with OpenVINO on ``device`` (``CPU`` by default, or ``GPU``, ``AUTO``, ...).

    ``threads`` sets OpenVINO's inference thread count (0: its default). ``precision`` is the
    inference precision: ``f32`` (the default: the model's own float32 arithmetic; OpenVINO by
    itself would pick bf16 on CPUs that have it) or ``bf16`` (matrix products and most other ops in
    bfloat16, about twice as fast where the CPU multiplies bf16 natively; refused on other devices).
    ``quantization_group`` sets ``DYNAMIC_QUANTIZATION_GROUP_SIZE``: layers whose weights are stored
    as int8 (see :func:`samdeploy.export.optimize.compress_weights_int8`) quantize their input on the
    fly in groups of that many channels and multiply in int8 (0 turns it off; None: OpenVINO's
    default). It changes nothing for float weights.
    """

    name = "openvino"
    options = ("device", "threads", "precision", "quantization_group")
    install_hint = "pip install 'samdeploy[openvino]'"

    def __init__(
        self,
        model: str | Path,
        device: str | None = None,
        threads: int = 0,
        precision: str = "f32",
        quantization_group: int | None = None,
    ) -> None:
        check_allocator()
        import openvino as ov

        super().__init__(model)
        if not self.model.is_file():
            raise BackendError(f"model file not found: {self.model}")
        if precision not in PRECISIONS:
            raise BackendError(
                f"unknown OpenVINO precision '{precision}': choose one of {', '.join(PRECISIONS)}"
            )
        if quantization_group is not None and (
            isinstance(quantization_group, bool)
            or not isinstance(quantization_group, int)
            or quantization_group < 0
        ):
            raise BackendError(
                f"quantization_group must be a whole number of channels >= 0, got {quantization_group!r}"
            )
        core = ov.Core()
        device = device or "CPU"
        devices = core.available_devices
        if device not in devices and not device.startswith(("AUTO", "MULTI", "HETERO")):
            raise BackendError(
                f"OpenVINO device '{device}' is not available; available: {', '.join(devices)}"
            )
        if not device_supports(precision, device):
            raise BackendError(
                f"OpenVINO device '{device}' has no native {precision} arithmetic on this machine"
                " (bf16 needs AVX512-BF16 or AMX); use precision f32"
            )
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if quantization_group is not None:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = quantization_group
        try:
            self._compiled = core.compile_model(core.read_model(str(self.model)), device, config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot load {self.model}: {exc}") from None
        self.device = device
        self.precision = precision
        self.quantization_group = quantization_group
        self.inputs = tuple(_spec(p) for p in self._compiled.inputs)
        self.outputs = tuple(_spec(p) for p in self._compiled.outputs)
        # An infer request runs one inference at a time: give each thread its own.
        self._local = threading.local()

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("openvino") is not None

    @classmethod
    def supports_precision(cls, precision: str) -> bool:
        return precision in PRECISIONS and device_supports(precision)

    @classmethod
    def read_specs(cls, model: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if Path(model).suffix.lower() == ".onnx":
            return super().read_specs(model)
        import openvino as ov

        if not Path(model).is_file():
            raise BackendError(f"model file not found: {model}")
        try:
            read = ov.Core().read_model(str(model))
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot read {model}: {exc}") from None
        return tuple(_spec(p) for p in read.inputs), tuple(_spec(p) for p in read.outputs)

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self.check_feeds(feeds, outputs)
        local = self._local
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = self._compiled.create_infer_request()
            local.held = {}
        # The request keeps a copy of each input it was given. An array that cannot change and is
        # the very one copied last time needs no new copy: a decoder called click after click on
        # one image's features (about 10 MB for SAM's) skips them.
        held: dict[str, weakref.ref] = local.held
        fresh = {}
        for name, value in feeds.items():
            kept = held.get(name)
            if kept is not None and kept() is value:
                continue
            fresh[name] = value
            if unchanging(value):
                held[name] = weakref.ref(value)
            else:
                held.pop(name, None)
        try:
            request.infer(fresh)
        except Exception as exc:
            held.clear()  # what the request holds after a failed call is unknown
            raise BackendError(f"OpenVINO failed on {self.model.name}: {exc}") from None
        names = list(outputs) if outputs is not None else [spec.name for spec in self.outputs]
        # Copy: the request reuses its output buffers on the next inference.
        return {name: np.array(request.get_tensor(name).data) for name in names}
