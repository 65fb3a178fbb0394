"""Small node types for the engine tests (importable by name, for ``run-graph --import``), a tiny
ONNX model and the leftover-thread check. A module of its own: every test folder has a ``conftest``,
so ``from conftest import ...`` finds whichever was imported first."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine import Node, register_node
from samdeploy.engine.executors import THREAD_PREFIX


@register_node("toy.Add")
class Add(Node):
    """out = sum of its ``n`` inputs ``in0..in{n-1}`` plus ``bias``."""

    @dataclass
    class Params:
        n: int = 1
        bias: float = 0.0

    outputs = {"out": float}

    def input_ports(self) -> dict[str, Any]:
        return {f"in{i}": float for i in range(self.params.n)}

    def run(self, **inputs: float) -> dict[str, Any]:
        return {"out": sum(inputs.values()) + self.params.bias}


@register_node("toy.Identity")
class Identity(Node):
    inputs = {"x": Any}
    outputs = {"x": Any}

    def run(self, x: Any) -> dict[str, Any]:
        return {"x": x}


@register_node("toy.Scale")
class Scale(Node):
    """Multiplies an array; used with real arrays for the CLI and inference tests."""

    @dataclass
    class Params:
        factor: float = 2.0

    inputs = {"x": np.ndarray}
    outputs = {"x": np.ndarray}

    def run(self, x: np.ndarray) -> dict[str, Any]:
        return {"x": (x * self.params.factor).astype(x.dtype)}


@register_node("toy.Text")
class Text(Node):
    inputs = {"text": str}
    outputs = {"length": int}

    def run(self, text: str) -> dict[str, Any]:
        return {"length": len(text)}


@register_node("toy.Step")
class Step(Node):
    """x -> x + 1 after a delay (seconds, per item index if a list), failing on chosen item values.

    Logs which items it saw and how many run at once; shared state is set by the tests.
    """

    @dataclass
    class Params:
        delays: list[float] = field(default_factory=list)
        fail_on: list[int] = field(default_factory=list)

    inputs = {"x": int}
    outputs = {"x": int}

    def __init__(self, name: str, params: Any = None) -> None:
        super().__init__(name, params)
        self.seen: list[int] = []
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def run(self, x: int) -> dict[str, Any]:
        self.seen.append(x)
        if self.params.delays:
            time.sleep(self.params.delays[x % len(self.params.delays)])
        if x in self.params.fail_on:
            raise ValueError(f"bad value {x}")
        return {"x": x + 1}


class Gate(Node):
    """Blocks in run() until ``release`` is set; counts the items that entered (not registered)."""

    inputs = {"x": Any}
    outputs = {"x": Any}

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.entered = 0

    def run(self, x: Any) -> dict[str, Any]:
        self.entered += 1
        self.release.wait()
        return {"x": x}


class Meet(Node):
    """Waits on a barrier shared with other Meet nodes: they pass only if they run at once."""

    inputs = {"x": Any}
    outputs = {"x": Any}

    def __init__(self, name: str, barrier: threading.Barrier) -> None:
        super().__init__(name)
        self.barrier = barrier

    def run(self, x: Any) -> dict[str, Any]:
        self.barrier.wait(timeout=30)
        return {"x": x}


def chain(length: int, node: type[Node] = Identity, name: str = "chain") -> Any:
    """A graph x -> n0 -> n1 -> ... -> x of ``length`` nodes taking and giving port ``x``."""
    from samdeploy.engine import Graph

    graph = Graph(name)
    for i in range(length):
        graph.add(node(f"n{i}"))
        if i:
            graph.connect(f"n{i - 1}.x", f"n{i}.x")
    graph.input("x", "n0.x")
    graph.output("x", f"n{length - 1}.x")
    return graph


HANDSHAKE_TIMEOUT_S = 10.0  # a handshake that cannot happen fails the test after this, never hangs


class Waves:
    """Barriers numbered by wave, each for a fixed number of parties; one broken breaks them all.

    A wait that times out (its partners never came: they run one after another, not at once)
    aborts every barrier, so a test on a sequential executor fails in one timeout, not one per wave.
    """

    def __init__(self, parties: dict[int, int], timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.barriers = {wave: threading.Barrier(n, timeout=timeout) for wave, n in parties.items()}

    def meet(self, wave: int) -> None:
        try:
            self.barriers[wave].wait()
        except threading.BrokenBarrierError:
            for barrier in self.barriers.values():
                barrier.abort()
            raise


class Lockstep(Node):
    """x -> x + 1 after meeting at barrier ``x`` of ``waves``; fails (after meeting) on ``fail_on``.

    In a chain of these, node k sees x = i + k for item i, so wave w gathers node 0 on item w,
    node 1 on item w - 1, ...: every node of the chain inside run() at once, each on its own item.
    """

    inputs = {"x": int}
    outputs = {"x": int}

    def __init__(self, name: str, waves: Waves, fail_on: frozenset[int] = frozenset()) -> None:
        super().__init__(name)
        self.waves = waves
        self.fail_on = fail_on

    def run(self, x: int) -> dict[str, Any]:
        self.waves.meet(x)
        if x in self.fail_on:
            raise ValueError(f"bad value {x}")
        return {"x": x + 1}


def build_tiny_model(path: Path, ir_version: int | None = None) -> Path:
    """x[batch,3] float32 -> y = x * w, sum = reduce_sum(y, axis 1) [batch,1]; w = [1, 2, 3]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["sum"], keepdims=1, axes=[1]),
    ]
    inputs = [x]
    if ir_version is not None and ir_version < 4:  # old models list their weights as inputs too
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]))
    graph = helper.make_graph(nodes, "tiny", inputs, [y, total], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = ir_version or 7
    onnx.save(model, path)
    return path


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
