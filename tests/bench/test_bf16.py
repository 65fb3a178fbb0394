"""bf16 packages: the fp32 graphs with the encoder asked to run on OpenVINO at bf16, and the fallback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import samdeploy
from samdeploy.engine.backends import OpenVinoBackend, available_backends
from samdeploy.errors import BackendError, ExportError
from samdeploy.export.attention import MIN_INT8_KEYS
from samdeploy.export.decoder_attention import transpose_value_products
from samdeploy.export.precision import optimize_package
from samdeploy.package import ModelPackage, describe_files, write_manifest
from samdeploy.sam.model import DEFAULT_MODEL, package_runtime

HAS_BF16 = "openvino" in available_backends() and OpenVinoBackend.supports_precision("bf16")
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16, reason="needs OpenVINO and a CPU with native bf16 (AVX512-BF16 or AMX)"
)


def bf16_manifest_copy(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose manifest asks for the bf16 runtime (what optimize_package writes)."""
    shutil.copytree(source, target)
    manifest = json.loads((target / "model.json").read_text())
    manifest["precision"] = "bf16"
    manifest["runtime"] = {role: {"backend": "openvino", "precision": "bf16"} for role in manifest["models"]}
    manifest["files"] = describe_files(target, list(manifest["files"]))
    write_manifest(target, manifest)
    return target


def test_a_bf16_package_that_cannot_run_here_falls_back_to_fp32(tiny_package, tmp_path, monkeypatch) -> None:
    package_dir = bf16_manifest_copy(tiny_package, tmp_path / "bf16")
    monkeypatch.setattr(OpenVinoBackend, "supports_precision", classmethod(lambda cls, precision: False))
    with pytest.warns(RuntimeWarning) as caught:
        model = samdeploy.load_model(package_dir)
    assert len(caught) == 1  # one warning for the package, not one per model
    models = "image_encoder, mask_decoder, mask_decoder_low_res, mask_decoder_image, mask_decoder_prepared"
    assert f"asks for {models} on openvino at bf16" in str(caught[0].message)
    assert "running the graphs in float32 on onnxruntime" in str(caught[0].message)
    with model:
        assert model.backend_summary == "onnxruntime"
        assert model.encode_graph.nodes["image_encoder"].params.backend == "onnxruntime"
        image = np.zeros((40, 60, 3), np.uint8)
        assert model.encode(image).embeddings.shape[1] > 0
    # An explicit other backend is a choice, not a failure: no warning, no OpenVINO.
    assert package_runtime(ModelPackage.load(package_dir), "onnxruntime") == ()


def test_fp32_packages_ask_for_nothing(tiny_package) -> None:
    package = ModelPackage.load(tiny_package)
    assert package.runtime("image_encoder") == {}
    assert package_runtime(package, None) == ()


