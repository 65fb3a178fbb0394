"""The scene generator: deterministic, varied, and with exact, consistent instance masks."""

from __future__ import annotations

import numpy as np
import pytest

from samdeploy.training.scenes import (
    MIN_OBJECT_FRACTION,
    SceneConfig,
    generate_scene,
    mask_iou,
    mask_to_box,
    random_interior_points,
)


def test_same_seed_same_scene() -> None:
    first, second = generate_scene(7), generate_scene(7)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_different_seeds_differ() -> None:
    assert not np.array_equal(generate_scene(1).labels, generate_scene(2).labels)


@pytest.mark.parametrize("seed", range(12))
def test_masks_are_consistent(seed: int) -> None:
    scene = generate_scene(seed)
    height, width = scene.labels.shape
    assert scene.image.shape == (height, width, 3)
    assert scene.image.dtype == np.uint8
    masks = scene.masks()
    assert masks.shape == (scene.num_objects, height, width)
    # Every object is visible, no pixel belongs to two objects, and the masks agree with the label map.
    assert masks.any(axis=(1, 2)).all()
    assert masks.sum(axis=0).max() <= 1
    np.testing.assert_array_equal(masks.any(axis=0), scene.labels > 0)
    for index in scene.promptable_objects():
        assert scene.mask(index).sum() >= MIN_OBJECT_FRACTION * height * width


def test_sizes_and_aspect_ratios_vary() -> None:
    config = SceneConfig()
    shapes = {generate_scene(seed, config).labels.shape for seed in range(30)}
    long_sides = [max(shape) for shape in shapes]
    aspects = [shape[1] / shape[0] for shape in shapes]
    assert len(shapes) == 30
    assert config.long_side[0] <= min(long_sides) and max(long_sides) <= config.long_side[1]
    assert min(aspects) < 0.8 and max(aspects) > 1.25


def test_objects_are_drawn_in_their_own_colors() -> None:
    """Each object's pixels differ from the background's on average (the masks match what is drawn)."""
    scene = generate_scene(3, SceneConfig(noise_sigma=(0.0, 0.0), blur_probability=0.0))
    background = scene.image[scene.labels == 0].astype(float).mean(axis=0)
    for index in scene.promptable_objects():
        inside = scene.image[scene.mask(index)].astype(float).mean(axis=0)
        assert np.linalg.norm(inside - background) > 10


def test_prompt_helpers() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:25] = True
    np.testing.assert_array_equal(mask_to_box(mask), [10, 5, 24, 8])
    points = random_interior_points(mask, 50, np.random.default_rng(0))
    assert mask[points[:, 1].astype(int), points[:, 0].astype(int)].all()
    assert mask_iou(mask, mask) == 1.0
    half = mask.copy()
    half[:, 10:17] = False
    assert mask_iou(half, mask) == pytest.approx(32 / 60)
    with pytest.raises(ValueError):
        mask_to_box(np.zeros((4, 4), bool))
