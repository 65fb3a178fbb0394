"""Export of small custom-config SAM models: the package, its manifest, and ONNX vs PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from samdeploy.export import SamConfig, export_model
from samdeploy.export.validate import Prompt, decoder_feeds, torch_decoder
from samdeploy.package import ModelPackage


def test_tiny_package_loads_and_verifies(tiny_package, tiny_sam_config):
    package = ModelPackage.load(tiny_package, verify=True)
    manifest = package.manifest
    assert package.model_type == "custom"
    assert package.image_size == 256
    assert manifest["embedding_size"] == [16, 16]
    assert package.mask_input_size == (64, 64)
    assert SamConfig.from_json(manifest["architecture"]) == tiny_sam_config
    assert manifest["preprocessing"]["normalize"] == "runtime"
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert set(manifest["files"]) == {
        "image_encoder.onnx",
        "mask_decoder.onnx",
        "mask_decoder_low_res.onnx",
        "mask_decoder_image.onnx",
        "mask_decoder_prepared.onnx",
    }
    assert package.prompt_decoder == "mask_decoder_low_res"
    report = manifest["export"]
    assert {"load", "trace_image_encoder", "trace_mask_decoder", "validate"} <= set(report["timings"])
    assert report["simplify"] == "onnxsim" and report["quantize"] == "none"
    assert report["nodes"]["image_encoder"]["simplified"] < report["nodes"]["image_encoder"]["traced"]
    validation = report["validation"]
    assert validation["passed"] is True
    assert validation["worst"]["embeddings_cosine"] > 0.9999
    assert validation["worst"]["low_res_logits_rel"] < 1e-4
    assert set(validation["decoder"]) >= {
        "point",
        "points_with_negatives",
        "box",
        "box_and_point",
        "mask_input",
    }


def test_tensor_specs_match_the_onnx_files(tiny_package):
    package = ModelPackage.load(tiny_package)
    for role in ("image_encoder", "mask_decoder", "mask_decoder_low_res"):
        session = ort.InferenceSession(str(package.model_path(role)), providers=["CPUExecutionProvider"])
        entry = package.model(role)
        assert [i.name for i in session.get_inputs()] == [t.name for t in entry.inputs]
        assert [o.name for o in session.get_outputs()] == [t.name for t in entry.outputs]
        for spec, actual in zip(entry.inputs, session.get_inputs(), strict=True):
            assert len(spec.shape) == len(actual.shape)
            for want, got in zip(spec.shape, actual.shape, strict=True):
                assert want == got if isinstance(want, int) else isinstance(got, str)


@pytest.fixture(scope="module")
def decoder(tiny_package):
    package = ModelPackage.load(tiny_package)
    return ort.InferenceSession(str(package.decoder_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def embedding(tiny_sam):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(1, 256, 16, 16, generator=generator)


def test_batch_of_boxes_equals_separate_calls(decoder, tiny_sam, embedding):
    boxes = np.array([[10, 20, 200, 150], [50, 60, 300, 220], [0, 0, 319, 239], [100, 100, 120, 130]], float)
    prompt = Prompt("boxes", (240, 320), boxes=boxes)
    batched = decoder.run(None, decoder_feeds(tiny_sam, prompt, embedding.numpy(), None))
    assert batched[0].shape == (4, 4, 240, 320)
    assert batched[1].shape == (4, 4)
    assert batched[2].shape == (4, 4, 64, 64)
    reference = torch_decoder(tiny_sam, prompt, embedding, None)
    for got, want in zip(batched, reference, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    for i, box in enumerate(boxes):
        single = decoder.run(
            None, decoder_feeds(tiny_sam, Prompt("box", (240, 320), boxes=box[None]), embedding.numpy(), None)
        )
        for got, whole in zip(single, batched, strict=True):
            np.testing.assert_allclose(got[0], whole[i], atol=1e-5, rtol=1e-5)


def test_batch_of_points_with_shared_mask_input(decoder, tiny_sam, embedding):
    """64 single-point prompts in one call, one mask_input broadcast to all (segment-everything style)."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 300, (64, 1, 2)).astype(np.float32)
    feeds = decoder_feeds(
        tiny_sam, Prompt("p", (300, 300), points[0], np.array([1])), embedding.numpy(), None
    )
    feeds["point_coords"] = np.concatenate([points, np.zeros((64, 1, 2), np.float32)], axis=1)
    feeds["point_labels"] = np.tile(np.array([[1.0, -1.0]], np.float32), (64, 1))
    masks, scores, low_res = decoder.run(None, feeds)
    assert masks.shape == (64, 4, 300, 300) and scores.shape == (64, 4) and low_res.shape == (64, 4, 64, 64)
    for i in (0, 31, 63):
        one = {
            **feeds,
            "point_coords": feeds["point_coords"][i : i + 1],
            "point_labels": feeds["point_labels"][i : i + 1],
        }
        single = decoder.run(None, one)
        np.testing.assert_allclose(single[1][0], scores[i], atol=1e-5)
        np.testing.assert_allclose(single[2][0], low_res[i], atol=1e-5)


