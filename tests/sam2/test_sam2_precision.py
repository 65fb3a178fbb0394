"""Precision options on SAM 2.1 packages: int8, bf16 and int8-bf16 copies of the small test package,
held to SAM 1's accuracy bar plus the cosine of both high-resolution feature maps.

The bf16 variants run on OpenVINO at bf16 and skip where that cannot run, as SAM 1's do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import samdeploy
from samdeploy.engine.backends import OpenVinoBackend, available_backends
from samdeploy.errors import ExportError
from samdeploy.export.precision import (
    SAM2_ACCURACY_BAR,
    accuracy_bar,
    compare_packages,
    optimize_package,
    quantization_group,
)
from samdeploy.package import ModelPackage, describe_files, write_manifest
from samdeploy.sam2.model import Sam2Model

pytest.importorskip("sam2")

SAM2_TEST_CONFIG = Path(__file__).with_name("sam2.1_hiera_test.yaml")

HAS_BF16 = "openvino" in available_backends() and OpenVinoBackend.supports_precision("bf16")
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16, reason="needs OpenVINO and a CPU with native bf16 (AVX512-BF16 or AMX)"
)


def test_sam2_packages_are_held_to_the_high_res_maps_too(sam2_package):
    # Why: SAM 2's decoder reads the two high-resolution maps besides the embedding; a bar on the
    # embedding alone would pass a package whose high-resolution maps are wrong.
    bar = accuracy_bar(ModelPackage.load(sam2_package))
    assert bar == SAM2_ACCURACY_BAR
    assert (
        bar["high_res_feats_0_cosine"] == bar["high_res_feats_1_cosine"] == bar["embeddings_cosine"] == 0.999
    )


def _with_noisy_output(source: Path, target: Path, output: str, scale: float) -> Path:
    """A copy of ``source`` whose encoder adds fixed Gaussian noise of std ``scale`` to ``output``."""
    shutil.copytree(source, target)
    path = target / "image_encoder.onnx"
    model = onnx.load(str(path))
    spec = next(o for o in model.graph.output if o.name == output)
    shape = [d.dim_value or 1 for d in spec.type.tensor_type.shape.dim]
    for node in model.graph.node:
        node.output[:] = [f"{output}_clean" if name == output else name for name in node.output]
    noise = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * np.float32(scale)
    model.graph.initializer.append(numpy_helper.from_array(noise, f"{output}_noise"))
    model.graph.node.append(helper.make_node("Add", [f"{output}_clean", f"{output}_noise"], [output]))
    onnx.save(model, str(path))
    manifest = json.loads((target / "model.json").read_text())
    manifest["files"] = describe_files(target, list(manifest["files"]))
    write_manifest(target, manifest)
    return target


def test_a_wrong_high_res_map_is_caught_with_the_embedding_intact(sam2_package, tmp_path):
    # Why: the check must read the high-resolution maps themselves: here only high_res_feats_0
    # differs (noise that takes its cosine to about 0.98), the image embedding is bit-identical.
    noisy = _with_noisy_output(sam2_package, tmp_path / "noisy", "high_res_feats_0", scale=0.3)
    worst = compare_packages(sam2_package, noisy, images=1)["worst"]
    assert worst["embeddings_cosine"] == pytest.approx(1.0, abs=1e-7)
    assert worst["high_res_feats_1_cosine"] == pytest.approx(1.0, abs=1e-7)
    assert worst["high_res_feats_0_cosine"] < SAM2_ACCURACY_BAR["high_res_feats_0_cosine"]


def test_int8_sam2_package_meets_the_bar(sam2_package, tmp_path):
    """int8 on the small random model: every encoder output and every parity mask within the bar;
    the result is still a SAM 2.1 package that SAM2ImagePredictor runs."""
    report = optimize_package(sam2_package, tmp_path / "int8", "int8", measure_runs=0, check_images=2)
    worst = report.accuracy["worst"]
    assert report.passed
    for key, limit in SAM2_ACCURACY_BAR.items():
        assert worst[key] >= limit, key
    recorded = report.manifest["export"]["precision"]
    assert recorded["accuracy_bar"] == SAM2_ACCURACY_BAR
    package = ModelPackage.load(tmp_path / "int8", verify=True)
    assert package.precision == "int8" and package.family == "sam2.1"
    assert package.manifest["preprocessing"] == ModelPackage.load(sam2_package).manifest["preprocessing"]
    model = samdeploy.load_model(tmp_path / "int8")
    assert isinstance(model, Sam2Model)
    with model:
        predictor = samdeploy.SAM2ImagePredictor(model)
        predictor.set_image(np.zeros((64, 80, 3), np.uint8))
        masks, scores, _ = predictor.predict(point_coords=[[10, 20]], point_labels=[1])
        assert masks.shape == (3, 64, 80) and scores.shape == (3,)


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_fp32_openvino_sam2_package_is_held_to_the_faithful_bar_on_every_map(sam2_package, tmp_path):
    """fp32-openvino keeps the fp32 arithmetic: the embedding and both high-resolution maps at the
    faithful cosine, the encoder on OpenVINO at f32, the decoders on ONNX Runtime."""
    bar = accuracy_bar(ModelPackage.load(sam2_package), "fp32-openvino")
    assert set(bar) == set(SAM2_ACCURACY_BAR)
    assert (
        bar["high_res_feats_0_cosine"]
        == bar["high_res_feats_1_cosine"]
        == bar["embeddings_cosine"]
        == 0.99999
    )
    report = optimize_package(sam2_package, tmp_path / "ov", "fp32-openvino", measure_runs=0, check_images=2)
    assert report.passed and report.manifest["export"]["precision"]["accuracy_bar"] == bar
    for key, limit in bar.items():
        assert report.accuracy["worst"][key] >= limit, key
    assert report.manifest["runtime"] == {"image_encoder": {"backend": "openvino", "precision": "f32"}}
    with samdeploy.load_model(tmp_path / "ov") as model:
        assert isinstance(model, Sam2Model)
        assert model.backend_summary == "image encoder on openvino (f32), mask decoder on onnxruntime"
        predictor = samdeploy.SAM2ImagePredictor(model)
        predictor.set_image(np.zeros((64, 80, 3), np.uint8))
        masks, scores, _ = predictor.predict(point_coords=[[10, 20]], point_labels=[1])
        assert masks.shape == (3, 64, 80) and scores.shape == (3,)


@pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO is not installed")
def test_openvino_f32_runs_the_sam2_decoders_like_onnxruntime(sam2_package):
    """Why: the bf16 packages run all three SAM 2 decoder graphs on OpenVINO; the prepared one
    regroups pixels through rank-6 views (OpenVINO once mis-executed an 8-D transpose), so each
    graph must give ONNX Runtime's numbers there, for one prompt and for a batch of three."""
    from samdeploy.engine.backends import create_backend
    from samdeploy.package import IMAGE_SIDE, PREPARED_DECODER, SAM2_IMAGE_SIDE_INPUTS

    package = ModelPackage.load(sam2_package)
    rng = np.random.default_rng(5)
    features = {
        spec.name: rng.standard_normal(spec.shape, np.float32)
        for spec in package.model("image_encoder").outputs
    }
    low = package.mask_input_size

    def both(role: str, feeds: dict) -> dict:
        path = package.model_path(role)
        expected = create_backend("onnxruntime", path).run(feeds)
        got = create_backend("openvino", path, precision="f32").run(feeds)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=1e-3, err_msg=f"{role}.{name}")
        return expected

    side = both(IMAGE_SIDE, {name: features[name] for name in SAM2_IMAGE_SIDE_INPUTS})
    # one click with its padding point; three boxes, each with a click and the padding point
    for labels in ([[1, -1]], [[2, 3, 1, -1]] * 3):
        labels = np.array(labels, np.float32)
        prompt = {
            "point_coords": (rng.random((*labels.shape, 2)) * package.image_size).astype(np.float32),
            "point_labels": labels,
        }
        both(PREPARED_DECODER, {**side, **prompt})
        mask = {
            "mask_input": rng.standard_normal((1, 1, *low), np.float32),
            "has_mask_input": np.ones(1, np.float32),
        }
        both("mask_decoder", {**features, **prompt, **mask})


