"""Inference backends, chosen by name: ``onnxruntime`` (always installed) and ``openvino`` (extra)."""

from samdeploy.engine.backends import onnxruntime as _onnxruntime  # noqa: F401  (registers itself)
from samdeploy.engine.backends import openvino as _openvino  # noqa: F401  (registers itself)
from samdeploy.engine.backends.base import (
    Backend,
    available_backends,
    backend_class,
    check_options,
    create_backend,
    register_backend,
    shared_backend,
)
from samdeploy.engine.backends.onnxruntime import OnnxRuntimeBackend
from samdeploy.engine.backends.openvino import OpenVinoBackend

__all__ = [
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "available_backends",
    "backend_class",
    "check_options",
    "create_backend",
    "register_backend",
    "shared_backend",
]
