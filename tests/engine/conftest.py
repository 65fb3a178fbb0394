"""Fixtures of the engine tests: a tiny ONNX model built with onnx.helper, leftover-thread checks."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # engine_toys, importable by tests and the CLI

import engine_toys  # noqa: E402,F401  (registers the toy node types)

from samdeploy.engine.executors import THREAD_PREFIX  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engine") / "tiny.onnx")


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