def test_int8_bf16_groups_follow_the_hiera_width(sam2_package):
    # Why: Hiera's widths are its trunk's embed_dim times 1, 2, 4, 8; SAM 1's default group (128)
    # divides none of the first stages' widths on hiera tiny (96) or base+ (112), leaving those
    # layers out of int8.
    package = ModelPackage.load(sam2_package)
    assert (
        quantization_group(package) == package.manifest["architecture"]["image_encoder"]["trunk"]["embed_dim"]
    )
    assert quantization_group(package) == 16


@pytest.fixture(scope="module")
def bf16_reports(sam2_package, tmp_path_factory):
    """bf16 and int8-bf16 copies of the small model, written whatever their accuracy (strict off)."""
    if not HAS_BF16:
        pytest.skip("needs OpenVINO and a CPU with native bf16 (AVX512-BF16 or AMX)")
    folder = tmp_path_factory.mktemp("sam2_bf16")
    return {
        precision: optimize_package(
            sam2_package, folder / precision, precision, measure_runs=0, check_images=2, strict=False
        )
        for precision in ("bf16", "int8-bf16")
    }


@needs_bf16
@pytest.mark.parametrize("precision", ["bf16", "int8-bf16"])
def test_bf16_sam2_packages_run_on_openvino_and_record_every_map(bf16_reports, precision):
    # Why: the bf16 variants must reach a SAM 2 package that SAM2ImagePredictor runs on OpenVINO at
    # bf16, with all three encoder outputs checked; the high-resolution maps pass the bar even on
    # the small random model.
    report = bf16_reports[precision]
    worst = report.accuracy["worst"]
    assert worst["high_res_feats_0_cosine"] >= 0.999 and worst["high_res_feats_1_cosine"] >= 0.999
    assert worst["embeddings_cosine"] > 0.995 and worst["mask_agreement"] > 0.95
    assert report.passed == all(worst[key] >= limit for key, limit in SAM2_ACCURACY_BAR.items())
    package = ModelPackage.load(report.output, verify=True)
    assert package.family == "sam2.1" and package.precision == precision
    assert package.runtime("image_encoder")["backend"] == "openvino"
    assert package.runtime("mask_decoder") == {"backend": "openvino", "precision": "bf16"}
    if precision == "int8-bf16":
        assert package.runtime("image_encoder")["quantization_group"] == 16
    with samdeploy.load_model(report.output) as model:
        assert isinstance(model, Sam2Model)
        assert "openvino" in model.backend_summary
        predictor = samdeploy.SAM2ImagePredictor(model)
        predictor.set_image(np.zeros((64, 80, 3), np.uint8))
        masks, scores, _ = predictor.predict(point_coords=[[10, 20]], point_labels=[1])
        assert masks.shape == (3, 64, 80) and scores.shape == (3,)