def test_bf16_is_refused_where_it_cannot_be_checked(tiny_package, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(OpenVinoBackend, "supports_precision", classmethod(lambda cls, precision: False))
    with pytest.raises(ExportError, match="no native bf16"):
        optimize_package(tiny_package, tmp_path / "bf16", "bf16")
    assert not (tmp_path / "bf16").exists()


@needs_bf16
def test_bf16_package_runs_on_openvino(tmp_path) -> None:
    # The trained default model: random weights put most logits near 0, where bf16 flips pixels
    # (the tiny random package agrees on only ~half of them, and is refused: see the CLI test).
    report = optimize_package(
        DEFAULT_MODEL, tmp_path / "bf16", "bf16", threads=1, measure_runs=1, check_images=2
    )
    assert report.passed and report.precision == "bf16"
    package = ModelPackage.load(tmp_path / "bf16", verify=True)
    assert package.precision == "bf16"
    for role in ("image_encoder", "mask_decoder", "mask_decoder_low_res"):
        assert package.runtime(role) == {"backend": "openvino", "precision": "bf16"}
    # The graphs are the source's float32 ones: the decoders with their attention products
    # transposed (so OpenVINO does not fuse them) and nothing else, the encoder with its token grid
    # carried as rows (the default model was exported before that rewrite), which gives the same
    # float32 embedding.
    source = ModelPackage.load(DEFAULT_MODEL)
    rewritten = 0
    for role in source.manifest["models"]:
        if role != "image_encoder":
            decoder = onnx.load(str(source.model_path(role)))
            rewritten += transpose_value_products(decoder)
            assert onnx.load(str(package.model_path(role))) == decoder, role
    assert rewritten == 9  # three in each decoder graph that attends to the image (three here)
    assert package.manifest["export"]["precision"]["decoder"].startswith("fp32 graphs, attention products")
    assert any(t.startswith("decoders: 9 soft-max x value products") for t in report.transforms)
    assert any(t.startswith("token grid carried as [B, H*W, C]") for t in report.transforms)
    assert package.manifest["export"]["nodes"]["image_encoder"]["token_rows"] > 0
    image = np.random.default_rng(1).standard_normal((1, 3, 256, 256), dtype=np.float32)
    embeddings = [
        ort.InferenceSession(str(p.encoder_path), providers=["CPUExecutionProvider"]).run(
            None, {"image": image}
        )[0]
        for p in (source, package)
    ]
    assert np.array_equal(*embeddings)
    worst = report.accuracy["worst"]
    assert 0.999 <= worst["embeddings_cosine"] < 1.0  # bf16 arithmetic: close, not identical
    assert worst["mask_agreement"] >= 0.98
    assert set(report.speed["encoder_s"]) == {"source", "bf16"}

    with samdeploy.load_model(tmp_path / "bf16") as model:
        assert model.backend_summary == "image encoder on openvino (bf16), mask decoder on openvino (bf16)"
        for node in (model.encode_graph.nodes["image_encoder"], model.decode_graph.nodes["mask_decoder"]):
            assert node.params.backend == "openvino" and node.params.precision == "bf16"
        predictor = samdeploy.SamPredictor(model)
        image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(point_coords=np.array([[80, 60]]), point_labels=np.array([1]))
        assert masks.shape == (3, 120, 160) and scores.shape == (3,)
    with samdeploy.load_model(tmp_path / "bf16", backend="onnxruntime") as model:
        assert model.backend_summary == "onnxruntime"  # the user's choice wins: float32 on ORT


ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "samdeploy", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


def test_export_precision_int8_cli(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "int8"
    result = _cli("export", str(tiny_checkpoint), "-o", str(out), "--precision", "int8")
    assert result.returncode == 0, result.stderr
    package = ModelPackage.load(out, verify=True)
    assert package.precision == "int8"
    assert package.manifest["export"]["precision"]["passed"] is True
    assert "against the fp32 export: embedding cosine" in result.stdout
    # the fp32 scratch export is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]


def test_export_precision_refusals(tiny_checkpoint, tmp_path) -> None:
    result = _cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "a"), "--precision", "fp16")
    assert result.returncode != 0 and "unknown precision 'fp16'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _cli(
        "export", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--precision", "int8", "--quantize", "int8"
    )
    assert result.returncode != 0 and "pass one" in result.stderr
    assert not any(tmp_path.iterdir())


