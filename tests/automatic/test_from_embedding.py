"""``SamAutomaticMaskGenerator.generate_from_embedding``: the records of ``generate`` from an image's
cached embedding, with progress after every decoder batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from samdeploy.sam.automatic import GeneratorOptionError, SamAutomaticMaskGenerator


def assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for ours, theirs in zip(got, want, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            if isinstance(ours[key], np.ndarray):
                np.testing.assert_array_equal(ours[key], theirs[key])
            else:
                assert ours[key] == theirs[key], key


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_records_equal_generate(tiny_model, scene, crop_n_layers: int) -> None:
    image = scene(70, 90, seed=3)
    generator = SamAutomaticMaskGenerator(
        tiny_model,
        points_per_side=6,
        points_per_batch=10,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=crop_n_layers,
    )
    want = generator.generate(image)
    assert want  # thresholds off: the comparison covers real records
    calls: list[tuple[int, int]] = []
    embedding = tiny_model.encode(image)
    got = generator.generate_from_embedding(
        embedding, image if crop_n_layers else None, lambda done, total: calls.append((done, total))
    )
    assert_same_records(got, want)
    # 36 points in batches of 10: 4 batches per crop; layer 1 adds 4 crops with as many points.
    total = 4 * (1 + 4 * crop_n_layers)
    assert calls == [(done, total) for done in range(1, total + 1)]


def test_refuses_a_missing_or_other_image(tiny_model, scene) -> None:
    image = scene(40, 50)
    embedding = tiny_model.encode(image)
    with pytest.raises(GeneratorOptionError, match="pass the image too"):
        SamAutomaticMaskGenerator(tiny_model, points_per_side=4, crop_n_layers=1).generate_from_embedding(
            embedding
        )
    with pytest.raises(GeneratorOptionError, match="pass the image that was encoded"):
        SamAutomaticMaskGenerator(tiny_model, points_per_side=4).generate_from_embedding(
            embedding, scene(41, 50)
        )
