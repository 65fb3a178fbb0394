"""A client decodes in its own process, as the official web demo does: the embedding from
``/embedding``, the decoder from ``/v1/model/decoder.onnx``, the official decoder inputs built by
hand (no samdeploy code), onnxruntime; its masks equal the server's."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils


def test_client_side_decode_matches_server(client: TestClient, image_id: str) -> None:
    manifest = client.get("/v1/model").json()
    response = client.get(f"/v1/images/{image_id}/embedding")
    embedding = np.load(io.BytesIO(response.content))
    height, width = (int(v) for v in response.headers["X-Original-Size"].split(","))
    new_h, new_w = (int(v) for v in response.headers["X-Input-Size"].split(","))
    session = ort.InferenceSession(
        client.get("/v1/model/decoder.onnx").content, providers=["CPUExecutionProvider"]
    )
    points = np.array([[387.0, 241.0], [150.0, 120.0]])
    labels = np.array([1.0, 0.0])
    # The official recipe: scale XY into the resized frame, append the padding point (0, 0, -1).
    scaled = points * np.array([new_w / width, new_h / height])
    mask_size = manifest["mask_input_size"]
    feeds = {
        "image_embeddings": embedding,
        "point_coords": np.concatenate([scaled, [[0.0, 0.0]]])[None].astype(np.float32),
        "point_labels": np.concatenate([labels, [-1.0]])[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, *mask_size), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array([height, width], dtype=np.float32),
    }
    logits, scores, _ = session.run(None, feeds)
    # The decoder gives all four mask tokens: 0 the single-mask answer, 1..3 the multimask ones.
    local, scores = logits[0, 1:] > 0.0, scores[0, 1:]
    answer = client.post(
        f"/v1/images/{image_id}/segment", json={"points": points.tolist(), "labels": [1, 0]}
    ).json()
    served = np.stack(
        [
            mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()})
            for m in answer["masks"]
        ]
    ).astype(bool)
    assert local.shape == served.shape == (3, height, width)
    np.testing.assert_array_equal(local, served)
    np.testing.assert_allclose(scores, [m["score"] for m in answer["masks"]], rtol=1e-5)
