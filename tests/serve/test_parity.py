"""The server's masks equal ``SamPredictor``'s on the same image and prompts, in every format,
on the embedded default model and on the random-weight ``tiny_package`` (whose parity with the
official predictor the sam tests establish)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils
from serve_helpers import EXAMPLE, make_client, png_bytes, random_image

from samdeploy import SamAutomaticMaskGenerator, SamPredictor, load_model
from samdeploy.sam.images import load_image
from samdeploy.sam.results import mask_bbox


@dataclass
class Case:
    name: str
    client: TestClient
    predictor: SamPredictor
    image_id: str
    image: np.ndarray
    point: list[float]
    other: list[float]
    box: list[float]


@pytest.fixture(scope="module", params=["default", "tiny"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    if request.param == "default":
        package: Path | None = None
        data = EXAMPLE.read_bytes()
        image = load_image(EXAMPLE)
        point, other, box = [387.0, 241.0], [150.0, 120.0], [300.0, 160.0, 450.0, 290.0]
    else:
        package = request.getfixturevalue("tiny_package")
        image = random_image(90, 160, seed=3)
        data = png_bytes(image)
        point, other, box = [80.0, 45.0], [20.5, 70.25], [10.0, 10.0, 100.0, 80.0]
    predictor = SamPredictor(load_model(package, threads=1))
    predictor.set_image(image)
    with make_client(model=package) as client:
        image_id = client.post("/v1/images", content=data).json()["image_id"]
        yield Case(request.param, client, predictor, image_id, image, point, other, box)
    predictor.model.close()


def decode(mask: dict, height: int, width: int) -> np.ndarray:
    """An API ``<mask>`` in any format back to an HxW bool array."""
    if "rle" in mask:
        rle = {"size": mask["rle"]["size"], "counts": mask["rle"]["counts"].encode()}
        return mask_utils.decode(rle).astype(bool)
    if "png" in mask:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(mask["png"])))) == 255
    if "crop" in mask:
        full = np.zeros((height, width), dtype=bool)
        x, y, w, h = mask["crop"]["bbox"]
        if w and h:
            crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask["crop"]["png"])))) == 255
            assert crop.shape == (h, w)
            full[y : y + h, x : x + w] = crop
        return full
    canvas = np.zeros((height, width), dtype=np.uint8)
    for polygon in mask["polygons"]:
        cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes (background not 4-connected to the border) filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


def expected_masks(masks: np.ndarray, fmt: str) -> np.ndarray:
    """What the format can hold of each mask: polygons at tolerance 0 are the mask without holes."""
    return np.stack([fill_holes(m) for m in masks]) if fmt == "polygons" else masks


def check_answer(answer: dict, masks: np.ndarray, scores: np.ndarray, fmt: str) -> None:
    """An answer's C (or B*C) masks equal the predictor's ``masks`` (...xHxW) and ``scores``."""
    masks = masks.reshape(-1, *masks.shape[-2:])
    scores = scores.reshape(-1)
    height, width = masks.shape[-2:]
    assert (answer["height"], answer["width"]) == (height, width)
    assert len(answer["masks"]) == len(masks)
    assert answer["best"] == int(np.argmax(scores))
    got = np.stack([decode(m, height, width) for m in answer["masks"]])
    np.testing.assert_array_equal(got, expected_masks(masks, fmt))
    np.testing.assert_allclose([m["score"] for m in answer["masks"]], scores, rtol=1e-6)
    assert [m["area"] for m in answer["masks"]] == [int(m.sum()) for m in masks]
    assert [m["bbox"] for m in answer["masks"]] == [mask_bbox(m) for m in masks]


FORMATS = ("rle", "polygons", "png", "crop")


def segment(case: Case, body: dict) -> dict:
    response = case.client.post(f"/v1/images/{case.image_id}/segment", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("fmt", FORMATS)
def test_point_prompt(case: Case, fmt: str) -> None:
    extra = {"polygon_tolerance": 0} if fmt == "polygons" else {}
    answer = segment(case, {"points": [case.point], "labels": [1], "format": fmt, **extra})
    masks, scores, _ = case.predictor.predict(point_coords=np.array([case.point]), point_labels=np.array([1]))
    check_answer(answer, masks, scores, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_with_points_single_mask(case: Case, fmt: str) -> None:
    body = {"points": [case.point, case.other], "labels": [1, 0], "box": case.box, "multimask": False}
    answer = segment(case, {**body, "format": fmt, "polygon_tolerance": 0})
    masks, scores, _ = case.predictor.predict(
        point_coords=np.array([case.point, case.other]),
        point_labels=np.array([1, 0]),
        box=np.array(case.box),
        multimask_output=False,
    )
    check_answer(answer, masks, scores, fmt)


def test_batch_of_boxes(case: Case) -> None:
    boxes = [case.box, [0.0, 0.0, 40.0, 30.0], [5.0, 5.0, 6.0, 6.0]]
    answer = segment(case, {"boxes": boxes})
    masks, scores, _ = case.predictor.predict(box=np.array(boxes))
    assert masks.shape[:2] == (3, 3)
    check_answer(answer, masks, scores, "rle")


def test_refinement_by_logits_handle(case: Case) -> None:
    first = segment(case, {"points": [case.point], "labels": [1]})
    masks, scores, low_res = case.predictor.predict(
        point_coords=np.array([case.point]), point_labels=np.array([1])
    )
    best = int(np.argmax(scores))
    body = {"points": [case.point, case.other], "labels": [1, 0], "multimask": False}
    second = segment(case, {**body, "mask_input": first["logits_handle"]})
    masks, scores, _ = case.predictor.predict(
        point_coords=np.array([case.point, case.other]),
        point_labels=np.array([1, 0]),
        mask_input=low_res[best][None],
        multimask_output=False,
    )
    check_answer(second, masks, scores, "rle")


def test_prompt_list_in_one_decoder_call(case: Case) -> None:
    prompts = [{"points": [p], "labels": [1]} for p in (case.point, case.other)]
    answer = segment(case, {"prompts": prompts, "format": "png"})
    masks, scores, _ = case.predictor.predict_batch(
        point_coords=np.array([[case.point], [case.other]]), point_labels=np.ones((2, 1))
    )
    for result, m, s in zip(answer["results"], masks, scores, strict=True):
        check_answer(result, m, s, "png")


def test_prompt_list_of_mixed_shapes(case: Case) -> None:
    prompts = [{"points": [case.point], "labels": [1]}, {"box": case.box, "multimask": False}]
    answer = segment(case, {"prompts": prompts})
    point = case.predictor.predict(point_coords=np.array([case.point]), point_labels=np.array([1]))
    box = case.predictor.predict(box=np.array(case.box), multimask_output=False)
    check_answer(answer["results"][0], point[0], point[1], "rle")
    check_answer(answer["results"][1], box[0], box[1], "rle")


def test_polygon_tolerance_simplifies(case: Case) -> None:
    exact = segment(
        case, {"points": [case.point], "labels": [1], "format": "polygons", "polygon_tolerance": 0}
    )
    loose = segment(
        case, {"points": [case.point], "labels": [1], "format": "polygons", "polygon_tolerance": 3}
    )
    for a, b in zip(exact["masks"], loose["masks"], strict=True):
        if a["area"] > 100:
            assert sum(map(len, b["polygons"])) < sum(map(len, a["polygons"]))


def test_everything_job_equals_generator(case: Case) -> None:
    options = {"points_per_side": 6, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.7}
    job = case.client.post(f"/v1/images/{case.image_id}/everything", json=options).json()
    case.client.app.state.services.jobs.join()
    done = case.client.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["status"] == "done", done["error"]
    expected = SamAutomaticMaskGenerator(case.predictor.model, output_mode="coco_rle", **options).generate(
        case.image
    )
    assert len(done["records"]) == len(expected)
    if case.name == "default":  # the trained model finds the example's shapes
        assert expected
    for got, want in zip(done["records"], expected, strict=True):
        assert got["segmentation"] == want["segmentation"]
        assert got["bbox"] == want["bbox"] and got["area"] == want["area"]
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], rel=1e-6)


def test_a_lone_click_decodes_on_the_solo_threads(
    example_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: by default a click that has the server to itself decodes on every core
    (``--solo-threads``). Its answer must be the in-process model's on the same thread settings,
    and the click must really take the solo session (counted in /metrics), not a one-thread one."""
    from samdeploy.engine.inference import RunCount
    from samdeploy.serve.settings import ServeSettings

    solo = ServeSettings(threads=1).decoder_solo_threads
    if solo is None:
        pytest.skip("one CPU: nothing to run solo on")
    # A run count of the test's own: no other test's background run may look concurrent.
    monkeypatch.setattr("samdeploy.engine.inference.RUNS", RunCount())
    predictor = SamPredictor(load_model(threads=1, solo_threads=solo))
    predictor.set_image(load_image(EXAMPLE))
    point, box = [387.0, 241.0], [300.0, 160.0, 450.0, 290.0]
    with make_client(solo_threads=0) as client:
        image_id = client.post("/v1/images", content=example_png).json()["image_id"]
        for body, prompt in (
            (
                {"points": [point], "labels": [1]},
                {"point_coords": np.array([point]), "point_labels": np.array([1])},
            ),
            ({"box": box, "multimask": False}, {"box": np.array(box), "multimask_output": False}),
        ):
            response = client.post(f"/v1/images/{image_id}/segment", json=body)
            assert response.status_code == 200, response.text
            masks, scores, _ = predictor.predict(**prompt)
            check_answer(response.json(), masks, scores, "rle")
        node = client.app.state.services.model.prepared_decode_graph.nodes["mask_decoder"]
        assert node.solo and node.solo_runs == 2
        assert "samdeploy_segments_alone_total 2.0" in client.get("/metrics").text
    predictor.model.close()