@needs_bf16
@pytest.mark.parametrize(
    "precision",
    [
        pytest.param(
            "bf16",
            marks=pytest.mark.xfail(
                strict=True,
                raises=ExportError,
                reason="small random model: image embedding cosine 0.99896 (bar 0.999); masks 99.04%,"
                " high-res maps 0.99998 pass. Hiera tiny and base+ pass (docs/sam2.md)",
            ),
        ),
        pytest.param(
            "int8-bf16",
            marks=pytest.mark.xfail(
                strict=True,
                raises=ExportError,
                reason="small random model: image embedding cosine 0.99890 (bar 0.999); masks 98.7%,"
                " high-res maps 0.99995 pass. Hiera tiny and base+ pass (docs/sam2.md)",
            ),
        ),
    ],
)
def test_bf16_sam2_packages_meet_the_bar(sam2_package, tmp_path, precision):
    """The accuracy bar applied as export applies it (strict): a package below it is refused."""
    report = optimize_package(sam2_package, tmp_path / precision, precision, measure_runs=0, check_images=2)
    assert report.passed


def test_cli_export_with_precision_writes_a_checked_sam2_package(sam2_checkpoint, tmp_path, capsys):
    # Why: `samdeploy export CHECKPOINT --config ... --precision int8` is the user's path: the fp32
    # SAM 2 export, then the int8 package held to the SAM 2 bar, with nothing left in between.
    from samdeploy.cli import main

    out = tmp_path / "int8"
    argv = ["export", str(sam2_checkpoint), "--config", str(SAM2_TEST_CONFIG), "--precision", "int8"]
    code = main([*argv, "--output", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "against the fp32 export: embedding cosine" in stdout
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["family"] == "sam2.1" and manifest["precision"] == "int8"
    recorded = manifest["export"]["precision"]
    assert recorded["passed"] and recorded["accuracy_bar"] == SAM2_ACCURACY_BAR
    assert sorted(p.name for p in out.iterdir()) == [
        "image_encoder.onnx",
        "mask_decoder.onnx",
        "mask_decoder_image.onnx",
        "mask_decoder_prepared.onnx",
        "model.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["int8"]  # the scratch fp32 export is gone


def test_hiera_stages_carried_as_rows_of_tokens_give_the_same_maps(
    sam2_model, sam2_config, sam2_package, tmp_path
):
    import onnxruntime as ort

    from samdeploy.export.layout import flatten_token_grid, token_grids
    from samdeploy.export.optimize import simplify
    from samdeploy.export.sam2 import export_encoder

    assert token_grids(onnx.load(str(sam2_package / "image_encoder.onnx"))) == set()  # as exported
    export_encoder(sam2_model, sam2_config, tmp_path / "traced.onnx", 17)
    simplify(tmp_path / "traced.onnx", tmp_path / "simplified.onnx", "onnxsim")  # as samdeploy export does
    model = onnx.load(str(tmp_path / "simplified.onnx"))
    image = np.random.default_rng(0).standard_normal((1, 3, 256, 256), dtype=np.float32)

    def run() -> list[np.ndarray]:
        options = ort.SessionOptions()  # as written: a fusion may round a little differently
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: image})

    before = run()
    grids = token_grids(model)
    assert len(grids) == 4  # each stage's grid, (H, W, C)

    assert flatten_token_grid(model) > 0

    onnx.checker.check_model(model, full_check=True)
    assert token_grids(model) == set()
    after = run()
    assert len(after) == 3  # the embedding and both high-resolution maps
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
