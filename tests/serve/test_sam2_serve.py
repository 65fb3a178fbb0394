"""The server takes a SAM 2.1 package unchanged: its segment answers equal
``samdeploy.SAM2ImagePredictor``'s and its everything jobs ``SAM2AutomaticMaskGenerator``'s, on the
small random-weight SAM 2.1 package of tests/sam2 (whose parity with the official sam2 code the
sam2 tests establish)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import make_client, png_bytes, random_image
from test_parity import check_answer

import samdeploy

pytest.importorskip("sam2")

# The SAM 2.1 package fixtures of tests/sam2 (built once per run, shared with those tests).
_spec = importlib.util.spec_from_file_location(
    "sam2_fixtures", Path(__file__).parents[1] / "sam2" / "conftest.py"
)
_fixtures = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_fixtures)  # type: ignore[union-attr]
sam2_config = _fixtures.sam2_config
_sam2_artifacts = _fixtures._sam2_artifacts
sam2_package = _fixtures.sam2_package

POINT, OTHER, BOX = [80.0, 45.0], [20.5, 70.25], [10.0, 10.0, 100.0, 80.0]


@pytest.fixture(scope="module")
def served(sam2_package: Path) -> Iterator[tuple]:
    image = random_image(90, 160, seed=3)
    predictor = samdeploy.SAM2ImagePredictor(samdeploy.load_model(sam2_package, threads=1))
    predictor.set_image(image)
    with make_client(model=sam2_package) as client:
        assert isinstance(client.app.state.services.model, samdeploy.Sam2Model)
        image_id = client.post("/v1/images", content=png_bytes(image)).json()["image_id"]
        yield client, image_id, predictor, image
    predictor.model.close()


def test_segment_equals_the_sam2_predictor(served: tuple) -> None:
    client, image_id, predictor, _ = served
    body = {"points": [POINT, OTHER], "labels": [1, 0], "format": "rle"}
    response = client.post(f"/v1/images/{image_id}/segment", json=body)
    assert response.status_code == 200, response.text
    masks, scores, _ = predictor.predict(point_coords=np.array([POINT, OTHER]), point_labels=np.array([1, 0]))
    check_answer(response.json(), masks, scores, "rle")
    response = client.post(f"/v1/images/{image_id}/segment", json={"box": BOX, "multimask": False})
    assert response.status_code == 200, response.text
    masks, scores, _ = predictor.predict(box=np.array(BOX), multimask_output=False)
    check_answer(response.json(), masks, scores, "rle")


def test_everything_job_equals_the_sam2_generator(served: tuple) -> None:
    client, image_id, predictor, image = served
    options = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    job = client.post(f"/v1/images/{image_id}/everything", json=options).json()
    client.app.state.services.jobs.join()
    done = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "done", done["error"]
    expected = samdeploy.SAM2AutomaticMaskGenerator(
        predictor.model, output_mode="coco_rle", **options
    ).generate(image)
    assert expected  # thresholds at 0: the random model's masks are kept
    assert len(done["records"]) == len(expected)
    for got, want in zip(done["records"], expected, strict=True):
        assert got["segmentation"] == want["segmentation"]
        assert got["bbox"] == want["bbox"] and got["area"] == want["area"]
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], rel=1e-6)


def test_client_decoding_routes_say_they_are_for_sam_packages(served: tuple) -> None:
    client, image_id, _, _ = served
    assert client.get("/v1/model").json()["family"] == "sam2.1"
    for url in ("/v1/model/decoder.onnx", f"/v1/images/{image_id}/embedding"):
        response = client.get(url)
        assert response.status_code == 404
        assert "SAM packages only" in response.json()["error"]
