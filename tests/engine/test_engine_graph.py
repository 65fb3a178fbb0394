"""Graphs: building, validation errors, topological order, nesting, JSON round trip."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from engine_toys import Add, Identity, Scale, Step, Text, chain
from hypothesis import given, settings
from hypothesis import strategies as st

from samdeploy.engine import Graph, Node, node_type, register_node
from samdeploy.engine.node import type_compatible
from samdeploy.errors import GraphError, NodeError


def test_params_from_dict_instance_or_none() -> None:
    assert Add("a", {"n": 2}).params == Add.Params(n=2)
    assert Add("a", Add.Params(bias=1.5)).params.bias == 1.5
    assert Add("a").params == Add.Params()
    with pytest.raises(GraphError, match="unknown params colour"):
        Add("a", {"colour": 1})
    with pytest.raises(GraphError, match="params must be"):
        Add("a", [1])


@pytest.mark.parametrize("name", ["", "a.b", "a/b", 3])
def test_bad_node_names(name: Any) -> None:
    with pytest.raises(GraphError, match="bad node name"):
        Identity(name)


def test_registry() -> None:
    assert node_type("toy.Add") is Add
    with pytest.raises(GraphError, match="unknown node type 'toy.Nope'.*toy.Add"):
        node_type("toy.Nope")
    with pytest.raises(GraphError, match="already registered"):

        @register_node("toy.Add")
        class Other(Node):
            pass


# ---------------------------------------------------------------- validation errors, one by one


def test_duplicate_node_name() -> None:
    g = Graph("g")
    g.add(Identity("a"))
    with pytest.raises(GraphError, match="already has a node named 'a'"):
        g.add(Identity("a"))


def test_connect_unknown_node_and_port() -> None:
    g = Graph("g")
    g.add(Identity("a"))
    g.add(Identity("b"))
    with pytest.raises(GraphError, match="no node 'c'"):
        g.connect("a.x", "c.x")
    with pytest.raises(GraphError, match="node 'a' has no output port 'y'"):
        g.connect("a.y", "b.x")
    with pytest.raises(GraphError, match="node 'b' has no input port 'z'"):
        g.connect("a.x", "b.z")
    with pytest.raises(GraphError, match="'node.port'"):
        g.connect("a", "b.x")


def test_unfed_input() -> None:
    g = Graph("g")
    g.add(Add("sum", {"n": 2}))
    g.input("a", "sum.in0")
    with pytest.raises(GraphError, match=r"input port 'sum.in1' is not fed"):
        g.validate()


def test_input_fed_twice() -> None:
    g = Graph("g")
    g.add(Identity("a"))
    g.add(Identity("b"))
    g.input("x", "a.x", "b.x")
    g.connect("a.x", "b.x")
    with pytest.raises(
        GraphError, match=r"input port 'b.x' is fed more than once: by graph input 'x', 'a.x'"
    ):
        g.validate()


def test_type_mismatch_on_edge() -> None:
    g = Graph("g")
    g.add(Text("text"))
    g.add(Scale("scale"))
    g.input("t", "text.text")
    g.connect("text.length", "scale.x")
    with pytest.raises(
        GraphError, match=r"type mismatch: 'text.length' gives int but 'scale.x' takes ndarray"
    ):
        g.validate()


def test_type_mismatch_on_graph_input() -> None:
    g = Graph("g")
    g.add(Text("text"))
    g.add(Scale("scale"))
    g.input("v", "text.text", "scale.x")
    with pytest.raises(GraphError, match=r"graph input 'v'.*'scale.x'"):
        g.validate()


def test_cycle_is_named() -> None:
    g = Graph("g")
    g.add(Add("a", {"n": 2}))
    g.add(Identity("b"))
    g.input("x", "a.in0")
    g.connect("a.out", "b.x")
    g.connect("b.x", "a.in1")
    with pytest.raises(GraphError, match=r"cycle: .*a.out => b.x.*b.x => a.in1"):
        g.validate()


def test_duplicate_output_name() -> None:
    g = chain(1)
    with pytest.raises(GraphError, match="already has an output named 'x'"):
        g.output("x", "n0.x")


def test_error_in_nested_graph_names_it() -> None:
    inner = Graph("inner")
    inner.add(Add("sum", {"n": 2}))
    inner.input("a", "sum.in0")
    inner.output("out", "sum.out")
    outer = Graph("outer")
    outer.add(inner)
    outer.input("a", "inner.a")
    with pytest.raises(GraphError, match=r"in nested graph 'inner': input port 'sum.in1' is not fed"):
        outer.validate()


def test_run_checks_inputs() -> None:
    g = chain(2)
    with pytest.raises(GraphError, match="input 'x' is missing"):
        g.run({})
    with pytest.raises(GraphError, match="has no input 'y'"):
        g.run({"x": 1, "y": 2})
    with pytest.raises(GraphError, match="input 'x' is missing; has no input 'y'; it takes x"):
        g.run({"y": 2})


def test_bad_node_output_is_reported() -> None:
    class Forgetful(Node):
        inputs = {"x": Any}
        outputs = {"x": Any}

        def run(self, x: Any) -> dict[str, Any]:
            return {"y": x}

    g = Graph("g")
    g.add(Forgetful("f"))
    g.input("x", "f.x")
    g.output("x", "f.x")
    with pytest.raises(
        NodeError, match="node 'f'.*must return a dict with output ports x; it returned keys y"
    ):
        g.run({"x": 1})


def test_type_compatible() -> None:
    assert type_compatible(Any, int) and type_compatible(int, Any)
    assert type_compatible(bool, int) and not type_compatible(int, bool)
    assert type_compatible(tuple[int, int], tuple)
    assert type_compatible(int, int | None) and not type_compatible(int | None, int)
    assert not type_compatible(str, np.ndarray)


# ---------------------------------------------------------------- order, nesting


def test_setup_runs_once_before_first_run() -> None:
    g = Graph("g")
    step = g.add(Step("s"))
    g.input("x", "s.x")
    g.output("x", "s.x")
    assert step.setups == 0
    for i in range(3):
        assert g.run({"x": i}) == {"x": i + 1}
    assert step.setups == 1
    g.close()
    g.run({"x": 0})
    assert step.setups == 2


def nested_graph() -> Graph:
    """outer: x -> pre(+1) -> inner[ a(+10), b(+100) -> sum ] -> post(+1000) ; out = post, side = inner.sum."""
    inner = Graph("inner")
    inner.add(Add("a", {"bias": 10}))
    inner.add(Add("b", {"bias": 100}))
    inner.add(Add("sum", {"n": 2}))
    inner.input("v", "a.in0", "b.in0")
    inner.connect("a.out", "sum.in0")
    inner.connect("b.out", "sum.in1")
    inner.output("total", "sum.out")
    outer = Graph("outer")
    outer.add(Add("pre", {"bias": 1}))
    outer.add(inner)
    outer.add(Add("post", {"bias": 1000}))
    outer.input("x", "pre.in0")
    outer.connect("pre.out", "inner.v")
    outer.connect("inner.total", "post.in0")
    outer.output("out", "post.out")
    outer.output("side", "inner.total")
    return outer


@pytest.mark.parametrize("executor", ["sequential", "task", "pipeline"])
def test_nested_graph_runs_inlined(executor: str) -> None:
    g = nested_graph()
    assert g.input_ports() == {"x": float}
    assert g.nodes["inner"].output_ports() == {"total": float}
    # (x+1+10) + (x+1+100) = 2x+112
    assert g.run({"x": 1.0}, executor=executor) == {"out": 1114.0, "side": 114.0}
    assert [s.name for s in g.plan().steps] == ["pre", "inner/a", "inner/b", "inner/sum", "post"]


def test_changing_a_nested_graph_recompiles_its_parent() -> None:
    g = nested_graph()
    assert g.run({"x": 0.0})["side"] == 112.0
    inner = g.nodes["inner"]
    inner.add(Add("extra", {"bias": 5}))
    inner.connect("sum.out", "extra.in0")
    inner.output("more", "extra.out")
    g.output("more", "inner.more")
    assert g.run({"x": 0.0})["more"] == 117.0


@st.composite
def random_dags(draw: st.DrawFn) -> tuple[Graph, list[list[int]]]:
    """A random DAG of Add nodes; node i adds the graph input (-1) and/or earlier nodes."""
    count = draw(st.integers(1, 12))
    feeds: list[list[int]] = []
    for i in range(count):
        feeds.append(draw(st.lists(st.integers(-1, i - 1), min_size=1, max_size=3)))
    order = draw(st.permutations(range(count)))  # insertion order differs from dependency order
    g = Graph("dag")
    for i in order:
        g.add(Add(f"n{i}", {"n": len(feeds[i]), "bias": float(i)}))
    for i, sources in enumerate(feeds):
        for port, source in enumerate(sources):
            if source < 0:
                g.input("x", f"n{i}.in{port}")
            else:
                g.connect(f"n{source}.out", f"n{i}.in{port}")
    for i in range(count):
        g.output(f"o{i}", f"n{i}.out")
    return g, feeds


def expected(feeds: list[list[int]], x: float) -> dict[str, float]:
    values: list[float] = []
    for i, sources in enumerate(feeds):
        values.append(sum(x if s < 0 else values[s] for s in sources) + i)
    return {f"o{i}": v for i, v in enumerate(values)}


@settings(max_examples=40, deadline=None)
@given(random_dags(), st.sampled_from(["sequential", "task"]))
def test_random_dags_topological_order_and_results(dag: tuple[Graph, list[list[int]]], executor: str) -> None:
    g, feeds = dag
    plan = g.plan()
    position = {step.name: k for k, step in enumerate(plan.steps)}
    for i, sources in enumerate(feeds):
        for s in sources:
            if s >= 0:
                assert position[f"n{s}"] < position[f"n{i}"]
    assert g.run({"x": 0.5}, executor=executor) == expected(feeds, 0.5)


@settings(max_examples=30, deadline=None)
@given(random_dags())
def test_random_dags_json_round_trip(dag: tuple[Graph, list[list[int]]]) -> None:
    g, feeds = dag
    text = g.to_json()
    again = Graph.from_json(text)
    assert again.to_json() == text
    assert again.run({"x": 2.0}) == expected(feeds, 2.0)


def test_nested_json_round_trip(tmp_path: Any) -> None:
    g = nested_graph()
    data = json.loads(g.to_json())
    assert data["format"] == "samdeploy-graph" and data["nodes"][1]["type"] == "engine.Graph"
    loaded = Graph.load(g.save(tmp_path / "g.json"))
    assert loaded.to_json() == g.to_json()
    assert loaded.run({"x": 1.0}) == g.run({"x": 1.0})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a samdeploy graph"),
        ('{"format_version": 99, "type": "engine.Graph", "name": "g"}', "newer"),
        ('{"type": "toy.Identity", "name": "i"}', "must be a graph"),
        (
            '{"type": "engine.Graph", "name": "g", "nodes": [{"type": "toy.Nope", "name": "n"}]}',
            "unknown node type",
        ),
        ('{"type": "engine.Graph", "name": "g", "edges": [["a.x"]]}', "malformed"),
        ('{"type": "engine.Graph", "name": "g", "nodes": [{"name": "n"}]}', "with 'type' and 'name'"),
    ],
)
def test_bad_json(text: str, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        Graph.from_json(text)


def test_unregistered_node_cannot_be_saved() -> None:
    class Local(Node):
        pass

    class Derived(Add):  # inherits a registered type name, but is not that type
        pass

    g = Graph("g")
    g.add(Local("local"))
    with pytest.raises(GraphError, match="not registered"):
        g.to_json()
    g = Graph("g")
    g.add(Derived("derived"))
    with pytest.raises(GraphError, match="not registered"):
        g.to_json()
