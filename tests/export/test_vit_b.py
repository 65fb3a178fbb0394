"""Full-size random-weight vit_b: the real architecture, exported once and checked against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from samdeploy.export import PRESETS, SamConfig, synthetic_image
from samdeploy.export.layout import token_grids
from samdeploy.export.validate import Prompt, _encoder_input, decoder_feeds, torch_decoder
from samdeploy.package import ModelPackage


def test_vit_b_package_manifest(vit_b_package):
    package = ModelPackage.load(vit_b_package, verify=True)
    manifest = package.manifest
    assert package.model_type == "vit_b"
    assert SamConfig.from_json(manifest["architecture"]) == PRESETS["vit_b"]
    assert package.image_size == 1024 and manifest["embedding_size"] == [64, 64]
    assert package.mask_input_size == (256, 256)
    assert package.model("image_encoder").outputs[0].shape == (1, 256, 64, 64)
    # Weights under the protobuf limit stay inside the .onnx: no external-data file.
    assert set(manifest["files"]) == {
        "image_encoder.onnx",
        "mask_decoder.onnx",
        "mask_decoder_low_res.onnx",
        "mask_decoder_image.onnx",
        "mask_decoder_prepared.onnx",
    }
    report = manifest["export"]
    assert report["validation"]["passed"]
    # The 64x64 grid's four global blocks are banded (export default), and validated as such.
    assert report["nodes"]["image_encoder"]["chunked_attention_blocks"] == 4
    assert report["nodes"]["image_encoder"]["simplified"] < report["nodes"]["image_encoder"]["traced"]
    # ... and its residual stream runs as rows of tokens: no layer norm reads the 64x64 grid.
    assert report["nodes"]["image_encoder"]["token_rows"] > 0
    assert token_grids(onnx.load(str(package.encoder_path))) == set()


def test_vit_b_matches_pytorch(vit_b_package, vit_b_sam):
    """An image other than the one export validated with, ONNX end to end against the official modules."""
    package = ModelPackage.load(vit_b_package)
    image = synthetic_image(700, 500, seed=7)
    x = _encoder_input(vit_b_sam, image)
    with torch.no_grad():
        reference = vit_b_sam.image_encoder(x)
    encoder = ort.InferenceSession(str(package.encoder_path), providers=["CPUExecutionProvider"])
    embedding = encoder.run(None, {"image": x.numpy()})[0]
    expected = reference.numpy()
    cosine = float((embedding * expected).sum() / np.linalg.norm(embedding) / np.linalg.norm(expected))
    assert cosine > 0.9999
    assert np.abs(embedding - expected).max() < 1e-3 * max(1.0, float(np.abs(expected).max()))

    decoder = ort.InferenceSession(str(package.decoder_path), providers=["CPUExecutionProvider"])
    boxes = np.array([[50, 60, 300, 400], [200, 300, 480, 690], [10, 10, 490, 690]], float)
    prompts = [
        Prompt("points", (700, 500), np.array([[250.0, 350.0], [100.0, 600.0]]), np.array([1, 0])),
        Prompt("boxes", (700, 500), boxes=boxes),
    ]
    for prompt in prompts:
        got = decoder.run(None, decoder_feeds(vit_b_sam, prompt, embedding, None))
        want = torch_decoder(vit_b_sam, prompt, reference, None)
        assert got[0].shape == want[0].shape == (len(boxes) if prompt.boxes is not None else 1, 4, 700, 500)
        assert np.mean((got[0] > 0) == (want[0] > 0)) > 0.999
        np.testing.assert_allclose(got[1], want[1], atol=1e-3)
        np.testing.assert_allclose(got[2], want[2], atol=1e-2 * max(1.0, float(np.abs(want[2]).max())))
