"""The generic inference node: one node type for every model, configured by params."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samdeploy.engine.backends import backend_class, check_options, shared_backend
from samdeploy.engine.backends.base import Backend, unchanging
from samdeploy.engine.node import Node, register_node, resolve_path
from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec

# Params that configure the backend; each is passed only when changed from its default, so a
# backend that does not take an option (providers for OpenVINO) complains only if it is set.
_BACKEND_OPTIONS = (
    "providers",
    "provider_options",
    "device",
    "threads",
    "inter_op_threads",
    "optimization_level",
    "memory_arena",
    "precision",
    "quantization_group",
)


@register_node("engine.Inference")
class Inference(Node):
    """Runs a model file with an inference backend. Its ports are the model's tensor names.

    The model's inputs and outputs are read from the file when the node is created (cheaply,
    without loading weights); the model itself is loaded in :meth:`setup`, and nodes that ask
    for the same file with the same options share one loaded model.
    """

    @dataclass
    class Params:
        model: str = ""  # model file; relative paths resolve against the graph file's folder
        backend: str = "onnxruntime"  # see available_backends()
        providers: list[str] | None = None  # onnxruntime: e.g. ["cuda"] or ["tensorrt", "cuda"]
        provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # onnxruntime
        device: str | None = None  # openvino: CPU (default), GPU, AUTO, ...
        threads: int = 0  # intra-op threads; 0: the backend's default
        inter_op_threads: int = 0  # onnxruntime
        optimization_level: str = "all"  # onnxruntime: disable, basic, extended, all
        memory_arena: bool = True  # onnxruntime: False gives a run's activations back when it ends
        precision: str = "f32"  # openvino: inference precision, f32 or bf16 (where the CPU has it)
        quantization_group: int | None = None  # openvino: dynamic int8 group for int8-weight layers
        outputs: list[str] | None = None  # compute only these outputs; None: all
        # Remember the outputs for this many inputs (0: none), see Inference.run: for a model whose
        # inputs are the same read-only arrays again and again (per-image tensors).
        memo: int = 0

    def __init__(self, name: str, params: Any = None) -> None:
        super().__init__(name, params)
        p = self.params
        if not p.model:
            raise BackendError(f"node '{name}': params.model must name a model file")
        cls = backend_class(p.backend)
        self.options = self._backend_options()
        check_options(cls, self.options)
        self.path = resolve_path(p.model)
        inputs, outputs = cls.read_specs(self.path)
        if p.outputs is not None:
            known = {spec.name: spec for spec in outputs}
            unknown = [n for n in p.outputs if n not in known]
            if unknown:
                raise BackendError(
                    f"node '{name}': {self.path.name} has no output {', '.join(unknown)};"
                    f" its outputs: {', '.join(known)}"
                )
            outputs = tuple(known[n] for n in p.outputs)
        self.input_specs: tuple[TensorSpec, ...] = inputs
        self.output_specs: tuple[TensorSpec, ...] = outputs
        self._output_names = [spec.name for spec in outputs]
        self._backend: Backend | None = None
        self._memo: OrderedDict[tuple[int, ...], tuple[list[weakref.ref], dict[str, np.ndarray]]] = (
            OrderedDict()
        )
        self._memo_lock = threading.Lock()

    def _backend_options(self) -> dict[str, Any]:
        defaults = self.Params()
        return {
            key: getattr(self.params, key)
            for key in _BACKEND_OPTIONS
            if getattr(self.params, key) != getattr(defaults, key)
        }

    def input_ports(self) -> dict[str, Any]:
        return {spec.name: np.ndarray for spec in self.input_specs}

    def output_ports(self) -> dict[str, Any]:
        return {spec.name: np.ndarray for spec in self.output_specs}

    @property
    def backend(self) -> Backend:
        """The loaded backend (loads the model on first use)."""
        self.ensure_setup()
        assert self._backend is not None
        return self._backend

    def setup(self) -> None:
        self._backend = shared_backend(self.params.backend, self.path, **self.options)

    def close(self) -> None:
        self._backend = None
        with self._memo_lock:
            self._memo.clear()

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for ``feeds``.

        With ``memo`` > 0, feeds that are all read-only numpy arrays (with no writable base, see
        :func:`~samdeploy.engine.backends.base.unchanging`) are remembered by identity (the same
        array objects, still alive) for the ``memo`` most recent of them, and their outputs, made
        read-only, are returned again without a run. Such an array cannot change, so the outputs
        cannot go stale; other feeds always run.
        """
        memo = self.params.memo
        if memo <= 0 or not all(unchanging(value) for value in feeds.values()):
            return self._backend.run(feeds, self._output_names)  # type: ignore[union-attr]
        names = sorted(feeds)
        key = tuple(id(feeds[name]) for name in names)
        with self._memo_lock:
            entry = self._memo.get(key)
            if entry is not None and all(
                ref() is feeds[name] for ref, name in zip(entry[0], names, strict=True)
            ):
                self._memo.move_to_end(key)
                return dict(entry[1])
        outputs = self._backend.run(feeds, self._output_names)  # type: ignore[union-attr]
        for value in outputs.values():
            value.setflags(write=False)
        with self._memo_lock:
            self._memo[key] = ([weakref.ref(feeds[name]) for name in names], dict(outputs))
            self._memo.move_to_end(key)
            for stale in [k for k, (refs, _) in self._memo.items() if any(ref() is None for ref in refs)]:
                del self._memo[stale]  # its inputs are gone: nobody can ask for it again
            while len(self._memo) > memo:
                self._memo.popitem(last=False)
        return outputs
