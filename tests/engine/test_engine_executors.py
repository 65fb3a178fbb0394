"""Executors: concurrency of the task executor; ordering, isolation, backpressure and clean
shutdown of the pipeline. Concurrency is shown with barriers and events, never with wall time."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from engine_toys import (
    HANDSHAKE_TIMEOUT_S,
    Add,
    Gate,
    Identity,
    Lockstep,
    Meet,
    Step,
    Waves,
    chain,
    engine_threads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from samdeploy.engine import Graph, Node, PipelineExecutor, Profile, TaskExecutor, make_executor
from samdeploy.errors import GraphError, NodeError

EXECUTORS = ["sequential", "task", "pipeline"]


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    yield
    assert engine_threads() == []


def steps_graph(
    count: int, delays: list[list[float]] | None = None, fail: dict[int, list[int]] | None = None
) -> Graph:
    """x -> s0 -> s1 -> ... (each +1), with per-node delays and failing input values."""
    g = Graph("steps")
    for i in range(count):
        params = {"delays": (delays or [[]] * count)[i], "fail_on": (fail or {}).get(i, [])}
        g.add(Step(f"s{i}", params))
        if i:
            g.connect(f"s{i - 1}.x", f"s{i}.x")
    g.input("x", "s0.x")
    g.output("x", f"s{count - 1}.x")
    return g


@pytest.mark.parametrize("executor", EXECUTORS)
def test_executors_agree(executor: str) -> None:
    g = steps_graph(4)
    assert g.run({"x": 3}, executor=executor) == {"x": 7}
    results = list(g.stream([{"x": i} for i in range(20)], executor=executor))
    assert [(r.index, r.outputs, r.error) for r in results] == [(i, {"x": i + 4}, None) for i in range(20)]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_stream_isolates_failing_items(executor: str) -> None:
    # Why: every executor's stream must give a failing item its own error (naming the node and
    # the item) and go on with the others.
    g = steps_graph(3, fail={1: [3, 6]})  # s1 sees i + 1: items 2 and 5 fail there
    results = list(g.stream([{"x": i} for i in range(7)], executor=executor))
    assert [r.index for r in results] == list(range(7))
    for r in results:
        if r.index in (2, 5):
            assert r.outputs is None and not r.ok
            assert (r.error.node, r.error.item, type(r.error.cause)) == ("s1", r.index, ValueError)
        else:
            assert r.ok and r.outputs == {"x": r.index + 3}


@pytest.mark.parametrize("executor", EXECUTORS)
def test_run_raises_node_error_with_node_name(executor: str) -> None:
    g = steps_graph(3, fail={1: [11]})
    with pytest.raises(NodeError, match=r"node 's1': ValueError: bad value 11") as info:
        g.run({"x": 10}, executor=executor)
    assert info.value.node == "s1" and isinstance(info.value.cause, ValueError)


def message(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


def test_unknown_executor_and_bad_options() -> None:
    # Why: these are the user's mistakes; the whole sentence is checked, not a fragment.
    g = chain(1)
    with pytest.raises(GraphError) as info:
        g.run({"x": 1}, executor="turbo")
    assert message(info) == "unknown executor 'turbo'; choose one of sequential, task, pipeline"
    with pytest.raises(GraphError, match=r"^executor 'task': bad option: .*'queue_depth'$"):
        g.run({"x": 1}, executor="task", queue_depth=3)
    with pytest.raises(GraphError) as info:
        make_executor("pipeline", queue_depth=0)
    assert message(info) == "pipeline queue_depth must be at least 1, got 0"
    with pytest.raises(GraphError) as info:
        TaskExecutor(workers=0)
    assert message(info) == "task executor needs at least one worker, got 0"
    with PipelineExecutor() as executor, pytest.raises(GraphError) as info:
        g.run({"x": 1}, executor=executor, queue_depth=2, workers=1)
    assert message(info) == "options queue_depth, workers cannot be given with an Executor instance"


def test_executor_defaults() -> None:
    # Why: the documented defaults (CPUs plus four task workers; pipeline queues of 4 items).
    assert TaskExecutor().workers == (os.cpu_count() or 1) + 4
    assert TaskExecutor(workers=1).workers == 1
    assert PipelineExecutor().queue_depth == 4


@pytest.mark.parametrize("executor", EXECUTORS)
def test_bad_node_outputs_are_named(executor: str) -> None:
    # Why: a node that returns the wrong thing is a programming error the message must pin down.
    class Wrong(Node):
        inputs = {"x": Any}
        outputs = {"a": Any, "b": Any}

        def run(self, x: Any) -> Any:
            return {"c": x, "d": x} if x else [x]

    g = Graph("g")
    g.add(Wrong("w"))
    g.input("x", "w.x")
    g.output("a", "w.a")
    g.output("b", "w.b")
    for x, got in ((1, "keys c, d"), (0, "list")):
        with pytest.raises(NodeError) as info:
            g.run({"x": x}, executor=executor)
        assert info.value.node == "w" and info.value.item is None
        assert str(info.value.cause) == f"run() must return a dict with output ports a, b; it returned {got}"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_run_tells_bad_graph_inputs_from_node_errors(executor: str) -> None:
    # Why: run() raises GraphError for the caller's inputs and NodeError for a node that raised
    # one itself, whichever executor runs the graph.
    class Strict(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            raise GraphError("no")

    g = Graph("g")
    g.add(Strict("strict"))
    g.input("x", "strict.x")
    g.output("x", "strict.x")
    with pytest.raises(GraphError) as info:
        g.run({"y": 1}, executor=executor)
    assert not isinstance(info.value, NodeError) and "input 'x' is missing" in str(info.value)
    with pytest.raises(NodeError) as info:
        g.run({"x": 1}, executor=executor)
    assert info.value.node == "strict" and isinstance(info.value.cause, GraphError)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_node_is_set_up_once_when_some_already_were(executor: str) -> None:
    # Why: a graph nested in another may have been run (and set up) on its own before; the outer
    # graph must still set up the nodes around it, and not the inner ones again.
    inner = Graph("inner")
    inner.add(Step("a"))
    inner.input("x", "a.x")
    inner.output("x", "a.x")
    assert inner.run({"x": 0}) == {"x": 1}
    outer = Graph("outer")
    outer.add(Step("pre"))
    outer.add(inner)
    outer.add(Step("post"))
    outer.connect("pre.x", "inner.x")
    outer.connect("inner.x", "post.x")
    outer.input("x", "pre.x")
    outer.output("x", "post.x")
    assert outer.run({"x": 0}, executor=executor) == {"x": 3}
    assert [outer.nodes["pre"].setups, inner.nodes["a"].setups, outer.nodes["post"].setups] == [1, 1, 1]


def test_an_empty_graph_runs() -> None:
    for executor in EXECUTORS:
        assert Graph("empty").run({}, executor=executor) == {}


def test_task_executor_can_be_used_again_after_close() -> None:
    g = steps_graph(2)
    executor = TaskExecutor(workers=1)
    with executor:
        assert g.run({"x": 0}, executor=executor) == {"x": 2}
    assert engine_threads() == []
    with executor:
        assert g.run({"x": 5}, executor=executor) == {"x": 7}


def test_task_executor_runs_independent_nodes_at_once() -> None:
    # Both branches wait on one barrier: the run completes only if they are inside run() together.
    barrier = threading.Barrier(2)
    g = Graph("fork")
    g.add(Meet("left", barrier))
    g.add(Meet("right", barrier))
    g.input("x", "left.x", "right.x")
    g.output("l", "left.x")
    g.output("r", "right.x")
    assert g.run({"x": 1}, executor="task") == {"l": 1, "r": 1}
    with TaskExecutor(workers=2) as ex:
        for i in range(5):
            assert g.run({"x": i}, executor=ex) == {"l": i, "r": i}
        assert list(engine_threads())  # the pool lives as long as the executor


def test_task_executor_runs_the_successors_of_one_node_at_once() -> None:
    # Why: when a node makes several nodes ready, the worker keeps one and hands the others to
    # the pool; both branches must then be inside run() together (a barrier of two), and their
    # results must meet again in the node that joins them.
    barrier = threading.Barrier(2)
    g = Graph("diamond")
    g.add(Add("root", {"bias": 1}))
    g.add(Meet("left", barrier))
    g.add(Meet("right", barrier))
    g.add(Add("join", {"n": 2}))
    g.connect("root.out", "left.x")
    g.connect("root.out", "right.x")
    g.connect("left.x", "join.in0")
    g.connect("right.x", "join.in1")
    g.input("x", "root.in0")
    g.output("y", "join.out")
    with TaskExecutor(workers=2) as executor:
        assert [g.run({"x": float(i)}, executor=executor) for i in range(3)] == [
            {"y": 2.0 * (i + 1)} for i in range(3)
        ]


def test_task_executor_runs_at_most_its_workers_and_the_caller_at_once() -> None:
    # Why: ``workers`` bounds the pool; with the calling thread, workers + 1 nodes run at once at
    # most. Four independent branches each stay inside run() a moment (or until a fourth thread
    # joins them, which must not happen with one worker).
    lock = threading.Lock()
    active = peak = 0
    crowded = threading.Event()

    class Crowd(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
                if active > 2:
                    crowded.set()
            crowded.wait(0.2)
            with lock:
                active -= 1
            return {"x": x}

    g = Graph("four")
    for k in range(4):
        g.add(Crowd(f"b{k}"))
        g.output(f"y{k}", f"b{k}.x")
    g.input("x", *(f"b{k}.x" for k in range(4)))
    with TaskExecutor(workers=1) as executor:
        assert g.run({"x": 1}, executor=executor) == {f"y{k}": 1 for k in range(4)}
    assert peak <= 2 and not crowded.is_set()


def test_task_executor_stops_scheduling_after_a_failure() -> None:
    g = steps_graph(3, fail={0: [0]})
    with pytest.raises(NodeError, match="node 's0'"):
        g.run({"x": 0}, executor="task")
    assert g.nodes["s1"].seen == []


def lockstep_chain(stages: int, items: int, failing: tuple[int, int] | None = None) -> Graph:
    """A chain of :class:`Lockstep` nodes for ``items`` items; ``failing`` = (item, stage) fails there.

    Each wave's barrier waits for exactly the nodes that hold an item of that wave: a failed item
    is not run by the nodes after the one where it failed.
    """
    parties: Counter[int] = Counter()
    for k in range(stages):
        for i in range(items):
            if failing is None or not (i == failing[0] and k > failing[1]):
                parties[i + k] += 1
    waves = Waves(dict(parties))
    g = Graph("lockstep")
    for k in range(stages):
        fail = frozenset({failing[0] + k}) if failing is not None and failing[1] == k else frozenset()
        g.add(Lockstep(f"s{k}", waves, fail))
        if k:
            g.connect(f"s{k - 1}.x", f"s{k}.x")
    g.input("x", "s0.x")
    g.output("x", f"s{stages - 1}.x")
    return g


@pytest.mark.parametrize("depth", [1, 2])
def test_pipeline_runs_every_node_at_once(depth: int) -> None:
    # Why: the pipeline's point is that node k works on item i while node k+1 works on item i-1.
    # Each wave's barrier lets its nodes through only when all of them are inside run() at once,
    # so an executor that runs nodes one at a time fails here (after one timeout), not by timing.
    g = lockstep_chain(stages=3, items=8)
    stream = g.stream(({"x": i} for i in range(8)), queue_depth=depth)
    results = [next(stream)]
    # One worker per node, named after it (how the leftover-thread check finds them).
    assert sorted(t.name for t in engine_threads()) == [f"samdeploy-pipeline-s{k}" for k in range(3)]
    results += list(stream)
    assert [(r.index, r.error, r.outputs) for r in results] == [(i, None, {"x": i + 3}) for i in range(8)]


def test_pipeline_isolates_a_failure_among_items_in_flight() -> None:
    # Why: a failing item must fail alone while its neighbours are being worked on in the other
    # nodes at that very moment (the lockstep proves they are), and must not reach later nodes.
    g = lockstep_chain(stages=3, items=8, failing=(3, 1))
    results = list(g.stream({"x": i} for i in range(8)))
    assert [r.index for r in results] == list(range(8))
    for r in results:
        if r.index == 3:
            assert r.outputs is None and r.error.node == "s1" and r.error.item == 3
            assert isinstance(r.error.cause, ValueError) and "bad value 4" in str(r.error)
        else:
            assert r.error is None and r.outputs == {"x": r.index + 3}


class HoldFirst(Identity):
    """Holds item 0 until ``filled`` is set (by the source), then a moment longer unless
    ``overdrawn`` is set, then lets everything through."""

    def __init__(self, name: str, filled: threading.Event, overdrawn: threading.Event) -> None:
        super().__init__(name)
        self.filled = filled
        self.overdrawn = overdrawn
        self.holding = True

    def run(self, x: Any) -> dict[str, Any]:
        if x == 0:
            try:
                if not self.filled.wait(HANDSHAKE_TIMEOUT_S):
                    raise TimeoutError("the pipeline never read ahead while item 0 was held")
                # Room for a pipeline that holds more than it should to show it. Not a timing
                # assertion: a correct pipeline never overdraws, however long it is left.
                self.overdrawn.wait(OVERDRAW_GRACE_S)
            finally:
                self.holding = False
        return {"x": x}


OVERDRAW_GRACE_S = 0.3


@pytest.mark.parametrize(("stages", "depth"), [(1, 1), (3, 1), (3, 2), (2, None)])
def test_pipeline_holds_exactly_its_capacity_while_the_last_node_blocks(
    stages: int, depth: int | None
) -> None:
    # Why: the memory bound. While the last node holds item 0, every queue in front of a node
    # fills (depth items each) and every other node holds one item: stages * (depth + 1) items
    # in all. The source is read up to exactly that (item 0 is released only then, so an executor
    # that does not read ahead fails), and not one item further while item 0 is held (a queue
    # larger than its depth fails).
    executor = PipelineExecutor() if depth is None else PipelineExecutor(queue_depth=depth)
    depth = executor.queue_depth  # None: the default depth, whose capacity is checked too
    capacity = stages * (depth + 1)
    filled, overdraw = threading.Event(), threading.Event()
    g = Graph("held")
    for k in range(stages - 1):
        g.add(Identity(f"n{k}"))
    hold = g.add(HoldFirst("hold", filled, overdraw))
    names = [*g.nodes]
    for before, after in itertools.pairwise(names):
        g.connect(f"{before}.x", f"{after}.x")
    g.input("x", f"{names[0]}.x")
    g.output("x", "hold.x")
    taken = 0
    overdrawn: list[int] = []

    def source() -> Iterator[dict[str, Any]]:
        nonlocal taken
        for i in range(capacity + 20):
            taken += 1
            if taken > capacity and hold.holding:
                overdrawn.append(i)
                overdraw.set()
            if taken == capacity:
                filled.set()
            yield {"x": i}

    bound = executor.max_in_flight(stages)
    worst = 0
    for done, result in enumerate(g.stream(source(), executor=executor), start=1):
        worst = max(worst, taken - done)
        # In input order with its own value, though the first nodes finished later items first.
        assert (result.index, result.error, result.outputs) == (done - 1, None, {"x": done - 1})
    assert done == capacity + 20 and overdrawn == []
    # The documented bound is this capacity plus a full output queue.
    assert bound == capacity + depth and worst <= bound


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(0, 150),
    nodes=st.integers(1, 4),
    depth=st.integers(1, 5),
    delays=st.lists(
        st.lists(st.sampled_from([0.0, 0.0, 0.0001, 0.0005]), min_size=1, max_size=5), min_size=4, max_size=4
    ),
    failing=st.sets(st.integers(0, 160), max_size=10),
    failing_node=st.integers(0, 3),
)
def test_pipeline_keeps_order_loses_nothing_and_isolates_failures(
    count: int, nodes: int, depth: int, delays: list[list[float]], failing: set[int], failing_node: int
) -> None:
    failing_node %= nodes
    # Node k sees value i + k for item i; make it fail on the chosen items.
    g = steps_graph(nodes, delays=delays[:nodes], fail={failing_node: [i + failing_node for i in failing]})
    results = list(g.stream(({"x": i} for i in range(count)), queue_depth=depth))
    assert [r.index for r in results] == list(range(count))
    for r in results:
        if r.index in failing:
            assert r.outputs is None and r.error is not None
            assert r.error.node == f"s{failing_node}" and r.error.item == r.index
            assert isinstance(r.error.cause, ValueError)
        else:
            assert r.error is None and r.outputs == {"x": r.index + nodes}
    # Nodes after the failing one never saw the failed items.
    for k in range(failing_node + 1, nodes):
        assert len(g.nodes[f"s{k}"].seen) == count - len([i for i in failing if i < count])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_bad_item_inputs_fail_alone(executor: str) -> None:
    g = steps_graph(2)
    results = list(g.stream([{"x": 0}, {"y": 1}, {"x": 2}], executor=executor))
    assert [(r.index, r.ok) for r in results] == [(0, True), (1, False), (2, True)]
    assert results[1].error.item == 1
    assert results[1].error.node == "steps" and "input 'x' is missing" in str(results[1].error)


class Payload:
    """A large intermediate value, watched through a weak reference."""


def test_pipeline_drops_a_value_once_no_later_node_needs_it() -> None:
    # Why: the pipeline's memory promise. An item's intermediate value (an image, an embedding)
    # is let go once the last node that reads it is done, not carried down the rest of the line
    # with its item: when the last node sees item i, item i's payload is already gone.
    refs: dict[int, weakref.ref] = {}
    gone: list[bool] = []

    class Make(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            payload = Payload()
            refs[x] = weakref.ref(payload)
            return {"x": (x, payload)}

    class Use(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            return {"x": x[0]}

    class Look(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            gone.append(refs[x]() is None)
            return {"x": x}

    g = Graph("g")
    for node in (Make("make"), Use("use"), Look("look")):
        g.add(node)
    g.connect("make.x", "use.x")
    g.connect("use.x", "look.x")
    g.input("x", "make.x")
    g.output("x", "look.x")
    assert [r.outputs for r in g.stream({"x": i} for i in range(6))] == [{"x": i} for i in range(6)]
    assert gone == [True] * 6


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_interrupt_inside_a_node_ends_the_stream(executor: str) -> None:
    # Why: Ctrl-C (or SystemExit) inside a node is not an item's failure: the stream must stop
    # and raise it in the consumer, with no worker left behind (checked after every test).
    class Interrupted(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            if x == 3:
                raise KeyboardInterrupt
            return {"x": x}

    g = Graph("g")
    g.add(Identity("a"))
    g.add(Interrupted("b"))
    g.connect("a.x", "b.x")
    g.input("x", "a.x")
    g.output("x", "b.x")
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for result in g.stream(({"x": i} for i in itertools.count()), executor=executor):
            seen.append(result.index)
    # The pipeline stops at once: items already done may go unyielded, never out of order.
    if executor == "pipeline":
        assert seen == list(range(len(seen))) and len(seen) <= 3
    else:
        assert seen == [0, 1, 2]


@pytest.mark.parametrize("depth", [1, 3])
def test_pipeline_memory_is_bounded_with_a_slow_consumer(depth: int) -> None:
    taken = 0

    def source() -> Iterator[dict[str, Any]]:
        nonlocal taken
        for i in range(10_000):
            taken += 1
            yield {"x": i}

    g = chain(3)
    bound = PipelineExecutor(depth).max_in_flight(len(g.plan().steps))
    worst = last = 0
    for done, result in enumerate(g.stream(source(), queue_depth=depth), start=1):
        worst, last = max(worst, taken - done), result.index
        if done % 500 == 0:
            time.sleep(0.005)  # a slow consumer: the pipeline must wait, not pile items up
    assert last == 9_999
    assert worst <= bound


@pytest.mark.parametrize("how", ["close", "break", "consumer raises", "source raises", "KeyboardInterrupt"])
def test_pipeline_shuts_down_cleanly(how: str) -> None:
    def source() -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            if how == "source raises" and i == 50:
                raise OSError("camera unplugged")
            if how == "KeyboardInterrupt" and i == 50:
                raise KeyboardInterrupt
            yield {"x": i}

    g = steps_graph(4, delays=[[0.0, 0.0002]] * 4, fail={2: [7]})
    results = g.stream(source(), queue_depth=2)
    if how == "close":
        assert [next(results).index for _ in range(10)] == list(range(10))
        results.close()
    elif how == "break":
        for r in results:
            if r.index == 20:
                break
        del results
    elif how == "consumer raises":
        with pytest.raises(RuntimeError):
            for r in results:
                if r.index == 20:
                    raise RuntimeError("consumer gave up")
        del results
    elif how == "source raises":
        with pytest.raises(OSError, match="camera unplugged"):
            list(results)
    else:
        with pytest.raises(KeyboardInterrupt):
            list(results)


def test_pipeline_stops_while_a_node_is_blocked_downstream() -> None:
    g = Graph("g")
    g.add(Identity("a"))
    gate = g.add(Gate("gate"))
    g.connect("a.x", "gate.x")
    g.input("x", "a.x")
    g.output("x", "gate.x")
    results = g.stream(({"x": i} for i in itertools.count()), queue_depth=1)
    threading.Timer(0.1, gate.release.set).start()
    next(results)
    results.close()


def test_setup_failure_is_raised_before_any_thread_starts() -> None:
    class Broken(Identity):
        def setup(self) -> None:
            raise OSError("no such model")

    g = Graph("g")
    g.add(Broken("broken"))
    g.input("x", "broken.x")
    g.output("x", "broken.x")
    for executor in EXECUTORS:
        with pytest.raises(NodeError, match="node 'broken': OSError: no such model"):
            list(g.stream([{"x": 1}], executor=executor))
        with pytest.raises(NodeError, match="node 'broken'"):
            g.run({"x": 1}, executor=executor)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_profile_counts_every_node(executor: str) -> None:
    # Why: the profile's figures must be what they say: a count per node and item, node times
    # inside the stream's wall time, and that wall time inside the caller's own measurement.
    g = steps_graph(3)
    profile = Profile()
    start = time.perf_counter()
    list(g.stream([{"x": i} for i in range(25)], executor=executor, profile=profile))
    elapsed_s = time.perf_counter() - start
    assert [(s.node, s.count) for s in profile.stats()] == [("s0", 25), ("s1", 25), ("s2", 25)]
    assert profile.items == 25 and 0 < profile.wall_s <= elapsed_s
    # Each node runs one item at a time; without the pipeline, one node at a time.
    assert all(s.total_ms <= profile.wall_s * 1e3 for s in profile.stats())
    if executor != "pipeline":
        assert sum(s.total_ms for s in profile.stats()) <= profile.wall_s * 1e3
    single = Profile()
    start = time.perf_counter()
    for _ in range(2):
        g.run({"x": 0}, executor=executor, profile=profile)
        g.run({"x": 0}, executor=executor, profile=single)
    assert profile.items == 27 and profile["s0"].count == 27
    assert single.items == 2 and 0 < single.wall_s <= time.perf_counter() - start
    table = profile.table()
    assert table.splitlines()[0].split() == [
        "node",
        "count",
        "total",
        "ms",
        "mean",
        "ms",
        "p50",
        "ms",
        "p95",
        "ms",
    ]
    assert "s2" in table and "27 item(s)" in table


def test_profile_percentiles() -> None:
    profile = Profile()
    for ms in range(1, 101):
        profile.record("n", ms / 1000)
    stats = profile["n"]
    assert stats.count == 100
    assert stats.total_ms == pytest.approx(5050)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p95_ms == pytest.approx(95.05)


def test_run_is_never_concurrent_for_one_node() -> None:
    active = 0
    overlaps = 0

    class Exclusive(Identity):
        def run(self, x: Any) -> dict[str, Any]:
            nonlocal active, overlaps
            active += 1
            overlaps += active > 1
            time.sleep(0.0005)
            active -= 1
            return {"x": x}

    g = Graph("g")
    g.add(Exclusive("only"))
    g.input("x", "only.x")
    g.output("x", "only.x")
    threads = [threading.Thread(target=lambda: [g.run({"x": i}) for i in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == 0


def test_nested_graph_nodes_are_pipeline_stages() -> None:
    inner = chain(2, name="inner")
    outer = Graph("outer")
    outer.add(inner)
    outer.input("x", "inner.x")
    outer.output("x", "inner.x")
    with contextlib.closing(outer.stream({"x": i} for i in range(5))) as results:
        assert [r.outputs["x"] for r in results] == list(range(5))
    assert [s.name for s in outer.plan().steps] == ["inner/n0", "inner/n1"]