@pytest.mark.parametrize("original_size", [(240, 320), (320, 240), (1000, 37), (5, 700)])
def test_any_aspect_ratio_matches_torch(decoder, tiny_sam, embedding, original_size):
    height, width = original_size
    prompt = Prompt("point", original_size, np.array([[0.4 * width, 0.6 * height]]), np.array([1]))
    got = decoder.run(None, decoder_feeds(tiny_sam, prompt, embedding.numpy(), None))
    want = torch_decoder(tiny_sam, prompt, embedding, None)
    assert got[0].shape == (1, 4, height, width)
    np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_custom_config_other_input_size_exports(tmp_path):
    """A 128 px model with a 3-block ViT of 3 heads and 2 global blocks, exported from a plain state dict."""
    config = SamConfig(
        encoder_embed_dim=48,
        encoder_depth=3,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(0, 2),
        image_size=128,
        window_size=3,
        mlp_ratio=2.0,
    )
    from samdeploy.export import build_sam

    torch.manual_seed(5)
    state = build_sam(config).state_dict()
    report = export_model(state, tmp_path / "pkg", simplify="none")
    package = ModelPackage.load(tmp_path / "pkg", verify=True)
    assert SamConfig.from_json(package.manifest["architecture"]) == config
    assert package.image_size == 128 and package.manifest["embedding_size"] == [8, 8]
    assert report.validation["passed"]
    assert "simplified" not in report.nodes["image_encoder"]


def test_external_data_package_loads_from_anywhere(tmp_path, tiny_checkpoint, monkeypatch):
    """The >2 GB path (vit_h), forced on a tiny model: one external-data file, relative, movable."""
    import os
    import shutil

    import samdeploy.export.optimize as optimize

    monkeypatch.setattr(optimize, "_SINGLE_FILE_LIMIT", 1 << 20)
    export_model(tiny_checkpoint, tmp_path / "pkg", validate=False)
    package = ModelPackage.load(tmp_path / "pkg", verify=True)
    data = tmp_path / "pkg" / "image_encoder.onnx.data"
    assert set(package.manifest["files"]) == {
        "image_encoder.onnx",
        "image_encoder.onnx.data",
        "mask_decoder.onnx",
        "mask_decoder.onnx.data",
        "mask_decoder_low_res.onnx",
        "mask_decoder_low_res.onnx.data",
        "mask_decoder_image.onnx",  # its weights are under the 1 MiB limit set here
        "mask_decoder_prepared.onnx",
        "mask_decoder_prepared.onnx.data",
    }
    assert (tmp_path / "pkg" / "image_encoder.onnx").stat().st_size < data.stat().st_size
    assert data.stat().st_mode & 0o777 == (tmp_path / "pkg" / "image_encoder.onnx").stat().st_mode & 0o777

    shutil.move(tmp_path / "pkg", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved = ModelPackage.load(tmp_path / "moved", verify=True)
    session = ort.InferenceSession(str(moved.encoder_path), providers=["CPUExecutionProvider"])
    image = np.zeros((1, 3, 256, 256), np.float32)
    embedding = session.run(None, {"image": image})[0]
    assert embedding.shape == (1, 256, 16, 16) and np.isfinite(embedding).all()
    assert os.getcwd() == str(elsewhere)


def test_low_res_decoder_equals_the_official_graph(decoder, tiny_package, tiny_sam, embedding):
    """The companion decoder gives the official graph's scores and low-res logits for every prompt kind."""
    package = ModelPackage.load(tiny_package)
    low_res = ort.InferenceSession(
        str(package.model_path("mask_decoder_low_res")), providers=["CPUExecutionProvider"]
    )
    mask_input = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    prompts = [
        (Prompt("point", (240, 320), np.array([[100.0, 80.0]]), np.array([1])), None),
        (
            Prompt("points", (240, 320), np.array([[10.0, 20.0], [200.0, 100.0]]), np.array([1, 0])),
            mask_input,
        ),
        (Prompt("boxes", (240, 320), boxes=np.array([[10, 20, 200, 150], [50, 60, 300, 220]], float)), None),
    ]
    for prompt, previous in prompts:
        feeds = decoder_feeds(tiny_sam, prompt, embedding.numpy(), previous)
        _, official_iou, official_low_res = decoder.run(None, feeds)
        del feeds["orig_im_size"]
        feeds["mask_iou_threshold"] = np.full(4, -np.inf, np.float32)  # the filter off: every prompt
        iou, logits, kept = low_res.run(None, feeds)
        assert kept.tolist() == list(range(len(iou)))
        np.testing.assert_allclose(iou, official_iou, atol=1e-6)
        np.testing.assert_allclose(logits, official_low_res, atol=1e-5)


def test_large_grid_export_chunks_global_attention_and_still_matches_pytorch(tmp_path):
    """A 48x48 grid (2304 tokens) gets the banded global attention by default; validation vs PyTorch passes."""
    config = SamConfig(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=384,
        patch_size=8,
        window_size=8,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    )
    from samdeploy.export import build_sam

    torch.manual_seed(7)
    state = build_sam(config).state_dict()
    report = export_model(state, tmp_path / "chunked")
    assert report.nodes["image_encoder"]["chunked_attention_blocks"] == 1
    assert report.nodes["image_encoder"]["token_rows"] > 0  # samdeploy.export.layout
    assert report.validation["passed"]
    assert report.manifest["export"]["attention_rows"] == 4
    traced = export_model(state, tmp_path / "traced", attention_rows=0, validate=False)
    assert "chunked_attention_blocks" not in traced.nodes["image_encoder"]
    image = np.random.default_rng(1).normal(size=(1, 3, 384, 384)).astype(np.float32)
    embeddings = [
        ort.InferenceSession(str(tmp_path / name / "image_encoder.onnx")).run(None, {"image": image})[0]
        for name in ("chunked", "traced")
    ]
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-5)
