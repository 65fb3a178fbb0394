"""ONNX Runtime backend: CPU by default, CUDA / TensorRT / other execution providers on request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine.backends.base import Backend, register_backend
from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# ORT's type strings ("tensor(float)") -> numpy dtype names.
_ORT_TYPES = {"float": "float32", "double": "float64", "string": "str"}


def provider_name(alias: str, known: Sequence[str]) -> str:
    """Full provider name for ``alias``: ``cuda`` or ``CUDA`` or ``CUDAExecutionProvider``."""
    wanted = alias.lower().removesuffix("executionprovider")
    for name in known:
        if name.lower().removesuffix("executionprovider") == wanted:
            return name
    return alias


def _spec(arg: Any) -> TensorSpec:
    kind = arg.type[len("tensor(") : -1] if arg.type.startswith("tensor(") else arg.type
    shape = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)
    return TensorSpec(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(kind, kind))


@register_backend
class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model with ONNX Runtime.

    ``providers``: execution providers in order of preference (full names or short ones such as
    ``cuda``, ``tensorrt``); CPU is always appended as the fallback. Asking for one that this
    onnxruntime build lacks, or that fails to start, raises :class:`BackendError`.
    ``provider_options``: per-provider options, e.g. ``{"cuda": {"device_id": 1}}``.
    ``threads`` / ``inter_op_threads``: ORT thread pools (0: ORT's default).
    ``optimization_level``: ``disable``, ``basic``, ``extended`` or ``all`` (default).
    ``memory_arena``: keep ORT's CPU memory arena (default). Off, a run gives its activations back
    when it ends: a vit_b encoder pass needs ~1 GB only while it runs (see docs/performance.md).
    """

    name = "onnxruntime"
    options = (
        "providers",
        "provider_options",
        "threads",
        "inter_op_threads",
        "optimization_level",
        "memory_arena",
    )
    install_hint = "pip install onnxruntime, or onnxruntime-gpu for CUDA and TensorRT"

    def __init__(
        self,
        model: str | Path,
        providers: Sequence[str] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        threads: int = 0,
        inter_op_threads: int = 0,
        optimization_level: str = "all",
        memory_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        super().__init__(model)
        if not self.model.is_file():
            raise BackendError(f"model file not found: {self.model}")
        if optimization_level not in OPTIMIZATION_LEVELS:
            raise BackendError(
                f"unknown optimization_level '{optimization_level}'; choose one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if threads < 0 or inter_op_threads < 0:
            raise BackendError("threads and inter_op_threads must be 0 (default) or positive")
        available = ort.get_available_providers()
        chosen = [provider_name(p, ort.get_all_providers()) for p in (providers or ["CPUExecutionProvider"])]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise BackendError(
                f"execution provider {', '.join(missing)} is not available in this onnxruntime;"
                f" available: {', '.join(available)}"
            )
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        by_name = {provider_name(k, chosen): dict(v) for k, v in (provider_options or {}).items()}
        unknown = sorted(set(by_name) - set(chosen))
        if unknown:
            raise BackendError(
                f"provider_options for {', '.join(unknown)}, which is not among providers {chosen}"
            )

        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3  # errors only: ORT's warnings are noise for users
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = inter_op_threads
        session_options.enable_cpu_mem_arena = bool(memory_arena)
        if inter_op_threads > 1:  # the inter-op pool is only used in parallel execution mode
            session_options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        session_options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization_level]
        try:
            self._session = ort.InferenceSession(
                str(self.model),
                sess_options=session_options,
                providers=chosen,
                provider_options=[by_name.get(p, {}) for p in chosen],
            )
        except Exception as exc:
            raise BackendError(f"onnxruntime cannot load {self.model}: {exc}") from None
        # ORT silently falls back to CPU when a provider's libraries (CUDA, cuDNN, TensorRT) fail
        # to load; a user who asked for a GPU must hear about it.
        running = self._session.get_providers()
        failed = [p for p in chosen if p not in running]
        if failed:
            raise BackendError(
                f"onnxruntime could not start {', '.join(failed)} for {self.model.name} (are its libraries"
                f" installed?); it would run on {', '.join(running)}"
            )
        self.providers = running
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())

    @classmethod
    def is_available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else [spec.name for spec in self.outputs]
        try:
            values = self._session.run(names, dict(feeds))
        except Exception as exc:
            self.check_feeds(feeds, outputs)
            raise BackendError(f"onnxruntime failed on {self.model.name}: {exc}") from None
        return dict(zip(names, values, strict=True))
