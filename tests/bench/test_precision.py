"""samdeploy.export.precision on the tiny package: the attention rewrite, int8 packages, refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import samdeploy
from samdeploy.errors import ExportError
from samdeploy.export import precision
from samdeploy.export.attention import int8_attention_scores, unchunk_global_attention
from samdeploy.export.precision import chunk_global_attention, optimize_package
from samdeploy.package import ModelPackage


def encoder_output(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def int8_package(tiny_package, tmp_path_factory):
    output = tmp_path_factory.mktemp("precision") / "tiny-int8"
    report = optimize_package(tiny_package, output, "int8", threads=1, measure_runs=1, check_images=2)
    return output, report


def test_chunked_attention_gives_the_same_embeddings(tiny_package) -> None:
    path = str(ModelPackage.load(tiny_package).encoder_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256), dtype=np.float32)
    reference = encoder_output(path, x)
    # The tiny model's one global block attends over a 16x16 grid: bands of 4 rows.
    model = onnx.load(path)
    softmaxes = sum(n.op_type == "Softmax" for n in model.graph.node)
    assert chunk_global_attention(model, rows=4, min_tokens=100) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Softmax") == softmaxes - 1 + 4  # the global block's softmax became four bands
    np.testing.assert_allclose(encoder_output(model, x), reference, rtol=0, atol=1e-5)


def test_unchunking_restores_the_traced_chain_for_another_band_height(tiny_package) -> None:
    path = str(ModelPackage.load(tiny_package).encoder_path)
    x = np.random.default_rng(1).standard_normal((1, 3, 256, 256), dtype=np.float32)
    traced = onnx.load(path)
    reference = encoder_output(traced, x)
    model = onnx.load(path)
    assert unchunk_global_attention(model) == 0  # nothing banded: nothing to do
    assert chunk_global_attention(model, rows=4, min_tokens=100) == 1
    assert unchunk_global_attention(model) == 1
    onnx.checker.check_model(model)
    assert sorted(n.op_type for n in model.graph.node) == sorted(n.op_type for n in traced.graph.node)
    assert len(model.graph.initializer) == len(traced.graph.initializer)  # the bands' constants went
    np.testing.assert_allclose(encoder_output(model, x), reference, rtol=0, atol=1e-5)
    assert chunk_global_attention(model, rows=8, min_tokens=100) == 1  # banded again, two bands
    assert [n.op_type for n in model.graph.node].count("Softmax") == sum(
        n.op_type == "Softmax" for n in traced.graph.node
    ) - 1 + 2
    np.testing.assert_allclose(encoder_output(model, x), reference, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def banded_package(tiny_package, tmp_path_factory):
    """The tiny package with its one global block in 4-row bands, as ``samdeploy export`` bands the
    official 64x64 grid (the tiny 16x16 grid is under the size export bands)."""
    import shutil

    from samdeploy.package import describe_files, write_manifest

    output = tmp_path_factory.mktemp("banded") / "tiny-banded"
    shutil.copytree(tiny_package, output)
    package = ModelPackage.load(output)
    model = onnx.load(str(package.encoder_path))
    assert chunk_global_attention(model, rows=4, min_tokens=100) == 1
    onnx.save(model, str(package.encoder_path))
    manifest = dict(package.manifest, files=describe_files(output, package.manifest["files"]))
    manifest["export"] = dict(manifest["export"], attention_rows=4)
    write_manifest(output, manifest)
    return output


def band_heights(package: ModelPackage) -> list[int]:
    """Query rows per band of each banded global block of the package's encoder (16x16 grid)."""
    model = onnx.load(str(package.encoder_path))
    concats = [n for n in model.graph.node if n.name.endswith("/bands/concat")]
    return [16 // len(n.input) for n in concats]


def test_optimize_bands_the_attention_again_for_the_package(banded_package, tmp_path, monkeypatch) -> None:
    report = optimize_package(banded_package, tmp_path / "eight", "fp32", attention_rows=8, measure_runs=0)
    eight = ModelPackage.load(tmp_path / "eight", verify=True)
    assert band_heights(eight) == [8]
    assert eight.manifest["export"]["attention_rows"] == 8
    assert eight.manifest["export"]["nodes"]["image_encoder"]["chunked_attention_blocks"] == 1
    assert "chunked global attention: 1 blocks, 8 rows per band" in report.transforms
    assert report.accuracy["worst"]["embeddings_cosine"] > 0.999999  # the same arithmetic

    optimize_package(banded_package, tmp_path / "traced", "fp32", attention_rows=0, measure_runs=0)
    traced = ModelPackage.load(tmp_path / "traced", verify=True)
    assert band_heights(traced) == []
    assert traced.manifest["export"]["attention_rows"] is None
    assert "chunked_attention_blocks" not in traced.manifest["export"]["nodes"]["image_encoder"]

    with pytest.raises(ExportError, match="attention_rows=5 cannot band"):
        optimize_package(banded_package, tmp_path / "five", "fp32", attention_rows=5, measure_runs=0)
    assert not (tmp_path / "five").exists()
    # A default that does not divide the grid (OpenVINO's 32 rows on a 16-row grid) keeps the source's bands.
    monkeypatch.setattr(precision, "DEFAULT_ATTENTION_ROWS", 32)
    optimize_package(banded_package, tmp_path / "default", "fp32", measure_runs=0, check_images=1)
    assert band_heights(ModelPackage.load(tmp_path / "default")) == [4]


def test_default_attention_rows_follow_the_backend() -> None:
    assert precision.default_attention_rows("fp32") == precision.default_attention_rows("int8") == 4
    assert precision.default_attention_rows("bf16") == precision.default_attention_rows("int8-bf16") == 32


def test_chunking_leaves_small_or_indivisible_grids_alone(tiny_package) -> None:
    path = str(ModelPackage.load(tiny_package).encoder_path)
    model = onnx.load(path)
    before = model.SerializeToString()
    assert chunk_global_attention(model, rows=4) == 0  # 256 tokens: under the default minimum
    assert chunk_global_attention(model, rows=5, min_tokens=100) == 0  # 5 does not divide 16 rows
    assert chunk_global_attention(model, rows=16, min_tokens=100) == 0  # one band: nothing to gain
    assert model.SerializeToString() == before


def test_int8_package_records_accuracy_and_speed(int8_package, tiny_package) -> None:
    output, report = int8_package
    package = ModelPackage.load(output, verify=True)
    assert package.precision == "int8" and report.precision == "int8"
    manifest = package.manifest
    record = manifest["export"]["precision"]
    assert record["precision"] == "int8" and record["passed"] is True and report.passed
    assert (
        record["source"]["encoder_sha256"]
        == ModelPackage.load(tiny_package).manifest["files"]["image_encoder.onnx"]["sha256"]
    )
    worst = record["accuracy"]["worst"]
    assert worst == report.accuracy["worst"]
    assert precision.ACCURACY_BAR["embeddings_cosine"] <= worst["embeddings_cosine"] < 1.0
    assert precision.ACCURACY_BAR["mask_agreement"] <= worst["mask_agreement"] <= 1.0
    assert len(record["accuracy"]["images"]) == 2
    # every parity prompt kind, on both images, plus the mask_input chain
    kinds = {name.split("@")[0] for name in record["accuracy"]["prompts"]}
    assert kinds == {"point", "points_with_negatives", "box", "box_and_point", "box_batch", "mask_input"}
    speed = record["speed"]
    assert set(speed["encoder_s"]) == {"source", "int8"} and all(t > 0 for t in speed["encoder_s"].values())
    assert speed["speedup"]["source"] == 1.0 and speed["speedup"]["int8"] > 0
    assert manifest["export"]["quantize"] == "int8-dynamic"
    ops = {n.op_type for n in onnx.load(str(package.encoder_path)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    # the decoder is the fp32 one, byte for byte
    source = ModelPackage.load(tiny_package)
    assert manifest["files"]["mask_decoder.onnx"] == source.manifest["files"]["mask_decoder.onnx"]
    # the rest of the manifest (architecture, tensors, pixel statistics) is the source's
    for key in ("architecture", "image_size", "models", "pixel_mean", "pixel_std", "preprocessing"):
        assert manifest[key] == source.manifest[key]
    assert json.loads((output / "model.json").read_text()) == manifest


def test_int8_package_loads_and_predicts(int8_package, tiny_package) -> None:
    output, _ = int8_package
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    fast = samdeploy.SamPredictor(samdeploy.load_model(output, threads=1))
    slow = samdeploy.SamPredictor(samdeploy.load_model(tiny_package, threads=1))
    for predictor in (fast, slow):
        predictor.set_image(image)
    masks, scores, low_res = fast.predict(point_coords=np.array([[60, 45]]), point_labels=np.array([1]))
    assert (
        masks.shape == (3, 90, 120)
        and masks.dtype == bool
        and scores.shape == (3,)
        and low_res.shape == (3, 64, 64)
    )
    want, _, _ = slow.predict(point_coords=np.array([[60, 45]]), point_labels=np.array([1]))
    assert np.mean(masks == want) > 0.95
    batch, _, _ = fast.predict(box=np.array([[10, 10, 60, 50], [50, 30, 110, 80]]), multimask_output=False)
    assert batch.shape == (2, 1, 90, 120)


def test_fp32_precision_keeps_the_numbers(tiny_package, tmp_path) -> None:
    report = optimize_package(tiny_package, tmp_path / "fp32", "fp32", measure_runs=0, check_images=1)
    assert report.speed is None and report.precision == "fp32"
    package = ModelPackage.load(tmp_path / "fp32", verify=True)
    assert package.precision == "fp32" and package.manifest["export"]["quantize"] == "none"
    assert report.accuracy["worst"]["embeddings_cosine"] > 0.999999
    assert report.accuracy["worst"]["mask_agreement"] == 1.0


def test_refusals_leave_nothing_behind(tiny_package, int8_package, tmp_path, monkeypatch) -> None:
    output, _ = int8_package
    with pytest.raises(ExportError, match="unknown precision 'fp16'"):
        optimize_package(tiny_package, tmp_path / "a", "fp16")
    with pytest.raises(ExportError, match="start from the fp32 export"):
        optimize_package(output, tmp_path / "b", "int8")
    with pytest.raises(ExportError, match="already holds a model package"):
        optimize_package(tiny_package, output, "int8")
    with pytest.raises(ExportError, match="not the source package"):
        optimize_package(tiny_package, tiny_package, "int8", force=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a samdeploy model package"):
        optimize_package(tiny_package, tmp_path / "busy", "int8")
    # below the accuracy bar: refused, and no package or staging folder is left
    monkeypatch.setitem(precision.ACCURACY_BAR, "embeddings_cosine", 1.5)
    with pytest.raises(ExportError, match="misses the accuracy bar: embeddings_cosine"):
        optimize_package(tiny_package, tmp_path / "c", "int8", measure_runs=0, check_images=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    # strict=False keeps it and records the failure
    report = optimize_package(
        tiny_package, tmp_path / "d", "int8", measure_runs=0, check_images=1, strict=False
    )
    assert report.passed is False
    assert ModelPackage.load(tmp_path / "d").manifest["export"]["precision"]["passed"] is False


def _linear_graph() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (2x8) through Gemm (B 8x6), Gemm (transB, B 5x6), MatMul (B 5x4); then x @ x^T, which
    multiplies two activations; and a MatMul whose weight is shared (two users)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 6)).astype(np.float32),
        "w2": rng.standard_normal((5, 6)).astype(np.float32),
        "w3": rng.standard_normal((5, 4)).astype(np.float32),
        "shared": rng.standard_normal((4, 4)).astype(np.float32),
    }
    weights["w3"][:, 2] = 0.0  # an all-zero output channel must not divide by zero
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2"], ["h2"], transB=1),
        helper.make_node("MatMul", ["h2", "w3"], ["h3"]),
        helper.make_node("Transpose", ["h3"], ["h3t"]),
        helper.make_node("MatMul", ["h3", "h3t"], ["gram"]),
        helper.make_node("MatMul", ["h3", "shared"], ["s1"]),
        helper.make_node("MatMul", ["s1", "shared"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("gram", TensorProto.FLOAT, [2, 2]),
        ],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def test_compress_weights_int8_quantizes_each_weight_per_output_channel() -> None:
    from onnx import numpy_helper

    from samdeploy.export.optimize import compress_weights_int8

    model, weights = _linear_graph()
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)

    def run(graph: onnx.ModelProto) -> list[np.ndarray]:
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})

    reference = run(model)
    assert compress_weights_int8(model) == 3  # not the activation product, not the shared weight
    onnx.checker.check_model(model)
    stored = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert {"w1", "w2", "w3"}.isdisjoint(stored) and "shared" in stored
    dequantize = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for name, axis in (("w1", 1), ("w2", 0), ("w3", 1)):
        q, scale = stored[f"{name}_int8"], stored[f"{name}_scale"]
        assert q.dtype == np.int8 and q.shape == weights[name].shape and np.abs(q).max() == 127
        assert [a.i for a in dequantize[f"{name}_int8"].attribute if a.name == "axis"] == [axis]
        # One scale per output channel: max |w| / 127, so each weight is within half a step.
        expected = np.abs(weights[name]).max(axis=1 - axis) / 127
        np.testing.assert_allclose(scale, np.where(expected == 0, 1, expected), rtol=1e-6)
        step = scale[:, None] if axis == 0 else scale[None, :]
        assert np.all(np.abs(q * step - weights[name]) <= step / 2 + 1e-7)
    assert np.all(stored["w3_int8"][:, 2] == 0)
    got = run(model)
    for new, old in zip(got, reference, strict=True):
        assert not np.array_equal(new, old)  # the weights did change
        np.testing.assert_allclose(new, old, rtol=0.05, atol=0.05 * np.abs(old).max())


