"""The embedded default model: it loads with no path and segments the bundled example in both modes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import samdeploy
from samdeploy.training.evaluation import EXAMPLE_POINT, example_iou, example_scene, held_out_scene
from samdeploy.training.scenes import mask_iou, mask_to_box

ROOT = Path(__file__).resolve().parents[2]
# docs/default-model.md reports the example's IoU (click, best of 3: 0.810; tight box, single mask:
# 0.919 for the shipped model). The click sits on an ellipse partly covered by a star with a hole, an
# ambiguous prompt; the held-out mean IoU (0.808 for one click) is the quality figure. These bounds
# sit a little below.
EXAMPLE_CLICK_IOU = 0.75
EXAMPLE_BOX_IOU = 0.87


@pytest.fixture(scope="module")
def predictor() -> samdeploy.SamPredictor:
    return samdeploy.SamPredictor(samdeploy.load_model())


@pytest.fixture(scope="module")
def example() -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(ROOT / "examples" / "shapes.png").convert("RGB"))
    truth = np.asarray(Image.open(ROOT / "examples" / "shapes_mask.png")) > 127
    return image, truth


def test_bundled_example_is_the_generated_scene(example: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = example
    scene = example_scene()
    np.testing.assert_array_equal(image, scene.image)
    x, y = EXAMPLE_POINT
    np.testing.assert_array_equal(truth, scene.labels == scene.labels[y, x])


def test_default_model_loads() -> None:
    model = samdeploy.load_model()
    assert model.image_size == 256


def test_click_segments_the_example(
    predictor: samdeploy.SamPredictor, example: tuple[np.ndarray, np.ndarray]
) -> None:
    image, truth = example
    assert example_iou(predictor, image, truth) >= EXAMPLE_CLICK_IOU


def test_single_mask_output_is_trained(
    predictor: samdeploy.SamPredictor, example: tuple[np.ndarray, np.ndarray]
) -> None:
    image, truth = example
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(box=mask_to_box(truth), multimask_output=False)
    assert masks.shape == (1, *truth.shape)
    assert mask_iou(masks[0], truth) >= EXAMPLE_BOX_IOU
    # The IoU head is trained: its score for a good mask is high.
    assert scores[0] > 0.5


def test_different_clicks_give_different_masks(
    predictor: samdeploy.SamPredictor, example: tuple[np.ndarray, np.ndarray]
) -> None:
    image, truth = example
    scene = example_scene()
    other = next(i for i in scene.promptable_objects() if not (scene.mask(i) & truth).any())
    ys, xs = np.nonzero(scene.mask(other))
    predictor.set_image(image)
    first, first_scores, _ = predictor.predict(
        point_coords=np.array([EXAMPLE_POINT]), point_labels=np.ones(1)
    )
    second, second_scores, _ = predictor.predict(
        point_coords=np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]]), point_labels=np.ones(1)
    )
    assert mask_iou(first[first_scores.argmax()], second[second_scores.argmax()]) < 0.5


def test_threshold_diagnostic_matches_a_direct_measurement(predictor: samdeploy.SamPredictor) -> None:
    """tools/diagnose_default_model.py's IoU at threshold 0 is the box IoU the predictor gives."""
    command = [sys.executable, str(ROOT / "tools" / "diagnose_default_model.py"), "threshold"]
    output = subprocess.run(
        [*command, "--start", "10000", "--scenes", "1"], check=True, capture_output=True, text=True
    ).stdout
    rows = {line.split(":")[0]: line for line in output.splitlines()}
    assert set(rows) == {"box", "click"}
    values = {kind: dict(re.findall(r"([+-][\d.]+): ([\d.]+)", row)) for kind, row in rows.items()}
    assert all(len(by_cut) == 9 for by_cut in values.values())
    assert all(0.0 <= float(iou) <= 1.0 for by_cut in values.values() for iou in by_cut.values())
    scene = held_out_scene(10000)
    predictor.set_image(scene.image)
    direct = []
    for obj in scene.promptable_objects():
        truth = scene.mask(obj)
        masks, _, _ = predictor.predict(box=mask_to_box(truth), multimask_output=False)
        direct.append(mask_iou(masks[0], truth))
    assert float(values["box"]["+0"]) == pytest.approx(np.mean(direct), abs=1e-4)
