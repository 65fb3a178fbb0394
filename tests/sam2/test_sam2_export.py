"""SAM 2.1 export: the package, its manifest and validation, family and size detection, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from samdeploy.errors import CheckpointError
from samdeploy.export.validate import TOLERANCES
from samdeploy.package import ModelPackage

pytest.importorskip("sam2")

SAM2_TEST_CONFIG = Path(__file__).with_name("sam2.1_hiera_test.yaml")


def test_manifest_describes_the_sam2_package(sam2_package):
    package = ModelPackage.load(sam2_package, verify=True)
    manifest = package.manifest
    assert package.family == "sam2.1" and package.is_sam2
    assert manifest["model_type"] == "custom"
    assert manifest["image_size"] == 256
    assert manifest["embedding_size"] == [16, 16] and manifest["mask_input_size"] == [64, 64]
    assert manifest["pixel_mean"] == [0.485, 0.456, 0.406] and manifest["pixel_std"] == [0.229, 0.224, 0.225]
    assert manifest["preprocessing"]["resize"] == "square" and manifest["preprocessing"]["pad"] == "none"
    assert manifest["postprocessing"]["dynamic_multimask"] == {
        "enabled": True,
        "stability_delta": 0.05,
        "stability_thresh": 0.98,
    }
    encoder, decoder = package.model("image_encoder"), package.model("mask_decoder")
    assert [(t.name, t.shape) for t in encoder.outputs] == [
        ("high_res_feats_0", (1, 8, 64, 64)),
        ("high_res_feats_1", (1, 16, 32, 32)),
        ("image_embed", (1, 64, 16, 16)),
    ]
    assert [t.name for t in decoder.inputs] == [
        "image_embed",
        "high_res_feats_0",
        "high_res_feats_1",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
    ]
    assert [t.name for t in decoder.outputs] == ["low_res_masks", "iou_predictions", "object_score_logits"]
    # The architecture rebuilds the model.
    assert manifest["architecture"]["image_encoder"]["trunk"]["embed_dim"] == 16


def test_validation_against_the_official_predictor_is_recorded_and_within_tolerance(sam2_package):
    validation = ModelPackage.load(sam2_package).export_report["validation"]
    assert validation["passed"] is True
    assert validation["reference"] == "sam2.sam2_image_predictor.SAM2ImagePredictor"
    worst = validation["worst"]
    assert worst["embeddings_cosine"] >= TOLERANCES["embeddings_cosine"]
    assert worst["low_res_logits_rel"] <= TOLERANCES["low_res_logits_rel"]
    assert worst["iou_predictions_abs"] <= TOLERANCES["iou_predictions_abs"]
    assert worst["mask_agreement"] >= TOLERANCES["mask_agreement"]
    assert set(validation["decoder"]) >= {"point", "box", "box_batch", "mask_input", "points_with_negatives"}
    assert set(validation["features"]) == {"image_embed", "high_res_feats_0", "high_res_feats_1"}


def test_the_decoder_cut_in_two_is_listed_and_validated(sam2_package, sam2_model):
    """Why: clicks take the image side and the prepared decoder (see the predictor tests); the
    manifest must describe both, and the export must have checked them against the official
    decoder for every prompt without a mask_input."""
    package = ModelPackage.load(sam2_package)
    assert package.has_prepared_decoder
    side, prepared = package.model("mask_decoder_image"), package.model("mask_decoder_prepared")
    attention = sam2_model.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    heads, dim = attention.num_heads, attention.internal_dim // attention.num_heads
    assert [t.name for t in side.inputs] == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert [(t.name, t.shape) for t in side.outputs] == [
        ("image_tokens", (1, 256, 64)),
        ("image_keys", (1, heads, 256, dim)),
        ("image_values", (1, heads, 256, dim)),
        ("image_queries", (1, heads, 256, dim)),
        ("high_res_rows_0", (4096, 8)),
        ("high_res_rows_1", (1024, 16)),
    ]
    assert [t.name for t in prepared.inputs] == [t.name for t in side.outputs] + [
        "point_coords",
        "point_labels",
    ]
    assert [t.name for t in prepared.outputs] == ["low_res_masks", "iou_predictions", "object_score_logits"]
    cases = package.export_report["validation"]["decoder"]
    for name, case in cases.items():
        assert ("prepared_max_rel" in case) == (name != "mask_input"), name
        if name != "mask_input":
            assert case["prepared_max_rel"] <= TOLERANCES["low_res_logits_rel"]
            assert case["prepared_iou_max_abs"] <= TOLERANCES["iou_predictions_abs"]


def test_high_res_rows_follow_the_upscaling_pixel_order():
    """Why: the prepared decoder adds the high-resolution maps to pixels the channels-last upscaling
    makes as (cell y, x, then sub-pixels a, b, c, d); a map laid out in any other order would add
    each feature to another pixel. Checked index by index on a 2x2 grid."""
    import torch

    from samdeploy.export.sam2 import high_res_rows

    g = 2
    feats_0 = torch.randn(1, 3, 4 * g, 4 * g)
    feats_1 = torch.randn(1, 5, 2 * g, 2 * g)
    rows_0, rows_1 = high_res_rows(feats_0, feats_1)
    assert rows_0.shape == (16 * g * g, 3) and rows_1.shape == (4 * g * g, 5)
    for y, x, a, b in np.ndindex(g, g, 2, 2):
        cell = y * g + x
        assert torch.equal(rows_1[(cell * 2 + a) * 2 + b], feats_1[0, :, 2 * y + a, 2 * x + b])
        for c, d in np.ndindex(2, 2):
            row = (((cell * 2 + a) * 2 + b) * 2 + c) * 2 + d
            assert torch.equal(rows_0[row], feats_0[0, :, 4 * y + 2 * a + c, 4 * x + 2 * b + d])


def test_onnx_files_follow_the_positional_contract_x_anylabeling_reads(sam2_package):
    """X-AnyLabeling's SAM 2 loader feeds the decoder's inputs by position (float32 labels, a zero
    mask_input of S/4, has_mask_input 0) and reads encoder outputs 0..2 as high_res_feats_0,
    high_res_feats_1, image_embed and decoder outputs 0, 1 as masks (S/4 logits) and scores."""
    import onnxruntime as ort

    package = ModelPackage.load(sam2_package)
    encoder = ort.InferenceSession(str(package.encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(package.decoder_path), providers=["CPUExecutionProvider"])
    (image_input,) = encoder.get_inputs()
    assert image_input.type == "tensor(float)" and image_input.shape == [1, 3, 256, 256]
    high_res_0, high_res_1, embed = encoder.run(
        None, {image_input.name: np.zeros((1, 3, 256, 256), np.float32)}
    )
    assert (
        high_res_0.shape == (1, 8, 64, 64)
        and high_res_1.shape == (1, 16, 32, 32)
        and embed.shape == (1, 64, 16, 16)
    )
    inputs = decoder.get_inputs()
    assert [i.type for i in inputs] == ["tensor(float)"] * 7
    feeds = [
        embed,
        high_res_0,
        high_res_1,
        np.array([[[100.0, 80.0], [30.0, 40.0]]], np.float32),
        np.array([[1, 0]], np.float32),
        np.zeros((1, 1, 64, 64), np.float32),
        np.array([0], np.float32),
    ]
    outputs = decoder.run(None, {i.name: value for i, value in zip(inputs, feeds, strict=True)})
    masks, scores = outputs[0], outputs[1]
    assert masks.shape == (1, 4, 64, 64) and scores.shape == (1, 4)
    assert masks.dtype == np.float32 and scores.dtype == np.float32


def test_official_sizes_are_detected_from_the_weights(sam2_model):
    from samdeploy.export.sam2 import SAM2_PRESETS, detect_sam2_config

    state = {
        "no_obj_embed_spatial": np.zeros(1),
        "image_encoder.trunk.patch_embed.proj.weight": np.zeros((112, 3, 7, 7)),
        **{f"image_encoder.trunk.blocks.{i}.norm1.weight": np.zeros(1) for i in range(24)},
    }
    config = detect_sam2_config(state)
    assert (config.family, config.model_type) == ("sam2.1", "sam2.1_hiera_base_plus")
    assert config.model["image_encoder"]["trunk"]["embed_dim"] == 112 and config.image_size == 1024
    assert len(SAM2_PRESETS) == 8
    # A custom size needs its config.
    with pytest.raises(CheckpointError, match="--config"):
        detect_sam2_config(sam2_model.state_dict())


def test_hiera_tiny_from_the_official_config_is_detected():
    from samdeploy.export.sam2 import Sam2Config, detect_sam2_config, official_config_path, random_sam2

    tiny = Sam2Config.from_yaml(official_config_path("configs/sam2.1/sam2.1_hiera_t.yaml"))
    assert detect_sam2_config(random_sam2(tiny, seed=0).state_dict()).model_type == "sam2.1_hiera_tiny"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    from samdeploy.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_export_with_config_then_inspect(sam2_checkpoint, tmp_path, capsys):
    out = tmp_path / "pkg"
    code, stdout, stderr = _run(
        capsys,
        "export",
        str(sam2_checkpoint),
        "--output",
        str(out),
        "--config",
        str(SAM2_TEST_CONFIG),
        "--simplify",
        "none",
        "--no-validate",
    )
    assert code == 0, stderr
    assert "image_encoder.onnx" in stdout and "mask_decoder.onnx" in stdout
    assert json.loads((out / "model.json").read_text())["family"] == "sam2.1"
    code, stdout, _ = _run(capsys, "inspect", str(out))
    assert code == 0
    assert "custom, fp32, opset 17" in stdout and "sam2.1, Hiera 16 x 5 blocks" in stdout
    for name in ("high_res_feats_0", "image_embed", "low_res_masks", "every checksum matches"):
        assert name in stdout


def test_cli_export_of_a_custom_size_without_config_says_what_to_do(sam2_checkpoint, tmp_path, capsys):
    code, _, stderr = _run(capsys, "export", str(sam2_checkpoint), "--output", str(tmp_path / "pkg"))
    assert code == 2
    assert "pass its Hydra config with --config" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "pkg").exists()


def test_bad_config_file_is_a_checkpoint_error(sam2_checkpoint, tmp_path):
    from samdeploy.export import export_model

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  image_size: 256\n")
    with pytest.raises(CheckpointError, match="not a SAM 2 config"):
        export_model(sam2_checkpoint, tmp_path / "pkg", config=bad)
    with pytest.raises(CheckpointError, match="not found"):
        export_model(sam2_checkpoint, tmp_path / "pkg", config=tmp_path / "missing.yaml")


def test_nan_weights_are_refused_before_tracing(sam2_checkpoint, tmp_path):
    # Why: every output of NaN weights is NaN and no comparison with NaN exceeds a limit, so a SAM 2
    # export without the weights check would validate and write a package of NaN.
    import torch

    from samdeploy.export import export_model

    state = torch.load(sam2_checkpoint, map_location="cpu", weights_only=True)
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        export_model(broken, tmp_path / "out", config=SAM2_TEST_CONFIG)
    assert not (tmp_path / "out").exists()
