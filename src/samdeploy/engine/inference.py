"""The generic inference node: one node type for every model, configured by params."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


class RunCount:
    """Inference runs in progress in this process, for :attr:`Inference.Params.solo_threads`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    @contextmanager
    def run(self) -> Iterator[bool]:
        """Count one run while the block runs; yields whether it started alone (no other run)."""
        with self._lock:
            alone = self._running == 0
            self._running += 1
        try:
            yield alone
        finally:
            with self._lock:
                self._running -= 1


# Every Inference node's runs, whatever graph or model it belongs to.
RUNS = RunCount()
# Whether runs in this context may take a solo session at all: a caller that knows of other work
# about to run (a server with other requests in flight) sets it False around its calls.
SOLO_ALLOWED: ContextVar[bool] = ContextVar("samdeploy_solo_allowed", default=True)


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
        # Intra-op threads of a run that starts while no other Inference run is in progress in
        # this process (0: off; used only above a nonzero ``threads``). For a server whose
        # requests each run on one thread: a lone call takes every core, concurrent ones one each.
        solo_threads: int = 0

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
        if p.solo_threads < 0:
            raise BackendError(f"node '{name}': params.solo_threads must be >= 0, got {p.solo_threads}")
        self._backend: Backend | None = None
        self._solo_backend: Backend | None = None
        self.solo_runs = 0  # runs that took the solo_threads session
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

    @property
    def solo(self) -> bool:
        """Whether a lone run takes a session of its own with ``solo_threads`` intra-op threads."""
        threads = self.params.threads
        return 0 < threads < self.params.solo_threads

    def setup(self) -> None:
        self._backend = shared_backend(self.params.backend, self.path, **self.options)
        if self.solo:
            options = {**self.options, "threads": self.params.solo_threads}
            self._solo_backend = shared_backend(self.params.backend, self.path, **options)

    def close(self) -> None:
        self._backend = None
        self._solo_backend = None
        with self._memo_lock:
            self._memo.clear()

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs for ``feeds``.

        With ``memo`` > 0, feeds that are all read-only numpy arrays (with no writable base, see
        :func:`~samdeploy.engine.backends.base.unchanging`) are remembered by identity (the same
        array objects, still alive) for the ``memo`` most recent of them, and their outputs, made
        read-only, are returned again without a run. Such an array cannot change, so the outputs
        cannot go stale; other feeds always run.

        With ``solo_threads``, a run that starts while no other Inference run is in progress in
        this process (:data:`RUNS`) takes a second session of the same model with that many
        intra-op threads, unless :data:`SOLO_ALLOWED` is False in the caller's context; the others
        take the ``threads`` one.
        """
        memo = self.params.memo
        if memo <= 0 or not all(unchanging(value) for value in feeds.values()):
            return self._run(feeds)
        names = sorted(feeds)
        key = tuple(id(feeds[name]) for name in names)
        with self._memo_lock:
            entry = self._memo.get(key)
            if entry is not None and all(
                ref() is feeds[name] for ref, name in zip(entry[0], names, strict=True)
            ):
                self._memo.move_to_end(key)
                return dict(entry[1])
        outputs = self._run(feeds)
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

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One backend run, counted in :data:`RUNS`: on the solo session when it starts alone."""
        with RUNS.run() as alone:
            solo = alone and self._solo_backend is not None and SOLO_ALLOWED.get()
            backend = self._solo_backend if solo else self._backend
            if solo:
                with self._memo_lock:
                    self.solo_runs += 1
            return backend.run(feeds, self._output_names)  # type: ignore[union-attr]