def int8_rows(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to int8 in units of each row's largest magnitude, as int8_attention_scores does."""
    scale = np.abs(x).max(axis=-1, keepdims=True)
    return np.clip(np.rint(x / scale / np.float32(1 / 127)), -128, 127) / 127 * scale


def sam_attention_chain(heads: int = 2, grid: int = 3, dim: int = 4) -> onnx.ModelProto:
    """The attention chain SAM's ``Attention.forward`` traces to, alone: inputs q, k, v, rel_h, rel_w."""
    from onnx import TensorProto, helper, numpy_helper

    tokens = grid * grid
    shape5 = numpy_helper.from_array(np.asarray([heads, grid, grid, grid, grid], np.int64), "shape5")
    shape3 = numpy_helper.from_array(np.asarray([heads, tokens, tokens], np.int64), "shape3")
    nodes = [
        helper.make_node("Transpose", ["k"], ["k_t"], "k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"], "qk"),
        helper.make_node("Reshape", ["scores", "shape5"], ["scores5"], "reshape5"),
        helper.make_node("Add", ["scores5", "rel_h"], ["plus_h"], "add_h"),
        helper.make_node("Add", ["plus_h", "rel_w"], ["plus_w"], "add_w"),
        helper.make_node("Reshape", ["plus_w", "shape3"], ["logits"], "reshape3"),
        helper.make_node("Softmax", ["logits"], ["probs"], "softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["out"], "av"),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
        for name, shape in (
            ("q", [heads, tokens, dim]),
            ("k", [heads, tokens, dim]),
            ("v", [heads, tokens, dim]),
            ("rel_h", [heads, grid, grid, grid, 1]),
            ("rel_w", [heads, grid, grid, 1, grid]),
        )
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, [heads, tokens, dim])
    graph = helper.make_graph(nodes, "chain", inputs, [output], [shape5, shape3])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int8_attention_scores_round_q_and_k_per_token() -> None:
    model = sam_attention_chain()
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }
    feeds["q"][0, 3] *= 100.0  # one loud query token and one loud key: per-token scales keep the others fine
    feeds["k"][1, 5] *= 100.0
    assert int8_attention_scores(model) == 0  # 9 keys: under the default minimum, left as it is
    assert int8_attention_scores(model, min_keys=1) == 1
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]

    def chain(q: np.ndarray, k: np.ndarray) -> np.ndarray:
        logits = q @ k.transpose(0, 2, 1) + (feeds["rel_h"] + feeds["rel_w"]).reshape(2, 9, 9)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (probs / probs.sum(axis=-1, keepdims=True)) @ feeds["v"]

    np.testing.assert_allclose(got, chain(int8_rows(feeds["q"]), int8_rows(feeds["k"])), rtol=0, atol=2e-5)
    assert np.abs(got - chain(feeds["q"], feeds["k"])).max() > 1e-4  # the rounding did happen
    assert int8_attention_scores(model, min_keys=1) == 0  # nothing left to rewrite


