"""Inference backends and the Inference node, on a tiny ONNX model built by the tests."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from engine_toys import Scale, build_tiny_model

from samdeploy.engine import Graph, Inference, available_backends, create_backend
from samdeploy.engine import inference as inference_module
from samdeploy.engine.backends import OpenVinoBackend, shared_backend
from samdeploy.engine.backends.base import unchanging
from samdeploy.engine.backends.onnx_header import read_onnx_specs
from samdeploy.engine.inference import SOLO_ALLOWED, RunCount
from samdeploy.errors import BackendError, NodeError
from samdeploy.package import TensorSpec

X = np.array([[1, 1, 1], [0, 1, 2]], np.float32)
Y = X * np.array([1, 2, 3], np.float32)
SUM = Y.sum(axis=1, keepdims=True)

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_onnxruntime_is_always_available() -> None:
    assert "onnxruntime" in available_backends()


def test_specs_run_and_output_subset(tiny_model: Path) -> None:
    backend = create_backend("onnxruntime", tiny_model)
    assert backend.inputs == (TensorSpec("x", ("batch", 3), "float32"),)
    assert backend.outputs == (
        TensorSpec("y", ("batch", 3), "float32"),
        TensorSpec("sum", ("batch", 1), "float32"),
    )
    out = backend.run({"x": X})
    assert list(out) == ["y", "sum"]
    np.testing.assert_allclose(out["y"], Y)
    np.testing.assert_allclose(out["sum"], SUM)
    assert list(backend.run({"x": X}, ["sum"])) == ["sum"]


def test_header_reader_matches_the_runtime(tiny_model: Path, tmp_path: Path) -> None:
    backend = create_backend("onnxruntime", tiny_model)
    assert read_onnx_specs(tiny_model) == (backend.inputs, backend.outputs)
    # IR version 3 models list their weights as graph inputs: they are not ports.
    old = build_tiny_model(tmp_path / "old.onnx", ir_version=3)
    assert [s.name for s in read_onnx_specs(old)[0]] == ["x"]


def test_header_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="model file not found"):
        read_onnx_specs(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01not a model")
    with pytest.raises(BackendError, match="junk.onnx"):
        read_onnx_specs(tmp_path / "junk.onnx")


def test_bad_feeds_and_outputs_are_named(tiny_model: Path) -> None:
    backend = create_backend("onnxruntime", tiny_model)
    with pytest.raises(BackendError, match="missing x.*unknown z"):
        backend.run({"z": X})
    with pytest.raises(BackendError, match="has no output nope; its outputs: sum, y"):
        backend.run({"x": X}, ["nope"])
    with pytest.raises(BackendError, match="onnxruntime failed on tiny.onnx"):
        backend.run({"x": X.astype(np.float64)})


def test_options(tiny_model: Path) -> None:
    backend = create_backend(
        "onnxruntime",
        tiny_model,
        providers=["cpu"],
        threads=1,
        inter_op_threads=2,
        optimization_level="basic",
    )
    assert backend.providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(backend.run({"x": X})["sum"], SUM)
    with pytest.raises(BackendError, match="optimization_level 'max'"):
        create_backend("onnxruntime", tiny_model, optimization_level="max")
    with pytest.raises(BackendError, match="does not take device"):
        create_backend("onnxruntime", tiny_model, device="GPU")


def test_unavailable_provider_names_the_available_ones(tiny_model: Path) -> None:
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT")
    with pytest.raises(
        BackendError, match=r"TensorrtExecutionProvider is not available.*available: .*CPUExecutionProvider"
    ):
        create_backend("onnxruntime", tiny_model, providers=["tensorrt"])
    with pytest.raises(BackendError, match="not available"):
        create_backend("onnxruntime", tiny_model, providers=["NoSuchExecutionProvider"])


def test_unknown_backend_and_missing_model(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"unknown backend 'tensorflow'.*installed: onnxruntime"):
        create_backend("tensorflow", tiny_model)
    with pytest.raises(BackendError, match="model file not found"):
        create_backend("onnxruntime", tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(BackendError, match="cannot load"):
        create_backend("onnxruntime", tmp_path / "junk.onnx")


def test_openvino_missing_names_installed_backends(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenVinoBackend, "is_available", classmethod(lambda cls: False))
    assert "openvino" not in available_backends()
    with pytest.raises(
        BackendError, match=r"backend 'openvino' is not installed.*installed backends: onnxruntime"
    ):
        create_backend("openvino", tiny_model)
    with pytest.raises(BackendError, match="not installed"):
        Inference("m", {"model": str(tiny_model), "backend": "openvino"})


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (the openvino extra)")
def test_openvino_backend(tiny_model: Path) -> None:
    backend = create_backend("openvino", tiny_model, device="CPU", threads=1)
    assert [s.name for s in backend.inputs] == ["x"]
    assert [s.name for s in backend.outputs] == ["y", "sum"]
    np.testing.assert_allclose(backend.run({"x": X})["sum"], SUM)
    assert list(backend.run({"x": X}, ["y"])) == ["y"]
    with pytest.raises(BackendError, match="device 'NPU9'.*available: .*CPU"):
        create_backend("openvino", tiny_model, device="NPU9")
    with pytest.raises(BackendError, match="does not take providers"):
        create_backend("openvino", tiny_model, providers=["cuda"])
    g = Graph("g")
    g.add(Inference("m", {"model": str(tiny_model), "backend": "openvino"}))
    g.input("x", "m.x")
    g.output("sum", "m.sum")
    np.testing.assert_allclose(g.run({"x": X}, executor="task")["sum"], SUM)


def test_unchanging_arrays() -> None:
    """Why: the memo and OpenVINO's kept inputs take an array's identity for its contents; that
    holds only when nothing, not even a writable array or buffer under it, can change it."""
    owned = np.ones(3, np.float32)
    assert not unchanging(owned)
    owned.setflags(write=False)
    assert unchanging(owned) and unchanging(owned[1:])
    base = np.ones(3, np.float32)
    view = base[1:]
    view.setflags(write=False)
    assert not unchanging(view)  # base[1] = 5 changes it
    assert unchanging(np.frombuffer(b"\0" * 12, np.float32))  # bytes are immutable
    buffer = np.frombuffer(bytearray(12), np.float32)
    buffer.setflags(write=False)
    assert not unchanging(buffer)  # the bytearray under it is not
    assert not unchanging([1.0, 2.0]) and not unchanging(3.0)


def _two_input_model(path: Path) -> Path:
    """x[batch,3] + z[batch,3] -> out."""
    import onnx
    from onnx import TensorProto, helper

    ports = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("x", "z", "out")]
    graph = helper.make_graph([helper.make_node("Add", ["x", "z"], ["out"])], "two", ports[:2], ports[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class _SpyRequests:
    """Stands in for a compiled OpenVINO model: records which inputs each inference was given."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.given: list[set[str]] = []

    def create_infer_request(self):
        spy, request = self, self.compiled.create_infer_request()

        class Request:
            def infer(self, inputs):
                spy.given.append(set(inputs))
                return request.infer(inputs)

            def get_tensor(self, name):
                return request.get_tensor(name)

        return Request()


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (the openvino extra)")
def test_openvino_copies_an_unchanging_input_once(tmp_path: Path) -> None:
    """Why: a decoder on OpenVINO is called click after click with the same read-only image
    features (about 10 MB for SAM); copying them into the request every click cost 5% of a click.
    The copy may be skipped only for the very array given last time, and only if it cannot change."""
    backend = create_backend("openvino", _two_input_model(tmp_path / "two.onnx"))
    spy = backend._compiled = _SpyRequests(backend._compiled)
    features = np.array(X)
    features.setflags(write=False)
    click = np.full_like(X, 10.0)

    def run(x: np.ndarray, z: np.ndarray) -> None:
        np.testing.assert_array_equal(backend.run({"x": x, "z": z})["out"], x + z)

    run(features, click)
    run(features, click)  # the click is writable: given again
    click += 1
    run(features, click)
    assert spy.given == [{"x", "z"}, {"z"}, {"z"}]
    other = np.array(X * 3)
    other.setflags(write=False)
    run(other, click)
    run(features, click)  # the request now holds other's copy: features again
    assert spy.given[3:] == [{"x", "z"}, {"x", "z"}]
    both = np.array(click)
    both.setflags(write=False)
    run(features, both)
    run(features, both)
    assert spy.given[-1] == set()  # nothing new to copy at all
    base = np.array(X)
    view = base[:]
    view.setflags(write=False)
    run(view, click)
    base += 7  # the read-only view changes with its writable base
    run(view, click)
    assert spy.given[-1] == {"x", "z"}
    with pytest.raises(BackendError, match="OpenVINO failed"):
        backend.run({"x": features, "z": np.ones((2, 4), np.float32)})
    run(features, both)  # after a failure nothing held is trusted
    assert spy.given[-1] == {"x", "z"}
    elsewhere: list[set[str]] = []
    thread = threading.Thread(target=lambda: (run(features, both), elsewhere.append(spy.given[-1])))
    thread.start()
    thread.join()
    assert elsewhere == [{"x", "z"}]  # another thread's request holds nothing yet


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (the openvino extra)")
def test_openvino_precision(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openvino.properties.hint as hints

    from samdeploy.engine.backends import openvino as ov_backend

    # f32 unless asked: OpenVINO alone would pick bf16 on CPUs that have it, and silently differ.
    backend = create_backend("openvino", tiny_model)
    assert backend.precision == "f32"
    assert str(backend._compiled.get_property(hints.inference_precision)) == "<Type: 'float32'>"
    with pytest.raises(BackendError, match="unknown OpenVINO precision 'f8'"):
        create_backend("openvino", tiny_model, precision="f8")
    assert OpenVinoBackend.supports_precision("f32")
    monkeypatch.setattr(ov_backend, "device_supports", lambda precision, device="CPU": precision == "f32")
    assert not OpenVinoBackend.supports_precision("bf16")
    with pytest.raises(BackendError, match="no native bf16 arithmetic"):
        create_backend("openvino", tiny_model, precision="bf16")
    node = Inference("m", {"model": str(tiny_model), "backend": "openvino", "precision": "bf16"})
    with pytest.raises(BackendError, match="no native bf16"):
        node.setup()  # the model loads here
    with pytest.raises(BackendError, match="does not take precision"):
        create_backend("onnxruntime", tiny_model, precision="bf16")


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed (the openvino extra)")
def test_openvino_refuses_a_preloaded_tcmalloc(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    with pytest.raises(BackendError, match="OpenVINO crashes under a preloaded tcmalloc"):
        create_backend("openvino", tiny_model)


def test_shared_backend_loads_a_file_once(tiny_model: Path) -> None:
    a = shared_backend("onnxruntime", tiny_model)
    assert shared_backend("onnxruntime", str(tiny_model)) is a
    assert shared_backend("onnxruntime", tiny_model, threads=1) is not a


def test_inference_node_ports_come_from_the_model(tiny_model: Path) -> None:
    node = Inference("m", {"model": str(tiny_model)})
    assert node.input_ports() == {"x": np.ndarray}
    assert node.output_ports() == {"y": np.ndarray, "sum": np.ndarray}
    assert node._backend is None  # nothing loaded until the first run
    subset = Inference("m", {"model": str(tiny_model), "outputs": ["sum"]})
    assert subset.output_ports() == {"sum": np.ndarray}
    with pytest.raises(BackendError, match="has no output nope"):
        Inference("m", {"model": str(tiny_model), "outputs": ["nope"]})
    with pytest.raises(BackendError, match="params.model"):
        Inference("m")
    with pytest.raises(BackendError, match="model file not found"):
        Inference("m", {"model": "nowhere.onnx"})
    with pytest.raises(BackendError, match="does not take device"):
        Inference("m", {"model": str(tiny_model), "device": "GPU"})


def inference_graph(model: Path, **params: object) -> Graph:
    g = Graph("infer")
    g.add(Scale("scale", {"factor": 2.0}))
    g.add(Inference("model", {"model": str(model), **params}))
    g.connect("scale.x", "model.x")
    g.input("x", "scale.x")
    g.output("sum", "model.sum")
    return g


@pytest.mark.parametrize("executor", ["sequential", "task", "pipeline"])
def test_inference_in_a_graph(tiny_model: Path, executor: str) -> None:
    g = inference_graph(tiny_model, threads=1)
    np.testing.assert_allclose(g.run({"x": X}, executor=executor)["sum"], 2 * SUM)
    results = list(g.stream([{"x": X * i} for i in range(6)], executor=executor))
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.outputs["sum"], 2 * i * SUM)


def test_two_inference_nodes_share_one_model(tiny_model: Path) -> None:
    g = Graph("twice")
    first = g.add(Inference("first", {"model": str(tiny_model)}))
    second = g.add(Inference("second", {"model": str(tiny_model)}))
    g.input("x", "first.x", "second.x")
    g.output("a", "first.sum")
    g.output("b", "second.sum")
    out = g.run({"x": X}, executor="task")
    np.testing.assert_allclose(out["a"], out["b"])
    assert first.backend is second.backend


def test_inference_failure_is_a_node_error(tiny_model: Path) -> None:
    g = inference_graph(tiny_model)
    with pytest.raises(NodeError, match="node 'model'.*BackendError"):
        g.run({"x": np.ones((2, 4), np.float32)})


def test_inference_json_round_trip_with_relative_model_path(tiny_model: Path, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model.onnx")
    g = inference_graph(model)
    g.nodes["model"].params.model = "model.onnx"  # relative to the graph file, as saved
    path = tmp_path / "graph.json"
    path.write_text(g.to_json())
    loaded = Graph.load(path)
    assert loaded.nodes["model"].params.model == "model.onnx"
    assert loaded.to_json() == g.to_json()
    np.testing.assert_allclose(loaded.run({"x": X})["sum"], 2 * SUM)


def test_concurrent_runs_on_one_backend(tiny_model: Path) -> None:
    backend = create_backend("onnxruntime", tiny_model)
    errors: list[BaseException] = []

    def hammer(k: int) -> None:
        try:
            for i in range(50):
                np.testing.assert_allclose(backend.run({"x": X * (k + i)})["sum"], SUM * (k + i))
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


class _CountingBackend:
    """Wraps a backend and counts its runs (the memo's whole point is to skip some)."""

    def __init__(self, backend: object) -> None:
        self.backend, self.runs = backend, 0

    def run(self, feeds: dict, names: list) -> dict:
        self.runs += 1
        return self.backend.run(feeds, names)  # type: ignore[attr-defined]


def _memo_node(tiny_model: Path, memo: int) -> tuple[Inference, _CountingBackend]:
    node = Inference("m", {"model": str(tiny_model), "memo": memo})
    node.ensure_setup()
    counting = _CountingBackend(node._backend)
    node._backend = counting  # type: ignore[assignment]
    return node, counting


def test_memo_answers_the_same_read_only_inputs_without_a_run(tiny_model: Path) -> None:
    """Why: the SAM decoder's image side runs once per image only because the Inference node
    remembers it; a memo that missed would cost every prompt ~6 ms, one that matched the wrong
    array would answer for another image."""
    node, counting = _memo_node(tiny_model, memo=2)
    a, b, c = (np.array(X * k) for k in (1, 2, 3))
    for array in (a, b, c):
        array.setflags(write=False)
    first = node.run(x=a)
    np.testing.assert_allclose(first["sum"], SUM)
    assert not first["sum"].flags.writeable  # shared between callers: nobody may change it
    np.testing.assert_allclose(node.run(x=a)["sum"], SUM)
    assert counting.runs == 1
    np.testing.assert_allclose(node.run(x=b)["sum"], 2 * SUM)
    np.testing.assert_allclose(node.run(x=a)["sum"], SUM)  # both kept: a is still there
    assert counting.runs == 2
    np.testing.assert_allclose(node.run(x=c)["sum"], 3 * SUM)  # evicts b, the least recent
    np.testing.assert_allclose(node.run(x=a)["sum"], SUM)
    assert counting.runs == 3
    np.testing.assert_allclose(node.run(x=b)["sum"], 2 * SUM)  # evicts c
    np.testing.assert_allclose(node.run(x=c)["sum"], 3 * SUM)  # evicts a
    assert counting.runs == 5
    np.testing.assert_allclose(node.run(x=a)["sum"], SUM)
    assert counting.runs == 6
    # A writable array may change between calls: it always runs.
    w = np.array(X)
    node.run(x=w)
    w *= 5
    np.testing.assert_allclose(node.run(x=w)["sum"], 5 * SUM)
    assert counting.runs == 8


def test_memo_of_one_and_of_chosen_outputs(tiny_model: Path) -> None:
    """A memo of one still answers the same input twice; a node asked for some outputs gets only
    those, remembered or not."""
    node = Inference("m", {"model": str(tiny_model), "memo": 1, "outputs": ["sum"]})
    node.ensure_setup()
    counting = _CountingBackend(node._backend)
    node._backend = counting  # type: ignore[assignment]
    a = np.array(X)
    a.setflags(write=False)
    assert set(node.run(x=a)) == set(node.run(x=a)) == {"sum"}
    assert counting.runs == 1
    assert set(node.run(x=np.array(X))) == {"sum"}  # writable: not remembered, same outputs


def test_memo_never_answers_for_a_dead_array(tiny_model: Path) -> None:
    """Why: the key is the array's identity; once it is freed, CPython may give a new array the
    same id, and the memo must then run the model, not return the dead array's outputs."""
    node, counting = _memo_node(tiny_model, memo=4)
    for k in range(1, 6):
        array = np.array(X * k)  # the previous one is freed here: its id may come back
        array.setflags(write=False)
        np.testing.assert_allclose(node.run(x=array)["sum"], k * SUM)
    assert counting.runs == 5
    assert len(node._memo) == 1  # the dead arrays' entries went at the next insert
    node.close()
    assert len(node._memo) == 0


def test_no_memo_by_default(tiny_model: Path) -> None:
    """Why: most models take fresh inputs each call; remembering them would only hold memory."""
    node, counting = _memo_node(tiny_model, memo=0)
    a = np.array(X)
    a.setflags(write=False)
    node.run(x=a)
    out = node.run(x=a)
    assert counting.runs == 2 and out["sum"].flags.writeable


def _threads(backend: object) -> int:
    return backend._session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]


@pytest.fixture
def own_run_count(monkeypatch: pytest.MonkeyPatch) -> RunCount:
    """A run count of the test's own: another test's background work (a job thread still running
    in this worker) must not make the test's runs look concurrent."""
    count = RunCount()
    monkeypatch.setattr(inference_module, "RUNS", count)
    return count


def test_a_lone_run_takes_the_solo_session(tiny_model: Path, own_run_count: RunCount) -> None:
    """Why: a server whose requests each run on one intra-op thread answers a lone click on every
    core only if its node takes the solo session when no other run is in progress, and keeps to its
    own threads beside another run or where the caller forbids it (concurrent clicks on 2 cores
    were 22% fewer per second when every call took both)."""
    node = Inference("m", {"model": str(tiny_model), "threads": 1, "solo_threads": 2})
    node.ensure_setup()
    assert node.solo and (_threads(node._backend), _threads(node._solo_backend)) == (1, 2)
    shared, solo = _CountingBackend(node._backend), _CountingBackend(node._solo_backend)
    node._backend, node._solo_backend = shared, solo  # type: ignore[assignment]
    np.testing.assert_allclose(node.run(x=np.array(X))["sum"], SUM)
    assert (solo.runs, shared.runs, node.solo_runs) == (1, 0, 1)
    with own_run_count.run():  # another node's run in progress
        np.testing.assert_allclose(node.run(x=np.array(X))["sum"], SUM)
    assert (solo.runs, shared.runs) == (1, 1)
    token = SOLO_ALLOWED.set(False)
    try:
        np.testing.assert_allclose(node.run(x=np.array(X))["sum"], SUM)
    finally:
        SOLO_ALLOWED.reset(token)
    assert (solo.runs, shared.runs, node.solo_runs) == (1, 2, 1)
    assert own_run_count.running == 0  # every run was counted out again
    node.close()
    assert node._solo_backend is None


def test_run_count_counts_out_a_failed_run() -> None:
    """Why: a run that raised must not leave the count up, or no run would ever be alone again."""
    count = RunCount()
    with pytest.raises(RuntimeError), count.run() as alone:
        assert alone and count.running == 1
        raise RuntimeError("the model failed")
    assert count.running == 0


@pytest.mark.parametrize(("threads", "solo_threads"), [(0, 2), (2, 2), (2, 1), (1, 0)])
def test_no_solo_session_unless_above_a_set_thread_count(
    tiny_model: Path, threads: int, solo_threads: int
) -> None:
    """With ``threads`` 0 (every core already) or ``solo_threads`` not above it, one session only."""
    node = Inference("m", {"model": str(tiny_model), "threads": threads, "solo_threads": solo_threads})
    node.ensure_setup()
    assert not node.solo and node._solo_backend is None
    node.run(x=np.array(X))
    assert node.solo_runs == 0


def test_negative_solo_threads_refused(tiny_model: Path) -> None:
    with pytest.raises(BackendError, match="solo_threads must be >= 0"):
        Inference("m", {"model": str(tiny_model), "threads": 1, "solo_threads": -1})
