"""The quality measurement, checked with predictors whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from samdeploy.training.evaluation import center_point, evaluate, grid_ceiling, held_out_scene


class OraclePredictor:
    """Answers every prompt with the exact mask of the object under the first positive point or box centre."""

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.scene = next(
            held_out_scene(i) for i in range(400) if np.array_equal(held_out_scene(i).image, image)
        )

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        if point_coords is not None:
            x, y = point_coords[0]
        else:
            # The tight box's object: the label that fills most of the box.
            x0, y0, x1, y1 = box.astype(int)
            window = self.scene.labels[y0 : y1 + 1, x0 : x1 + 1]
            label = np.bincount(window[window > 0]).argmax()
            y, x = np.argwhere(self.scene.labels == label)[0]
        mask = self.scene.labels == self.scene.labels[int(y), int(x)]
        count = 3 if multimask_output else 1
        empty = np.zeros_like(mask)
        masks = np.stack([empty, mask, empty][:count] if multimask_output else [mask])
        scores = np.array([0.1, 0.9, 0.2][:count])
        return masks, scores, np.zeros((count, 64, 64), np.float32)


class ConstantPredictor(OraclePredictor):
    """Ignores the prompt: always the whole foreground."""

    def predict(self, *args, multimask_output=True, **kwargs):
        count = 3 if multimask_output else 1
        mask = self.scene.labels > 0
        return np.stack([mask] * count), np.linspace(0.5, 0.9, count), np.zeros((count, 64, 64), np.float32)


def test_oracle_scores_one() -> None:
    report = evaluate(OraclePredictor(), scenes=3)
    assert report.objects > 3
    for value in (
        report.point_best_of_3,
        report.point_single,
        report.box_single,
        report.box_best_of_3,
        report.points_single,
        report.prompt_dependence,
    ):
        assert value == pytest.approx(1.0)


def test_prompt_independent_predictor_is_caught() -> None:
    report = evaluate(ConstantPredictor(), scenes=3)
    assert report.prompt_dependence == 0.0
    assert report.point_best_of_3 < 0.7


def test_held_out_scenes_are_fixed() -> None:
    np.testing.assert_array_equal(held_out_scene(5).labels, held_out_scene(5).labels)


def test_center_point_is_deep_inside() -> None:
    mask = np.zeros((12, 21), bool)
    mask[2:11, 8:17] = True
    np.testing.assert_array_equal(center_point(mask), [[12, 6]])


def test_grid_ceiling_grows_with_the_grid() -> None:
    """Perfect logits lose only at boundaries: nearly 1 on a fine grid, less on a coarse one."""
    coarse, fine = (grid_ceiling(256, size, scenes=4) for size in (32, 128))
    official = grid_ceiling(1024, 256, scenes=4)  # SAM's own 1024 input and 256x256 logits
    assert 0.5 < coarse < fine < official <= 1.0
    assert official > 0.99
