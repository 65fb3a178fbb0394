"""Parity of samdeploy.sam.amg with segment_anything.utils.amg and torchvision (exact results)."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from segment_anything.utils import amg as official
from torchvision.ops.boxes import batched_nms

from samdeploy.sam import amg

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_masks(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Blobby masks (rectangles, noise, empty and full ones) so boxes and runs vary."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[i, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        elif kind == 1:
            masks[i] = rng.random((h, w)) < rng.random()
        elif kind == 2 and i % 8 == 2:
            masks[i] = True
    return masks


@pytest.mark.parametrize("n_per_side", [4, 7, 32])
def test_point_grid_equals_official(n_per_side: int) -> None:
    assert np.array_equal(amg.build_point_grid(n_per_side), official.build_point_grid(n_per_side))
    ours = amg.build_all_layer_point_grids(n_per_side, 2, 2)
    theirs = official.build_all_layer_point_grids(n_per_side, 2, 2)
    assert len(ours) == len(theirs) == 3
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


@FAST
@given(
    h=st.integers(1, 5000),
    w=st.integers(1, 5000),
    n_layers=st.integers(0, 3),
    overlap=st.floats(0.0, 0.9),
)
def test_crop_boxes_equal_official(h: int, w: int, n_layers: int, overlap: float) -> None:
    assert amg.generate_crop_boxes((h, w), n_layers, overlap) == official.generate_crop_boxes(
        (h, w), n_layers, overlap
    )


@FAST
@given(
    seed=st.integers(0, 2**32 - 1), offset=st.sampled_from([1.0, 0.5, 0.1, 2.0]), scale=st.floats(0.1, 8.0)
)
def test_stability_score_equals_official(seed: int, offset: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((5, 37, 53)) * scale).astype(np.float32)
    # Values exactly at and next to the cuts, where float32-vs-float64 comparisons would differ.
    logits[0, :3, :3] = np.float32(offset)
    logits[1, :3, :3] = np.nextafter(np.float32(-offset), np.float32(0))
    logits[2] = -10.0  # empty union: NaN in both
    ours = amg.calculate_stability_score(logits, 0.0, offset)
    theirs = official.calculate_stability_score(torch.from_numpy(logits), 0.0, offset).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("opencv", [False, True])
@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([1.0, 0.5, 2.0]),
    threshold=st.sampled_from([0.0, 0.7]),
)
def test_masks_and_stability_from_row_blocks_equal_those_of_the_whole_logits(
    opencv: bool, seed: int, offset: float, threshold: float
) -> None:
    """The generator's masks and stability scores made a piece at a time (the logits at the crop's
    size never whole: blocks of rows of every mask, or one mask at a time where OpenCV resizes) are
    those of the whole logits, to the bit."""
    from samdeploy.sam.transforms import MaskGeometry, postprocess_masks

    rng = np.random.default_rng(seed)
    low_res = (rng.standard_normal((4, 64, 64)) * 3).astype(np.float32)
    low_res[3] = -10.0  # empty union: NaN in both
    size = (int(rng.integers(150, 400)), int(rng.integers(150, 400)))
    if opencv:  # twice the resized image (long side 512 for S = 256, an even short side)
        short = 2 * (min(size) // 2)
        size = (512, short) if rng.random() < 0.5 else (short, 512)
    geometry = MaskGeometry.for_image(size, 256, (64, 64))
    resize = geometry.resize()
    assert resize.in_opencv or not opencv
    if not resize.in_opencv:
        assert len(resize.matrices()[0].blocks) > 2  # several blocks of rows
    masks, stability = amg.masks_and_stability(resize.rows(low_res), (4, *size), threshold, offset)
    logits = postprocess_masks(low_res, geometry)
    np.testing.assert_array_equal(masks, logits > np.float32(threshold))
    expected = amg.calculate_stability_score(logits, threshold, offset)
    np.testing.assert_array_equal(stability, expected)
    assert np.isnan(stability[3]) and np.isfinite(stability[:3]).all()
    # What the generator calls: OpenCV's masks as above, else the products' tiles near the edges,
    # the scores counted first and only the masks that pass the filter made.
    from unittest import mock

    from samdeploy.sam import transforms

    minimums = (0, transforms.TILE_MIN_PIXELS)  # tiles forced at this small size, or as set
    for stability_thresh, minimum in product((0.0, float(np.nanmedian(expected))), minimums):
        with mock.patch.object(transforms, "TILE_MIN_PIXELS", minimum):
            assert resize.tiles_pay(4) == (minimum == 0)
            keep, masks, stability = amg.stable_masks(resize, low_res, threshold, offset, stability_thresh)
        np.testing.assert_array_equal(stability, expected)
        passed = (
            np.flatnonzero(expected >= np.float32(stability_thresh)) if stability_thresh else np.arange(4)
        )
        np.testing.assert_array_equal(keep, passed)
        expected_masks = logits[keep] > np.float32(threshold)
        np.testing.assert_array_equal(masks.to_masks(), expected_masks)
        np.testing.assert_array_equal(masks.boxes, amg.batched_mask_to_box(expected_masks))
        assert masks.to_rle() == amg.mask_to_rle(expected_masks)


def test_stable_masks_skip_known_tiles_and_keep_every_bit() -> None:
    """Mask-like logits (a blob each, inside and outside far from the cuts) at a photo's size
    OpenCV cannot take: most tiles are filled and counted from the low-res bounds, and the scores,
    the masks that pass, their boxes and RLEs are still those of the full-size logits; each mask is
    made as tiles, none written whole (the buffer, which must fit, serves the other ways)."""
    from samdeploy.sam.transforms import MaskGeometry, _tile_bounds, postprocess_masks

    yy, xx = np.mgrid[:256, :256]
    low_res = np.stack(
        [
            (r - np.hypot(yy - cy, xx - cx)) * 4
            for cy, cx, r in [(60, 80, 40), (90, 150, 60), (100, 30, 8), (10, 10, 0.5)]
        ]
    ).astype(np.float32)
    low_res[2, :, 128:] = np.nan  # tiles reading a NaN are made, and give what the logits give
    geometry = MaskGeometry.for_image((1500, 2000), 1024, (256, 256))
    resize = geometry.resize()
    assert not resize.in_opencv
    least, largest = _tile_bounds(low_res, *resize.matrices())
    read = ~np.isnan(least)  # of the tiles reading no NaN, most need no product
    assert ((least > 1.01) | (largest < -1.01))[read].mean() > 0.85
    buffer = np.ones((4, 1500, 2000), dtype=bool)
    keep, masks, stability = amg.stable_masks(resize, low_res, 0.0, 1.0, 0.9, out=buffer)
    logits = postprocess_masks(low_res, geometry)
    expected = amg.calculate_stability_score(logits, 0.0, 1.0)
    np.testing.assert_array_equal(stability, expected)
    assert list(keep) == [0, 1] and 0 < expected[2] < 0.9  # the small blob and the speck fail
    np.testing.assert_array_equal(masks.to_masks(), logits[:2] > 0)
    np.testing.assert_array_equal(masks.boxes, amg.batched_mask_to_box(logits[:2] > 0))
    assert masks.to_rle() == amg.mask_to_rle(logits[:2] > 0)
    # Held as tiles: the made pixels (the open tiles along the edges) a small part of the masks'.
    assert isinstance(masks, amg.TiledMasks) and masks.cells.size < 0.1 * 2 * 1500 * 2000
    assert buffer.all()  # untouched: serves the other ways
    # No filter: masks and counts in one pass, every mask kept (the speck too, whose box is small).
    keep, masks, stability = amg.stable_masks(resize, low_res, 0.0, 1.0, 0.0)
    np.testing.assert_array_equal(stability, expected)
    np.testing.assert_array_equal(masks.to_masks(), logits > 0)
    assert masks.to_rle() == amg.mask_to_rle(logits > 0)
    with pytest.raises(
        ValueError, match=r"out is bool \(2, 1500, 2000\), the masks are bool \(4, 1500, 2000\)"
    ):
        amg.stable_masks(resize, low_res, 0.0, 1.0, 0.9, out=buffer[:2])


def test_stable_masks_wider_than_int16_rows_sum_as_officially(monkeypatch) -> None:
    """Rows over 32767 pixels: the official counts sum each row in int16 first, so such masks go
    the way that reproduces it (mask by mask, whole rows), not by tiles."""
    from samdeploy.sam.transforms import MaskResize

    def no_tiles(*args, **kwargs):
        raise AssertionError("counted by tiles")

    monkeypatch.setattr(MaskResize, "count_above", no_tiles)
    low_res = (np.random.default_rng(5).standard_normal((2, 16, 16)) * 3).astype(np.float32)
    resize = MaskResize.direct((16, 16), (100, 33000))
    assert resize.tiles_pay(2) and not resize.in_opencv
    keep, masks, stability = amg.stable_masks(resize, low_res, 0.0, 1.0, 0.0)
    logits = resize(low_res)
    np.testing.assert_array_equal(keep, [0, 1])
    np.testing.assert_array_equal(masks.to_masks(), logits > 0)
    np.testing.assert_array_equal(stability, amg.calculate_stability_score(logits, 0.0, 1.0))


def test_masks_and_stability_write_into_a_given_buffer() -> None:
    """The generator passes one buffer to every chunk of a run: the masks land in it, the same as
    in a fresh array, whatever it held before; a buffer of another shape is refused."""
    from samdeploy.sam.transforms import MaskGeometry

    low_res = (np.random.default_rng(7).standard_normal((3, 64, 64)) * 3).astype(np.float32)
    resize = MaskGeometry.for_image((300, 200), 256, (64, 64)).resize()
    fresh, fresh_stability = amg.masks_and_stability(resize.rows(low_res), (3, 300, 200), 0.0, 1.0)
    buffer = np.ones((3, 300, 200), dtype=bool)
    masks, stability = amg.masks_and_stability(resize.rows(low_res), (3, 300, 200), 0.0, 1.0, out=buffer)
    assert masks is buffer and not fresh.all()
    np.testing.assert_array_equal(masks, fresh)
    np.testing.assert_array_equal(stability, fresh_stability)
    with pytest.raises(ValueError, match=r"out is bool \(2, 300, 200\), the masks are bool \(3, 300, 200\)"):
        amg.masks_and_stability(resize.rows(low_res), (3, 300, 200), 0.0, 1.0, out=buffer[:2])


@pytest.mark.parametrize("shape", [(12, 31, 17), (3, 1, 1), (0, 8, 8), (2, 3, 9, 9), (40, 27)])
def test_mask_to_box_equals_official(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    masks = random_masks(rng, int(np.prod(shape[:-2])), *shape[-2:]).reshape(shape)
    ours = amg.batched_mask_to_box(masks)
    theirs = official.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    assert ours.dtype == np.int64 and ours.shape == (*shape[:-2], 4)
    np.testing.assert_array_equal(ours, theirs)


def test_near_crop_edge_and_uncrop_equal_official() -> None:
    rng = np.random.default_rng(1)
    crop_box, orig_box = [100, 50, 400, 300], [0, 0, 400, 600]
    x0 = rng.integers(0, 300, 200)
    y0 = rng.integers(0, 250, 200)
    boxes = np.stack([x0, y0, x0 + rng.integers(0, 60, 200), y0 + rng.integers(0, 60, 200)], 1)
    ours = amg.is_box_near_crop_edge(boxes, crop_box, orig_box)
    theirs = official.is_box_near_crop_edge(torch.from_numpy(boxes), crop_box, orig_box).numpy()
    assert ours.any() and not ours.all()
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(
        amg.uncrop_boxes_xyxy(boxes, crop_box), official.uncrop_boxes_xyxy(torch.from_numpy(boxes), crop_box)
    )
    points = rng.random((7, 2)) * 300
    np.testing.assert_array_equal(
        amg.uncrop_points(points, crop_box), official.uncrop_points(torch.from_numpy(points), crop_box)
    )
    masks = random_masks(rng, 4, 250, 300)
    np.testing.assert_array_equal(
        amg.uncrop_masks(masks, crop_box, 600, 400),
        official.uncrop_masks(torch.from_numpy(masks), crop_box, 600, 400).numpy(),
    )


def nms_case(seed: int, n: int, n_score_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered integer boxes (many overlaps) and scores drawn from few values (many ties, some NaN)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 200, (max(1, n // 5), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.integers(-6, 7, (n, 2))
    half = rng.integers(0, 30, (n, 2))
    boxes = np.concatenate([c - half, c + half], axis=1).astype(np.int64)
    if n_score_values:
        scores = rng.integers(0, n_score_values, n).astype(np.float32) / 4
        scores[rng.random(n) < 0.05] = np.nan
    else:
        scores = rng.random(n).astype(np.float32)
    return boxes, scores


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    n_score_values=st.sampled_from([0, 1, 2, 5]),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.95]),
)
def test_box_nms_equals_torchvision(seed: int, n: int, n_score_values: int, threshold: float) -> None:
    boxes, scores = nms_case(seed, n, n_score_values)
    ours = amg.box_nms(boxes, scores, threshold)
    theirs = batched_nms(
        torch.from_numpy(boxes).float(), torch.from_numpy(scores), torch.zeros(n), threshold
    ).numpy()
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("n_score_values", [0, 2, 40])
def test_box_nms_equals_torchvision_on_large_inputs(n_score_values: int) -> None:
    # More than 1000 boxes takes torchvision's other code path, which re-sorts the kept indices.
    boxes, scores = nms_case(7, 2500, n_score_values)
    ours = amg.box_nms(boxes, scores, 0.7)
    theirs = batched_nms(
        torch.from_numpy(boxes).float(), torch.from_numpy(scores), torch.zeros(len(boxes)), 0.7
    ).numpy()
    np.testing.assert_array_equal(ours, theirs)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000), n_values=st.integers(1, 6))
def test_tie_order_equals_torch_sort(seed: int, n: int, n_values: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_values, n).astype(np.float32)
    keys[rng.random(n) < 0.05] = np.nan
    expected = torch.from_numpy(keys).sort(0, descending=True)[1].numpy()
    np.testing.assert_array_equal(amg._torch_sort_descending(keys), expected)


@FAST
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 40))
def test_rle_equals_official_and_round_trips(seed: int, h: int, w: int) -> None:
    masks = random_masks(np.random.default_rng(seed), 9, h, w)
    ours = amg.mask_to_rle(masks)
    assert ours == official.mask_to_rle_pytorch(torch.from_numpy(masks))
    for mask, rle in zip(masks, ours, strict=True):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == int(mask.sum())
        coco = amg.coco_encode_rle(rle)
        assert coco == official.coco_encode_rle(rle)
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), mask)
    assert amg.mask_to_rle(masks[:0]) == []
    # Boxes given (the generator's, of the masks uncropped): looser ones search more, find the same.
    loose = amg.batched_mask_to_box(masks) + np.array([-1, -2, 1, 2])
    loose = np.clip(loose, 0, [w - 1, h - 1, w - 1, h - 1])
    assert amg.mask_to_rle(masks, loose) == ours


@FAST
@given(seed=st.integers(0, 2**32 - 1))
def test_boxed_masks_of_a_crop_give_the_official_rles(seed: int) -> None:
    """Masks kept inside their boxes, selected and moved from a crop into the image (without a
    mask at the image's size): the RLEs of the official uncropped masks."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
    crop_box = [x0, y0, int(rng.integers(x0 + 1, width + 1)), int(rng.integers(y0 + 1, height + 1))]
    masks = random_masks(rng, 6, crop_box[3] - y0, crop_box[2] - x0)
    masks[1] = False
    chosen = rng.random(6) < 0.7
    boxed = amg.BoxedMasks.from_masks(masks).select(chosen).uncrop(crop_box, height, width)
    expected = official.uncrop_masks(torch.from_numpy(masks[chosen]), crop_box, height, width)
    assert boxed.to_rle() == official.mask_to_rle_pytorch(expected)
    np.testing.assert_array_equal(boxed.to_masks(), expected.numpy())
    crop_boxes = official.batched_mask_to_box(torch.from_numpy(masks[chosen]))
    np.testing.assert_array_equal(boxed.boxes, official.uncrop_boxes_xyxy(crop_boxes, crop_box).numpy())


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 5, 30, 10_000])
def test_remove_small_regions_equals_official(mode: str, area: int) -> None:
    rng = np.random.default_rng(area)
    for mask in random_masks(rng, 8, 60, 70):
        ours, changed = amg.remove_small_regions(mask, area, mode)
        theirs, their_changed = official.remove_small_regions(mask, area, mode)
        assert changed == their_changed
        np.testing.assert_array_equal(ours, theirs)


def test_remove_small_regions_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="holes"):
        amg.remove_small_regions(np.zeros((3, 3), dtype=bool), 1, "blobs")


def test_mask_candidates_select_and_concat() -> None:
    part = amg.MaskCandidates(
        rles=amg.mask_to_rle(random_masks(np.random.default_rng(0), 3, 4, 5)),
        boxes=np.arange(12, dtype=np.int64).reshape(3, 4),
        iou_preds=np.array([0.1, 0.2, 0.3], dtype=np.float32),
        points=np.arange(6, dtype=np.float64).reshape(3, 2),
        stability_score=np.array([0.9, 0.8, 0.7], dtype=np.float32),
        crop_boxes=np.zeros((3, 4), dtype=np.int64),
    )
    both = amg.MaskCandidates.concat([part, part.select(np.array([2, 0]))])
    assert len(both) == 5
    np.testing.assert_array_equal(both.iou_preds, np.array([0.1, 0.2, 0.3, 0.3, 0.1], dtype=np.float32))
    assert both.rles[3] == part.rles[2]
    assert len(amg.MaskCandidates.concat([])) == 0
