"""OpenVINO backend (the optional ``openvino`` extra): runs ONNX or OpenVINO IR (.xml) models."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine.backends.base import Backend, register_backend
from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    dtype = port.get_element_type().to_dtype().name if port.get_element_type().is_static() else "unknown"
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=dtype)


@register_backend
class OpenVinoBackend(Backend):
    """Runs a model with OpenVINO on ``device`` (``CPU`` by default, or ``GPU``, ``AUTO``, ...).

    ``threads`` sets OpenVINO's inference thread count (0: its default).
    """

    name = "openvino"
    options = ("device", "threads")
    install_hint = "pip install 'samdeploy[openvino]'"

    def __init__(self, model: str | Path, device: str | None = None, threads: int = 0) -> None:
        import openvino as ov

        super().__init__(model)
        if not self.model.is_file():
            raise BackendError(f"model file not found: {self.model}")
        core = ov.Core()
        device = device or "CPU"
        devices = core.available_devices
        if device not in devices and not device.startswith(("AUTO", "MULTI", "HETERO")):
            raise BackendError(
                f"OpenVINO device '{device}' is not available; available: {', '.join(devices)}"
            )
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        try:
            self._compiled = core.compile_model(core.read_model(str(self.model)), device, config)
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot load {self.model}: {exc}") from None
        self.device = device
        self.inputs = tuple(_spec(p) for p in self._compiled.inputs)
        self.outputs = tuple(_spec(p) for p in self._compiled.outputs)
        # An infer request runs one inference at a time: give each thread its own.
        self._local = threading.local()

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("openvino") is not None

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
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        try:
            request.infer(dict(feeds))
        except Exception as exc:
            raise BackendError(f"OpenVINO failed on {self.model.name}: {exc}") from None
        names = list(outputs) if outputs is not None else [spec.name for spec in self.outputs]
        # Copy: the request reuses its output buffers on the next inference.
        return {name: np.array(request.get_tensor(name).data) for name in names}
