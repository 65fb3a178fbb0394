"""Graph: nodes joined by edges, itself a node (graphs nest), checked before it runs.

A graph maps its input ports to node input ports (:meth:`Graph.input`), joins node output ports
to node input ports (:meth:`Graph.connect`) and exposes node output ports as its own output
ports (:meth:`Graph.output`). Ports are written ``"node.port"``; node names never hold a dot, so
everything after the first dot is the port name (ONNX tensor names such as ``input.1`` work).

For running, a graph is compiled into a flat :class:`Plan`: nested graphs are inlined, so every
executor sees plain nodes (named ``outer/inner`` in profiles and errors) and a list of value slots.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samdeploy.engine.node import Node, register_node, type_compatible, type_label
from samdeploy.errors import GraphError

if TYPE_CHECKING:
    from samdeploy.engine.executors import Executor, ItemResult
    from samdeploy.engine.profile import Profile

GRAPH_FORMAT = "samdeploy-graph"
GRAPH_FORMAT_VERSION = 1

Port = tuple[str, str]  # (node name, port name)

_generation = [0]  # bumped by every change to any graph; see Graph._changed


def _split(ref: str, what: str) -> Port:
    node, dot, port = ref.partition(".") if isinstance(ref, str) else ("", "", "")
    if not dot or not node or not port:
        raise GraphError(f"bad {what} {ref!r}: write it as 'node.port'")
    return node, port


@dataclass(eq=False)
class Step:
    """One node of a compiled plan: where its inputs come from and where its outputs go."""

    name: str  # qualified: "outer/inner" for a node of a nested graph
    node: Node
    inputs: tuple[tuple[str, int], ...]  # (input port, slot)
    outputs: tuple[tuple[str, int], ...]  # (output port, slot), consumed outputs only


@dataclass(eq=False)
class Plan:
    """A validated graph flattened for execution; each value of an item lives in a numbered slot."""

    name: str
    steps: list[Step]
    slots: int
    inputs: dict[str, int]  # graph input -> slot
    outputs: dict[str, int]  # graph output -> slot
    deps: list[tuple[int, ...]] = field(default_factory=list)  # step -> steps it waits for
    successors: list[tuple[int, ...]] = field(default_factory=list)
    releases: list[tuple[int, ...]] = field(default_factory=list)  # slots no longer needed after a step

    def bind(self, inputs: Mapping[str, Any]) -> list[Any]:
        """A fresh slot list holding one item's graph inputs; :class:`GraphError` on wrong names."""
        if not isinstance(inputs, Mapping):
            raise GraphError(f"graph '{self.name}' takes a dict of inputs, got {type(inputs).__name__}")
        values: list[Any] = [None] * self.slots
        try:
            for name, slot in self.inputs.items():
                values[slot] = inputs[name]
        except KeyError:
            pass
        else:
            if len(inputs) == len(self.inputs):
                return values
        missing = [name for name in self.inputs if name not in inputs]
        extra = [str(name) for name in inputs if name not in self.inputs]
        problems = ([f"input {', '.join(map(repr, missing))} is missing"] if missing else []) + (
            [f"has no input {', '.join(map(repr, extra))}"] if extra else []
        )
        raise GraphError(
            f"graph '{self.name}' {'; '.join(problems)}; it takes {', '.join(self.inputs) or 'nothing'}"
        )

    def collect(self, values: list[Any]) -> dict[str, Any]:
        return {name: values[slot] for name, slot in self.outputs.items()}


