"""The inference backend interface, the registry of backends, and sharing of loaded models."""

from __future__ import annotations

import json
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from samdeploy.engine.backends.onnx_header import read_onnx_specs
from samdeploy.errors import BackendError
from samdeploy.package import TensorSpec


def unchanging(value: Any) -> bool:
    """Whether ``value`` is a numpy array whose contents nothing can change while it lives.

    True for a read-only array none of whose bases is writable: not a read-only view of an array
    (or buffer) that is itself writable. Such an array's identity then stands for its contents, so
    outputs computed from it, or a copy of it held by a runtime, stay valid while it is alive.
    """
    if not isinstance(value, np.ndarray):
        return False
    base: Any = value
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    if base is None:
        return True
    try:
        return memoryview(base).readonly
    except TypeError:  # no buffer interface (an ONNX Runtime capsule): only its owner writes it
        return True


class Backend(ABC):
    """A loaded model that runs feeds to outputs. Subclasses load in ``__init__``.

    ``inputs`` / ``outputs`` list the model's tensors; :meth:`run` takes a dict of input arrays
    and returns a dict of output arrays (all outputs, or the ``outputs`` names asked for). ``run``
    may be called from several threads at once.
    """

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()  # keyword options the constructor takes
    install_hint: ClassVar[str] = ""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __init__(self, model: str | Path) -> None:
        self.model = Path(model)

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """Whether the backend's runtime library is installed."""

    @classmethod
    def read_specs(cls, model: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) of a model file, cheaply, without loading it."""
        return read_onnx_specs(model)

    @classmethod
    def supports_precision(cls, precision: str) -> bool:
        """Whether this backend can run models at inference ``precision`` here (the model's own
        float32 arithmetic, ``f32``, always)."""
        return precision == "f32"

    @abstractmethod
    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model once; ``outputs`` picks a subset of the output names (default: all)."""

    def check_feeds(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None) -> None:
        """Raise :class:`BackendError` naming missing or unknown inputs and unknown outputs."""
        names = [spec.name for spec in self.inputs]
        missing = [n for n in names if n not in feeds]
        unknown = [n for n in feeds if n not in names]
        if missing or unknown:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
            )
            raise BackendError(
                f"{self.model.name}: bad inputs ({'; '.join(parts)}); it takes {', '.join(names)}"
            )
        if outputs is not None:
            known = {spec.name for spec in self.outputs}
            bad = [n for n in outputs if n not in known]
            if bad:
                raise BackendError(
                    f"{self.model.name} has no output {', '.join(bad)}; its outputs: {', '.join(sorted(known))}"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.model)!r})"


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available by its ``name``."""
    _BACKENDS[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    """Names of the backends whose runtime is installed, e.g. ``["onnxruntime"]``."""
    return [name for name, cls in _BACKENDS.items() if cls.is_available()]


def backend_class(name: str) -> type[Backend]:
    """The backend class called ``name``; :class:`BackendError` if unknown or not installed."""
    cls = _BACKENDS.get(name)
    installed = ", ".join(available_backends()) or "none"
    if cls is None:
        raise BackendError(f"unknown backend '{name}'; known: {', '.join(_BACKENDS)}; installed: {installed}")
    if not cls.is_available():
        raise BackendError(
            f"backend '{name}' is not installed ({cls.install_hint}); installed backends: {installed}"
        )
    return cls


def check_options(cls: type[Backend], options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise BackendError(
            f"backend '{cls.name}' does not take {', '.join(unknown)}; its options: {', '.join(cls.options)}"
        )


def create_backend(name: str, model: str | Path, **options: Any) -> Backend:
    """Load ``model`` with the backend called ``name``; ``options`` are backend-specific.

    onnxruntime takes ``providers``, ``provider_options``, ``threads``, ``inter_op_threads``,
    ``optimization_level``, ``memory_arena``; openvino takes ``device``, ``threads`` and ``precision``.
    """
    cls = backend_class(name)
    check_options(cls, options)
    return cls(model, **options)


_shared: weakref.WeakValueDictionary[str, Backend] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_backend(name: str, model: str | Path, **options: Any) -> Backend:
    """Like :func:`create_backend`, but nodes asking for the same file with the same options get
    one loaded model while any of them holds it (backends are safe to run from several threads)."""
    path = Path(model).resolve()
    try:
        stat = path.stat()
    except OSError:
        raise BackendError(f"model file not found: {model}") from None
    key = json.dumps([name, str(path), stat.st_mtime_ns, stat.st_size, options], sort_keys=True, default=str)
    with _shared_lock:
        backend = _shared.get(key)
        if backend is None:
            backend = create_backend(name, path, **options)
            _shared[key] = backend
        return backend