def test_int8_attention_scores_on_the_tiny_encoder(tiny_package) -> None:
    path = str(ModelPackage.load(tiny_package).encoder_path)
    x = np.random.default_rng(2).standard_normal((1, 3, 256, 256), dtype=np.float32)
    reference = encoder_output(path, x)
    model = onnx.load(path)
    blocks = sum(n.op_type == "Softmax" for n in model.graph.node)
    assert chunk_global_attention(model, rows=4, min_tokens=100) == 1  # the global block in four bands
    chains = blocks - 1 + 4
    assert int8_attention_scores(model, min_keys=1) == chains  # the tiny model's windows are small
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    # q rounded per chain, k once per block (the bands share it)
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == chains + blocks
    producers = {out: n for n in model.graph.node for out in n.output}
    for qk in (n for n in model.graph.node if n.name.endswith("/int8/qk")):
        q, k_t = (producers[name] for name in qk.input)
        assert q.op_type == "DequantizeLinear" and producers[k_t.input[0]].op_type == "DequantizeLinear"
    got = encoder_output(model, x)
    a, b = got.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99999
    assert not np.array_equal(got, reference)


def sdpa_attention_chain(tokens: int = 6, heads: int = 2, dim: int = 4) -> onnx.ModelProto:
    """Scaled dot-product attention as SAM 2's Hiera traces it: q, k, v [1, tokens, heads, dim], the
    scale split as a square root on q and on k^T, no relative-position terms."""
    from onnx import TensorProto, helper, numpy_helper

    root = numpy_helper.from_array(np.asarray(dim**-0.25, np.float32), "root_scale")
    nodes = [
        helper.make_node("Transpose", ["q"], ["q_t"], "q_t", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k"], ["k_t"], "k_t", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v"], ["v_t"], "v_t", perm=[0, 2, 1, 3]),
        helper.make_node("Mul", ["q_t", "root_scale"], ["q_s"], "q_s"),
        helper.make_node("Mul", ["k_t", "root_scale"], ["k_s"], "k_s"),
        helper.make_node("MatMul", ["q_s", "k_s"], ["scores"], "qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], "softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["out"], "av"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, tokens, heads, dim]) for n in "qkv"]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, heads, tokens, dim])
    graph = helper.make_graph(nodes, "sdpa", inputs, [output], [root])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_int8_attention_scores_on_sdpa_chains() -> None:
    model = sdpa_attention_chain()
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((1, 6, 2, 4)).astype(np.float32) for n in "qkv"}
    feeds["k"][0, 2, 1] *= 50.0  # one loud key of one head
    assert int8_attention_scores(model, min_keys=1) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("Transpose") == 3 + 1  # k's scales transposed too
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]

    root = np.float32(4**-0.25)
    q = int8_rows(feeds["q"].transpose(0, 2, 1, 3) * root)  # per token and head: the last axis
    k_t = int8_rows(feeds["k"]).transpose(0, 2, 3, 1) * root
    logits = q @ k_t
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    expected = (probs / probs.sum(axis=-1, keepdims=True)) @ feeds["v"].transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
