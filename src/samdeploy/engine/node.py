"""Node: a named step with typed input and output ports and JSON-serializable params.

A node type is a subclass of :class:`Node` registered under a type name with
:func:`register_node`; the registry is what lets a graph be rebuilt from JSON. A subclass declares

- ``Params``: a dataclass of JSON-serializable fields (the node's configuration);
- ``inputs`` / ``outputs``: port name -> type (``typing.Any`` accepts anything), or overrides of
  :meth:`Node.input_ports` / :meth:`Node.output_ports` when the ports depend on the params;
- ``run(**inputs) -> dict``: one item in, every output port out;
- optionally ``setup()`` (load heavy resources once, before the first run) and ``close()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

from samdeploy.errors import GraphError

_REGISTRY: dict[str, type[Node]] = {}
_PATH_BASE: ContextVar[Path | None] = ContextVar("samdeploy_path_base", default=None)

NodeT = TypeVar("NodeT", bound="Node")


def register_node(type_name: str) -> Callable[[type[NodeT]], type[NodeT]]:
    """Class decorator: register a :class:`Node` subclass under ``type_name`` (used in JSON)."""

    def decorate(cls: type[NodeT]) -> type[NodeT]:
        existing = _REGISTRY.get(type_name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise GraphError(f"node type '{type_name}' is already registered by {existing.__qualname__}")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls
        return cls

    return decorate


def node_type(type_name: str) -> type[Node]:
    """The node class registered under ``type_name``; :class:`GraphError` when there is none."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise GraphError(
            f"unknown node type '{type_name}' (registered: {known}); import the module that defines it first"
        ) from None


def registered_node_types() -> list[str]:
    """Names of every registered node type, sorted."""
    return sorted(_REGISTRY)


@contextlib.contextmanager
def resolving_paths_from(folder: str | Path) -> Iterator[None]:
    """While active, :func:`resolve_path` reads relative paths against ``folder`` (a graph file's)."""
    token = _PATH_BASE.set(Path(folder))
    try:
        yield
    finally:
        _PATH_BASE.reset(token)


def resolve_path(path: str | Path) -> Path:
    """A file path from node params: relative paths are taken from the graph file being loaded, if any."""
    path = Path(path).expanduser()
    base = _PATH_BASE.get()
    if base is not None and not path.is_absolute():
        return base / path
    return path


def type_compatible(source: Any, target: Any) -> bool:
    """Whether a value declared as ``source`` may feed a port declared as ``target``.

    ``Any`` on either side matches; generic aliases compare by their origin (``tuple[int, int]``
    is a ``tuple``); a ``Union`` target accepts a source compatible with any member, and a
    ``Union`` source needs every member compatible with the target.
    """
    if source is Any or target is Any:
        return True
    if _is_union(target):
        return any(type_compatible(source, member) for member in get_args(target))
    if _is_union(source):
        return all(type_compatible(member, target) for member in get_args(source))
    source, target = get_origin(source) or source, get_origin(target) or target
    if isinstance(source, type) and isinstance(target, type):
        return issubclass(source, target)
    return source == target


def _is_union(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType")


def type_label(annotation: Any) -> str:
    """A short readable name of a port type, for error messages."""
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__qualname__ if annotation.__module__ == "builtins" else annotation.__name__
    return repr(annotation).replace("typing.", "")


class Node:
    """Base class of every node. Subclass it, declare ports and ``Params``, implement :meth:`run`.

    ``params`` may be a ``Params`` instance, a dict of its fields, or ``None`` for the defaults;
    ``node.params`` is always a ``Params`` instance.
    """

    type_name: ClassVar[str] = ""

    @dataclasses.dataclass
    class Params:
        """No parameters."""

    inputs: ClassVar[Mapping[str, Any]] = {}
    outputs: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, name: str, params: Any = None) -> None:
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise GraphError(f"bad node name {name!r}: use a non-empty name without '.' or '/'")
        self.name = name
        self.params = self._make_params(params)
        # Guards the "run is only called from one thread at a time" promise and a single setup();
        # re-entrant so that a run() or setup() that touches ensure_setup() cannot deadlock.
        self._lock = threading.RLock()
        self._ready = False

    def _make_params(self, params: Any) -> Any:
        cls = self.Params
        if params is None:
            return cls()
        if isinstance(params, cls):
            return params
        if isinstance(params, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(params) - names)
            if unknown:
                raise GraphError(
                    f"node '{self.name}' ({type(self).__name__}): unknown params {', '.join(unknown)};"
                    f" known: {', '.join(sorted(names)) or 'none'}"
                )
            try:
                return cls(**params)
            except TypeError as exc:
                raise GraphError(f"node '{self.name}' ({type(self).__name__}): bad params: {exc}") from None
        raise GraphError(
            f"node '{self.name}': params must be a {cls.__qualname__}, a dict or None, not {type(params).__name__}"
        )

    def input_ports(self) -> dict[str, Any]:
        """Input port name -> type. Override when the ports depend on the params."""
        return dict(self.inputs)

    def output_ports(self) -> dict[str, Any]:
        """Output port name -> type. Override when the ports depend on the params."""
        return dict(self.outputs)

    def setup(self) -> None:
        """Load heavy resources. Called once, before the first :meth:`run`."""

    def run(self, **inputs: Any) -> dict[str, Any]:
        """Process one item: a value per input port in, a dict with every output port out."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def close(self) -> None:
        """Release what :meth:`setup` acquired; the node sets itself up again if run later."""

    def ensure_setup(self) -> None:
        """Call :meth:`setup` unless it already ran; safe to call from several threads."""
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                self.setup()
                self._ready = True

    def release(self) -> None:
        """Call :meth:`close` if :meth:`setup` ran."""
        with self._lock:
            if self._ready:
                self.close()
                self._ready = False

    def to_dict(self) -> dict[str, Any]:
        """``{"type", "name", "params"}``: enough to rebuild the node with :meth:`from_dict`."""
        if _REGISTRY.get(self.type_name) is not type(self):
            raise GraphError(
                f"node '{self.name}': {type(self).__name__} is not registered with @register_node"
            )
        return {"type": self.type_name, "name": self.name, "params": dataclasses.asdict(self.params)}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Node:
        """Rebuild a node (of any registered type, graphs included) from :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or "type" not in data or "name" not in data:
            raise GraphError(f"a node must be an object with 'type' and 'name', got {data!r:.80}")
        cls = node_type(data["type"])
        return cls._build_from_dict(data)

    @classmethod
    def _build_from_dict(cls, data: Mapping[str, Any]) -> Node:
        return cls(data["name"], data.get("params"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.params!r})"