@register_node("engine.Graph")
class Graph(Node):
    """A node made of nodes. Build it with :meth:`add`, :meth:`connect`, :meth:`input`, :meth:`output`."""

    def __init__(self, name: str, params: Any = None) -> None:
        super().__init__(name, params)
        self._nodes: dict[str, Node] = {}
        self._edges: list[tuple[Port, Port]] = []
        self._inputs: dict[str, list[Port]] = {}
        self._outputs: dict[str, Port] = {}
        self._plan: Plan | None = None
        self._plan_generation = -1

    # ------------------------------------------------------------------ building

    @property
    def nodes(self) -> dict[str, Node]:
        """The graph's own nodes by name (nested graphs appear as one node)."""
        return dict(self._nodes)

    def add(self, node: Node) -> Node:
        """Add a node and return it; names must be unique within the graph."""
        if not isinstance(node, Node):
            raise GraphError(f"graph '{self.name}': can only add nodes, not {type(node).__name__}")
        if node.name in self._nodes:
            raise GraphError(f"graph '{self.name}' already has a node named '{node.name}'")
        if node is self:
            raise GraphError(f"graph '{self.name}' cannot contain itself")
        self._nodes[node.name] = node
        self._changed()
        return node

    def connect(self, source: str, target: str) -> None:
        """Feed input port ``target`` (``"node.port"``) from output port ``source``."""
        src = self._port(source, "output")
        dst = self._port(target, "input")
        self._edges.append((src, dst))
        self._changed()

    def input(self, name: str, *targets: str) -> None:
        """Declare graph input ``name`` feeding node input ports ``targets``; call again to add more."""
        if not name or not isinstance(name, str):
            raise GraphError(f"graph '{self.name}': bad input name {name!r}")
        ports = self._inputs.setdefault(name, [])
        ports.extend(self._port(t, "input") for t in targets)
        self._changed()

    def output(self, name: str, source: str) -> None:
        """Expose node output port ``source`` as graph output ``name``."""
        if not name or not isinstance(name, str):
            raise GraphError(f"graph '{self.name}': bad output name {name!r}")
        if name in self._outputs:
            raise GraphError(f"graph '{self.name}' already has an output named '{name}'")
        self._outputs[name] = self._port(source, "output")
        self._changed()

    def _port(self, ref: str, kind: str) -> Port:
        node_name, port = _split(ref, f"{kind} port")
        node = self._nodes.get(node_name)
        if node is None:
            known = ", ".join(self._nodes) or "none"
            raise GraphError(f"graph '{self.name}' has no node '{node_name}' (in {ref!r}); nodes: {known}")
        ports = node.input_ports() if kind == "input" else node.output_ports()
        if port not in ports:
            raise GraphError(
                f"node '{node_name}' has no {kind} port '{port}'; its {kind} ports: {', '.join(ports) or 'none'}"
            )
        return node_name, port

    # ------------------------------------------------------------------ ports of the graph as a node

    def input_ports(self) -> dict[str, Any]:
        """Graph input -> type, taken from the first typed node port it feeds."""
        ports: dict[str, Any] = {}
        for name, targets in self._inputs.items():
            types = [self._nodes[n].input_ports()[p] for n, p in targets]
            ports[name] = next((t for t in types if t is not Any), Any)
        return ports

    def output_ports(self) -> dict[str, Any]:
        return {name: self._nodes[n].output_ports()[p] for name, (n, p) in self._outputs.items()}

    # ------------------------------------------------------------------ validation

    def validate(self) -> None:
        """Check the graph (and nested graphs); :class:`GraphError` names the node and port at fault."""
        self._order()

    def _order(self) -> list[str]:
        """Validate and return node names in a topological order (insertion order among equals)."""
        feeders: dict[Port, list[str]] = {}
        for name, targets in self._inputs.items():
            for port in targets:
                feeders.setdefault(port, []).append(f"graph input '{name}'")
        for (sn, sp), dst in self._edges:
            feeders.setdefault(dst, []).append(f"'{sn}.{sp}'")
        for node_name, node in self._nodes.items():
            if isinstance(node, Graph):
                try:
                    node.validate()
                except GraphError as exc:
                    raise GraphError(f"in nested graph '{node_name}': {exc}") from None
            for port in node.input_ports():
                fed = feeders.get((node_name, port), [])
                if not fed:
                    raise GraphError(
                        f"input port '{node_name}.{port}' is not fed: connect an output or a graph input to it"
                    )
                if len(fed) > 1:
                    raise GraphError(
                        f"input port '{node_name}.{port}' is fed more than once: by {', '.join(fed)}"
                    )
        for (sn, sp), (dn, dp) in self._edges:
            have, want = self._nodes[sn].output_ports()[sp], self._nodes[dn].input_ports()[dp]
            if not type_compatible(have, want):
                raise GraphError(
                    f"type mismatch: '{sn}.{sp}' gives {type_label(have)} but '{dn}.{dp}' takes {type_label(want)}"
                )
        for name, typ in self.input_ports().items():
            for dn, dp in self._inputs[name]:
                want = self._nodes[dn].input_ports()[dp]
                if not type_compatible(typ, want):
                    raise GraphError(
                        f"type mismatch: graph input '{name}' feeds {type_label(typ)} ports and '{dn}.{dp}'"
                        f" which takes {type_label(want)}"
                    )
        return self._topological()

    def _topological(self) -> list[str]:
        waiting = {name: 0 for name in self._nodes}
        after: dict[str, list[str]] = {name: [] for name in self._nodes}
        for (sn, _), (dn, _) in self._edges:
            waiting[dn] += 1
            after[sn].append(dn)
        ready = [name for name, count in waiting.items() if count == 0]
        order: list[str] = []
        while ready:
            name = ready.pop(0)
            order.append(name)
            for nxt in after[name]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    ready.append(nxt)
        if len(order) < len(self._nodes):
            raise GraphError(
                f"graph '{self.name}' has a cycle: {self._describe_cycle(set(self._nodes) - set(order))}"
            )
        return order

    def _describe_cycle(self, stuck: set[str]) -> str:
        """One cycle among ``stuck`` nodes, written port to port."""
        edge_from = {}
        for (sn, sp), (dn, dp) in self._edges:
            if sn in stuck and dn in stuck:
                edge_from.setdefault(sn, ((sn, sp), (dn, dp)))
        start = next(name for name in self._nodes if name in edge_from)
        seen: list[str] = []
        node = start
        while node not in seen:
            seen.append(node)
            node = edge_from[node][1][0]
        cycle = seen[seen.index(node) :]
        hops = [edge_from[n] for n in cycle]
        return " -> ".join(f"{sn}.{sp} => {dn}.{dp}" for (sn, sp), (dn, dp) in hops)

    # ------------------------------------------------------------------ compiling

    def plan(self) -> Plan:
        """The validated, flattened execution plan (cached until any graph changes)."""
        if self._plan is None or self._plan_generation != _generation[0]:
            self._plan = self._compile()
            self._plan_generation = _generation[0]
        return self._plan

    def _changed(self) -> None:
        # One counter for all graphs: a nested graph changing must invalidate its parents' plans,
        # and a graph does not know its parents. Recompiling is cheap and happens once per change.
        _generation[0] += 1

    def _compile(self) -> Plan:
        steps: list[Step] = []
        counter = itertools.count()
        inputs = {name: next(counter) for name in self._inputs}
        outputs = self._emit("", inputs, steps, counter)
        slots = next(counter)
        plan = Plan(self.name, steps, slots, inputs, outputs)
        producer = {slot: i for i, step in enumerate(steps) for _, slot in step.outputs}
        plan.deps = [tuple(sorted({producer[s] for _, s in st.inputs if s in producer})) for st in steps]
        successors: list[list[int]] = [[] for _ in steps]
        for i, deps in enumerate(plan.deps):
            for d in deps:
                successors[d].append(i)
        plan.successors = [tuple(s) for s in successors]
        last_use: dict[int, int] = {}
        for i, step in enumerate(steps):
            for _, slot in step.inputs:
                last_use[slot] = i
        kept = set(outputs.values())
        releases: list[list[int]] = [[] for _ in steps]
        for slot, i in last_use.items():
            if slot not in kept:
                releases[i].append(slot)
        plan.releases = [tuple(r) for r in releases]
        return plan

    def _emit(
        self, prefix: str, input_slots: dict[str, int], steps: list[Step], counter: Iterator[int]
    ) -> dict[str, int]:
        """Append this graph's steps (nested graphs inlined); return graph output -> slot."""
        order = self._order()
        source: dict[Port, int] = {}  # node input port -> slot
        for name, targets in self._inputs.items():
            for port in targets:
                source[port] = input_slots[name]
        consumers: dict[Port, list[Port]] = {}
        for src, dst in self._edges:
            consumers.setdefault(src, []).append(dst)
        wanted = set(consumers) | set(self._outputs.values())
        produced: dict[Port, int] = {}
        for name in order:
            node = self._nodes[name]
            ins = {port: source[(name, port)] for port in node.input_ports()}
            if isinstance(node, Graph):
                outs = node._emit(f"{prefix}{name}/", ins, steps, counter)
            else:
                outs = {port: next(counter) for port in node.output_ports() if (name, port) in wanted}
                steps.append(Step(prefix + name, node, tuple(ins.items()), tuple(outs.items())))
            for port, slot in outs.items():
                produced[(name, port)] = slot
                for dst in consumers.get((name, port), ()):
                    source[dst] = slot
        return {name: produced[port] for name, port in self._outputs.items()}

    # ------------------------------------------------------------------ running

    def setup(self) -> None:
        for node in self._nodes.values():
            node.ensure_setup()

    def close(self) -> None:
        """Release every node's resources (models, sessions)."""
        for node in self._nodes.values():
            node.release()

    def run(  # type: ignore[override]  # a graph takes one dict of inputs, not keyword ports
        self,
        inputs: Mapping[str, Any],
        executor: str | Executor = "sequential",
        profile: Profile | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Run one item: graph inputs in, graph outputs out. Raises :class:`NodeError` on failure.

        ``executor`` is ``"sequential"``, ``"task"``, ``"pipeline"`` or an :class:`Executor`;
        ``options`` go to the executor (``workers`` for task, ``queue_depth`` for pipeline).
        """
        if executor == "sequential" and not options:  # the common case, without executor set-up
            return _executors.SEQUENTIAL.run(self.plan(), inputs, profile)
        with _executors.executing(executor, **options) as ex:
            return ex.run(self.plan(), inputs, profile)

    def stream(
        self,
        items: Iterable[Mapping[str, Any]],
        executor: str | Executor = "pipeline",
        profile: Profile | None = None,
        **options: Any,
    ) -> Iterator[ItemResult]:
        """Run a stream of input dicts; yield an :class:`ItemResult` per item, in input order.

        A failing item yields a result whose ``error`` is a :class:`NodeError`; the others go on.
        Close the iterator (or iterate to the end) to stop the executor's threads.
        """
        plan = self.plan()
        with _executors.executing(executor, **options) as ex:
            yield from ex.stream(plan, items, profile)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["nodes"] = [node.to_dict() for node in self._nodes.values()]
        data["edges"] = [[f"{sn}.{sp}", f"{dn}.{dp}"] for (sn, sp), (dn, dp) in self._edges]
        data["inputs"] = {name: [f"{n}.{p}" for n, p in ports] for name, ports in self._inputs.items()}
        data["outputs"] = {name: f"{n}.{p}" for name, (n, p) in self._outputs.items()}
        return data

    @classmethod
    def _build_from_dict(cls, data: Mapping[str, Any]) -> Graph:
        graph = cls(data["name"], data.get("params"))
        try:
            for node in data.get("nodes", []):
                graph.add(Node.from_dict(node))
            for source, target in data.get("edges", []):
                graph.connect(source, target)
            for name, targets in data.get("inputs", {}).items():
                graph.input(name, *targets)
            for name, source in data.get("outputs", {}).items():
                graph.output(name, source)
        except (TypeError, ValueError, AttributeError) as exc:
            raise GraphError(f"graph '{graph.name}': malformed JSON description: {exc}") from None
        return graph

    def to_json(self, indent: int | None = 2) -> str:
        """The graph as JSON text; :meth:`from_json` rebuilds it (node types must be registered)."""
        data = {"format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION, **self.to_dict()}
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Graph:
        """Rebuild and validate a graph from :meth:`to_json` text (or the parsed dict)."""
        if isinstance(text, Mapping):
            data = text
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise GraphError(f"graph JSON is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping) or data.get("format", GRAPH_FORMAT) != GRAPH_FORMAT:
            raise GraphError(f'not a samdeploy graph (expected "format": "{GRAPH_FORMAT}")')
        version = data.get("format_version", GRAPH_FORMAT_VERSION)
        if not isinstance(version, int) or version > GRAPH_FORMAT_VERSION:
            raise GraphError(
                f"graph format version {version} is newer than this samdeploy reads: upgrade samdeploy"
            )
        graph = Node.from_dict(data)
        if not isinstance(graph, Graph):
            raise GraphError(f"the top level of a graph file must be a graph, not '{data.get('type')}'")
        graph.validate()
        return graph

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path``."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph file. Relative model paths in node params resolve against its folder."""
        from samdeploy.engine.node import resolving_paths_from

        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise GraphError(f"cannot read graph file {path}: {exc.strerror or exc}") from None
        with resolving_paths_from(path.parent):
            return cls.from_json(text)


# Imported last: the executors module imports Plan and Step from this one.
from samdeploy.engine import executors as _executors  # noqa: E402