@needs_bf16
def test_export_precision_bf16_cli(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "bf16"
    result = _cli("export", str(tiny_checkpoint), "-o", str(out), "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    assert ModelPackage.load(out, verify=True).runtime("image_encoder")["precision"] == "bf16"
    assert '"backend": "openvino"' in result.stdout
    inspected = _cli("inspect", str(out))
    assert "image_encoder runs on openvino at bf16" in inspected.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16"]  # no scratch export left


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_export_precision_fp32_openvino_cli(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "ov"
    result = _cli("export", str(tiny_checkpoint), "-o", str(out), "--precision", "fp32-openvino")
    assert result.returncode == 0, result.stderr
    package = ModelPackage.load(out, verify=True)
    assert package.precision == "fp32-openvino"
    assert package.manifest["export"]["precision"]["passed"] is True
    inspected = _cli("inspect", str(out))
    assert "image_encoder runs on openvino at f32" in inspected.stdout
    assert "mask_decoder runs on" not in inspected.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ov"]


@needs_bf16
def test_bf16_below_the_bar_is_refused(tiny_package, tmp_path, monkeypatch) -> None:
    from samdeploy.export import precision

    monkeypatch.setitem(precision.ACCURACY_BAR, "mask_agreement", 1.01)
    with pytest.raises(ExportError, match="the bf16 package misses the accuracy bar: mask_agreement"):
        optimize_package(tiny_package, tmp_path / "bf16", "bf16", measure_runs=0, check_images=1)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_openvino_f32_runs_the_exported_graphs_like_onnxruntime(tiny_package) -> None:
    """Every graph of a package, on OpenVINO at f32, gives ONNX Runtime's numbers (a graph layout
    OpenVINO mis-executed once gave logits off by 70 here)."""
    from samdeploy.engine.backends import create_backend

    package = ModelPackage.load(tiny_package)
    rng = np.random.default_rng(0)
    grid, low = package.manifest["embedding_size"], package.mask_input_size
    channels = package.model("image_encoder").outputs[0].shape[1]
    feeds = {
        "image_encoder": {
            "image": rng.standard_normal((1, 3, package.image_size, package.image_size), np.float32)
        },
        "mask_decoder_low_res": {
            "image_embeddings": rng.standard_normal((1, channels, *grid), np.float32),
            "point_coords": (rng.random((3, 2, 2)) * package.image_size).astype(np.float32),
            "point_labels": np.array([[1, -1], [1, 0], [2, 3]], np.float32),
            "mask_input": rng.standard_normal((1, 1, *low), np.float32),
            "has_mask_input": np.ones(1, np.float32),
            "mask_iou_threshold": np.full(4, -np.inf, np.float32),  # the mask filter off
        },
    }
    # and the filter on, at a cut between the prompts' IoUs (NonZero and Gather on both backends)
    decoder = feeds["mask_decoder_low_res"]
    iou = create_backend("onnxruntime", package.model_path("mask_decoder_low_res")).run(decoder)
    cut = float(np.median(iou["iou_predictions"][:, 1:].max(axis=1)))
    feeds["filtered"] = {**decoder, "mask_iou_threshold": np.array([np.inf] + [cut] * 3, np.float32)}
    for role, feed in feeds.items():
        role = "mask_decoder_low_res" if role == "filtered" else role
        path = package.model_path(role)
        expected = create_backend("onnxruntime", path).run(feed)
        got = create_backend("openvino", path, precision="f32").run(feed)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-3, err_msg=f"{role}.{name}")


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_openvino_decoder_answers_every_click_on_the_features_it_keeps(tiny_package) -> None:
    """Why: the OpenVINO backend copies an image's read-only features into its request once and
    reuses that copy click after click; were any kernel to write into its inputs, the second click
    on an image would get damaged features. Each click must equal ONNX Runtime's answer."""
    from samdeploy.engine.backends import create_backend
    from samdeploy.package import IMAGE_SIDE, PREPARED_DECODER

    package = ModelPackage.load(tiny_package)
    rng = np.random.default_rng(3)
    channels = package.model("image_encoder").outputs[0].shape[1]
    embedding = rng.standard_normal((1, channels, *package.manifest["embedding_size"]), np.float32)
    features = create_backend("onnxruntime", package.model_path(IMAGE_SIDE)).run(
        {"image_embeddings": embedding}
    )
    for value in features.values():
        value.setflags(write=False)  # as the image-side node's memo hands them out
    kept = {name: value.copy() for name, value in features.items()}
    reference = create_backend("onnxruntime", package.model_path(PREPARED_DECODER))
    decoder = create_backend("openvino", package.model_path(PREPARED_DECODER), precision="f32")
    for points in (1, 1, 3, 1, 2):
        click = {
            "point_coords": (rng.random((1, points + 1, 2)) * package.image_size).astype(np.float32),
            "point_labels": np.array([[1] * points + [-1]], np.float32),
        }
        expected = reference.run({**features, **click})
        got = decoder.run({**features, **click})
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-3, err_msg=f"{points}: {name}")
    for name, value in features.items():
        np.testing.assert_array_equal(value, kept[name])


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_fp32_openvino_package_runs_the_encoder_on_openvino_f32(tmp_path) -> None:
    """The fp32 arithmetic with the encoder on OpenVINO at f32: faithful to the fp32 package (its own
    bar), the decoders left on ONNX Runtime as they were."""
    from samdeploy.export.precision import FAITHFUL_BAR

    report = optimize_package(
        DEFAULT_MODEL, tmp_path / "ov", "fp32-openvino", threads=1, measure_runs=1, check_images=2
    )
    assert report.passed and report.precision == "fp32-openvino"
    recorded = report.manifest["export"]["precision"]
    assert recorded["accuracy_bar"] == FAITHFUL_BAR
    worst = report.accuracy["worst"]
    assert worst["embeddings_cosine"] >= FAITHFUL_BAR["embeddings_cosine"]
    assert worst["mask_agreement"] >= FAITHFUL_BAR["mask_agreement"]
    assert report.manifest["export"]["quantize"] == "none"
    assert any(t.startswith("the encoder on OpenVINO at f32") for t in report.transforms)
    package = ModelPackage.load(tmp_path / "ov", verify=True)
    assert package.precision == "fp32-openvino"
    assert package.manifest["runtime"] == {"image_encoder": {"backend": "openvino", "precision": "f32"}}
    source = ModelPackage.load(DEFAULT_MODEL)
    encoder_file = source.manifest["models"]["image_encoder"]["file"]
    for name, info in source.manifest["files"].items():
        if name != encoder_file:  # the decoders, byte for byte
            assert package.manifest["files"][name]["sha256"] == info["sha256"]

    image = (np.random.default_rng(3).random((120, 160, 3)) * 255).astype(np.uint8)
    prompt = {"point_coords": np.array([[80, 60]]), "point_labels": np.array([1])}
    results = []
    for folder in (DEFAULT_MODEL, tmp_path / "ov"):
        with samdeploy.load_model(folder) as model:
            predictor = samdeploy.SamPredictor(model)
            predictor.set_image(image)
            results.append(
                (model.backend_summary, predictor.get_image_embedding(), *predictor.predict(**prompt))
            )
    (summary_fp32, *fp32), (summary, *ov) = results
    assert summary_fp32 == "onnxruntime"
    assert summary == "image encoder on openvino (f32), mask decoder on onnxruntime"
    np.testing.assert_allclose(ov[0], fp32[0], rtol=1e-4, atol=1e-4)  # float32 rounding apart
    assert (ov[1] == fp32[1]).mean() >= 0.999
    np.testing.assert_allclose(ov[2], fp32[2], atol=1e-4)


def test_fp32_openvino_is_refused_without_openvino(tiny_package, tmp_path, monkeypatch) -> None:
    from samdeploy.engine import backends

    def missing(name: str):
        raise BackendError(f"backend '{name}' is not installed (pip install openvino)")

    monkeypatch.setattr(backends, "backend_class", missing)
    with pytest.raises(ExportError, match="a fp32-openvino package runs on OpenVINO: backend 'openvino'"):
        optimize_package(tiny_package, tmp_path / "ov", "fp32-openvino")
    assert not (tmp_path / "ov").exists()


@needs_bf16
def test_int8_bf16_package_runs_int8_weights_on_openvino(tmp_path, monkeypatch) -> None:
    report = optimize_package(
        DEFAULT_MODEL, tmp_path / "fast", "int8-bf16", threads=1, measure_runs=1, check_images=2
    )
    assert report.passed and report.precision == "int8-bf16"
    package = ModelPackage.load(tmp_path / "fast", verify=True)
    width = package.manifest["architecture"]["encoder_embed_dim"]
    assert package.runtime("image_encoder") == {
        "backend": "openvino",
        "precision": "bf16",
        "quantization_group": width,
    }
    assert package.runtime("mask_decoder") == {"backend": "openvino", "precision": "bf16"}
    assert package.manifest["export"]["quantize"] == "int8-weights"
    encoder = onnx.load(str(package.encoder_path))
    int8 = [i for i in encoder.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    linear = 4 * package.manifest["architecture"]["encoder_depth"]  # qkv, proj, two MLP layers
    weights = {i.name for i in int8}
    assert (
        len(int8)
        == linear
        == sum(n.op_type == "DequantizeLinear" and n.input[0] in weights for n in encoder.graph.node)
    )
    # Each of those weights takes one byte instead of four.
    saved = ModelPackage.load(DEFAULT_MODEL).encoder_path.stat().st_size - package.encoder_path.stat().st_size
    assert saved > 0.95 * 3 * sum(int(np.prod(i.dims)) for i in int8)
    # The global blocks' attention scores from q and k rounded to int8 (one QuantizeLinear each),
    # which OpenVINO multiplies in int8 inside its fused attention kernel; the 8x8 windows (64 keys)
    # are under MIN_INT8_KEYS and stay as they were.
    architecture = package.manifest["architecture"]
    assert (
        architecture["window_size"] ** 2
        < MIN_INT8_KEYS
        <= (architecture["image_size"] // architecture["patch_size"]) ** 2
    )
    chains = len(architecture["encoder_global_attn_indexes"])
    assert package.manifest["export"]["nodes"]["image_encoder"]["int8_attention_scores"] == chains
    assert any(
        line.startswith(f"attention scores QK^T in int8 ({chains} chains)") for line in report.transforms
    )
    assert sum(n.op_type == "QuantizeLinear" for n in encoder.graph.node) == 2 * chains
    assert sum(n.op_type == "DequantizeLinear" for n in encoder.graph.node) == linear + 2 * chains
    import openvino as ov

    compiled = ov.Core().compile_model(str(package.encoder_path), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    kernels = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Subgraph"
    ]
    assert kernels.count("i8") == chains, f"OpenVINO no longer fuses the int8 attention: {kernels}"
    worst = report.accuracy["worst"]
    assert 0.999 <= worst["embeddings_cosine"] < 1.0 and worst["mask_agreement"] >= 0.98
    assert set(report.speed["encoder_s"]) == {"source", "int8-bf16"}
    inspected = _cli("inspect", str(tmp_path / "fast"))
    assert f"image_encoder runs on openvino at bf16 (quantization_group {width}) where" in inspected.stdout

    image = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    with samdeploy.load_model(tmp_path / "fast") as model:
        assert model.backend_summary == (
            f"image encoder on openvino (bf16, quantization_group {width}), mask decoder on openvino (bf16)"
        )
        node = model.encode_graph.nodes["image_encoder"]
        assert node.params.quantization_group == width and node.backend.quantization_group == width
        fast = model.encode(image).embeddings
    # Where OpenVINO cannot run it, the same graph runs in float32 on ONNX Runtime (from the int8
    # weights), close to the fp32 package.
    monkeypatch.setattr(OpenVinoBackend, "supports_precision", classmethod(lambda cls, precision: False))
    with pytest.warns(RuntimeWarning, match="running the graphs in float32 on onnxruntime"):
        fallback = samdeploy.load_model(tmp_path / "fast")
    with fallback, samdeploy.load_model(DEFAULT_MODEL) as reference:
        assert fallback.backend_summary == "onnxruntime"
        expected = reference.encode(image).embeddings
        slow = fallback.encode(image).embeddings
    for embeddings in (fast, slow):
        a, b = embeddings.ravel().astype(np.float64), expected.ravel().astype(np.float64)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
@pytest.mark.parametrize("group", [-1, 1.5, True, "128"])
def test_openvino_refuses_a_bad_quantization_group(tiny_package, group) -> None:
    from samdeploy.engine.backends import create_backend
    from samdeploy.errors import BackendError

    with pytest.raises(BackendError, match="quantization_group must be a whole number"):
        create_backend("openvino", ModelPackage.load(tiny_package).encoder_path, quantization_group=group)


@needs_bf16
def test_decoder_fusion_benchmark_makes_both_forms(tmp_path) -> None:
    """benchmarks/bench_decoder_fusion.py's packages: the bf16 package as optimize_package makes it
    (decoders unfused) and a copy whose decoders are the source's, byte for byte, both loadable with
    their checksums verified."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.bench_decoder_fusion import make_packages
    finally:
        sys.path.remove(str(ROOT))
    packages = make_packages(DEFAULT_MODEL, tmp_path, "bf16", log=lambda line: None)
    source = ModelPackage.load(DEFAULT_MODEL)
    fused = ModelPackage.load(packages["fused"], verify=True)
    unfused = ModelPackage.load(packages["unfused"], verify=True)
    for role in source.manifest["models"]:
        if role == "image_encoder":
            assert (
                fused.manifest["files"][fused.manifest["models"][role]["file"]]
                == (unfused.manifest["files"][unfused.manifest["models"][role]["file"]])
            )
            continue
        assert fused.model_path(role).read_bytes() == source.model_path(role).read_bytes()
        if role != "mask_decoder_image":  # the graphs that attend to the image
            assert fused.model_path(role).read_bytes() != unfused.model_path(role).read_bytes()
    assert fused.manifest["export"]["precision"]["decoder"] == "fp32 (copied)"
    assert not any(t.startswith("decoders:") for t in fused.manifest["export"]["precision"]["transforms"])
    assert packages == make_packages(DEFAULT_MODEL, tmp_path, "bf16")  # kept and reused
