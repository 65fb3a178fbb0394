"""The arithmetic of export validation on hand-built numbers: the figures, the tolerances and the verdict.

An export passes or fails on these few functions; a slip in one (a ``<`` for a ``<=``, a NaN skipped by
``max``) would pass a broken package silently. They are checked here without exporting anything.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from samdeploy.export.validate import (
    LOWER_BOUNDS,
    TOLERANCES,
    Prompt,
    _agreement,
    _compare_embeddings,
    _max_abs,
    _max_rel,
    _prompts,
    _worst,
    cosine,
    decoder_feeds,
    encoder_images,
    failures,
    manifest_encoder_input,
    non_finite,
    synthetic_image,
)

NAN, INF = float("nan"), float("inf")


def test_max_abs_and_max_rel() -> None:
    """Largest difference; relative to the reference's magnitude, but never divided by less than 1."""
    want = np.array([4.0, -8.0, 1.0])
    got = np.array([4.5, -8.0, 0.0])
    assert _max_abs(got, want) == 1.0
    assert _max_rel(got, want) == 1.0 / 8.0
    small = np.array([0.1, -0.2])
    assert _max_rel(small + 0.05, small) == pytest.approx(0.05)  # magnitude below 1: divided by 1


@pytest.mark.parametrize("figure", [_max_abs, _max_rel, _agreement, cosine])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_value_on_either_side_gives_nan(figure, bad) -> None:
    """NaN or infinity in the ONNX output or in the reference makes the figure NaN, which fails every limit."""
    clean = np.array([1.0, 2.0, 3.0])
    broken = np.array([1.0, bad, 3.0])
    assert math.isnan(figure(broken, clean))
    assert math.isnan(figure(clean, broken))


def test_agreement_is_the_share_of_same_sign_logits() -> None:
    """A pixel agrees when both logits are > 0 or both are <= 0 (zero is background, as the mask threshold)."""
    want = np.array([1.0, -1.0, 0.0, 2.0])
    got = np.array([0.5, -0.5, -1.0, -2.0])
    assert _agreement(got, want) == 0.75
    assert _agreement(np.array([0.0]), np.array([1e-9])) == 0.0


def test_cosine() -> None:
    """Cosine similarity of the flattened arrays, in float64; zero vectors give 0, not a division by zero."""
    a = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.array([3.0, 4.0]), np.array([4.0, 3.0])) == pytest.approx(24 / 25)
    assert cosine(np.zeros(3), np.zeros(3)) == 0.0
    assert cosine(np.array([0.1, 0.0]), np.array([0.01, 0.0])) == pytest.approx(1.0)  # small norms: still 1
    # float32 inputs whose dot product overflows float32 still give a finite figure.
    big = np.full(4, 1e20, np.float32)
    assert cosine(big, big) == pytest.approx(1.0)


def test_compare_embeddings_reports_the_three_figures() -> None:
    """The encoder's figures: max_abs, max_rel and cosine, under those names."""
    want = np.array([2.0, 0.0])
    got = np.array([2.0, 1.0])
    assert _compare_embeddings(got, want) == {
        "max_abs": 1.0,
        "max_rel": 0.5,
        "cosine": pytest.approx(2 / math.sqrt(5)),
    }


def test_worst_does_not_skip_a_nan() -> None:
    """Python's max/min may step over a NaN; the worst figure is NaN as soon as any is."""
    assert _worst(max, [1.0, 3.0, 2.0]) == 3.0
    assert _worst(min, [1.0, 3.0, 0.5]) == 0.5
    assert math.isnan(_worst(max, [1.0, NAN, 2.0]))
    assert math.isnan(_worst(min, [NAN, 1.0]))
    assert math.isnan(_worst(max, iter([1.0, NAN])))  # a generator is read once, for both steps


def test_non_finite_names_every_place() -> None:
    """Dotted paths of every NaN or infinity, at any depth; finite numbers and other values are fine."""
    report = {"worst": {"a": NAN, "b": 1.0, "c": INF}, "d": {"e": {"f": -INF}}, "g": "text", "h": 3}
    assert non_finite(report) == ["worst.a", "worst.c", "d.e.f"]
    assert non_finite({"ok": 0.5}) == []
    assert non_finite(NAN) == [""]


def test_tolerances_are_the_documented_ones() -> None:
    """The limits docs/export.md states; a change must be deliberate (and the docs changed with it)."""
    assert TOLERANCES == {
        "embeddings_rel": 1e-4,
        "embeddings_cosine": 0.9999,
        "mask_logits_rel": 1e-3,
        "low_res_logits_rel": 1e-3,
        "iou_predictions_abs": 1e-3,
        "mask_agreement": 0.999,
        "end_to_end_mask_agreement": 0.999,
    }
    assert set(LOWER_BOUNDS) == {"embeddings_cosine", "mask_agreement", "end_to_end_mask_agreement"}


def _at_limits() -> dict[str, float]:
    return dict(TOLERANCES)


def test_figures_exactly_at_their_limits_pass() -> None:
    """At the limit is a pass, for upper and lower bounds alike."""
    assert failures({"worst": _at_limits()}) == []


@pytest.mark.parametrize("key", list(TOLERANCES))
def test_each_figure_beyond_its_limit_fails_alone(key: str) -> None:
    """Past its limit (below for cosine and agreements, above for differences), a figure fails with its
    value and limit in the message; the other figures at their limits do not."""
    worst = _at_limits()
    limit = TOLERANCES[key]
    worst[key] = limit * (0.99 if key in LOWER_BOUNDS else 1.01)
    assert failures({"worst": worst}) == [f"{key} {worst[key]:.6g} (limit {limit:g})"]
    worst[key] = limit * (1.01 if key in LOWER_BOUNDS else 0.99)  # the good side passes
    assert failures({"worst": worst}) == []


@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_non_finite_figure_fails(bad: float) -> None:
    """A NaN figure compares false with every limit: it must fail explicitly, for both kinds of bound."""
    worst = _at_limits() | {"embeddings_rel": bad, "mask_agreement": bad}
    assert failures({"worst": worst}) == [
        f"embeddings_rel is {bad} (non-finite values in the outputs)",
        f"mask_agreement is {bad} (non-finite values in the outputs)",
    ]


def test_a_missing_figure_is_skipped_but_the_others_count() -> None:
    """A package without a low-res decoder has no low_res_logits_rel: the other figures are still judged."""
    worst = _at_limits()
    del worst["low_res_logits_rel"]
    worst["mask_logits_rel"] = 1.0
    worst["end_to_end_mask_agreement"] = 0.5  # after the missing figure: still judged
    assert failures({"worst": worst}) == [
        "mask_logits_rel 1 (limit 0.001)",
        "end_to_end_mask_agreement 0.5 (limit 0.999)",
    ]


def test_manifest_encoder_input_resizes_normalizes_and_pads() -> None:
    """Longest side to S, (x - mean) / std per RGB channel, zeros bottom and right, as 1x3xSxS float32."""
    image = np.zeros((2, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30
    x = manifest_encoder_input(image, 8, pixel_mean=(10, 10, 10), pixel_std=(1, 2, 5))
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(
        x[0, :, :4, :8], np.broadcast_to(np.array([0, 5, 4], np.float32)[:, None, None], (3, 4, 8))
    )
    assert not x[0, :, 4:, :].any()  # the rows below the resized 4x8 picture are zero


def _fake_sam(img_size: int = 64, grid: int = 4) -> SimpleNamespace:
    """The two attributes decoder_feeds reads from a Sam."""
    return SimpleNamespace(
        image_encoder=SimpleNamespace(img_size=img_size),
        prompt_encoder=SimpleNamespace(image_embedding_size=(grid, grid)),
    )


def test_decoder_feeds_for_points_pad_with_a_not_a_point() -> None:
    """Points in the model frame, then the (0, 0) padding point labelled -1; no mask: zeros at 4x the grid."""
    prompt = Prompt("p", (32, 16), np.array([[8.0, 16.0], [0.0, 32.0]]), np.array([1, 0]))
    embeddings = np.ones((1, 2, 4, 4), np.float64)
    feeds = decoder_feeds(_fake_sam(), prompt, embeddings, None)
    np.testing.assert_allclose(feeds["point_coords"], [[[16, 32], [0, 64], [0, 0]]])
    np.testing.assert_array_equal(feeds["point_labels"], [[1, 0, -1]])
    assert feeds["mask_input"].shape == (1, 1, 16, 16) and not feeds["mask_input"].any()
    np.testing.assert_array_equal(feeds["has_mask_input"], [0])
    np.testing.assert_array_equal(feeds["orig_im_size"], [32, 16])
    np.testing.assert_array_equal(feeds["image_embeddings"], embeddings)
    assert all(value.dtype == np.float32 for value in feeds.values())


def test_decoder_feeds_for_a_box_batch_and_a_mask() -> None:
    """B boxes give B prompts, each the shared points then the corners labelled 2 and 3; a mask is passed on."""
    boxes = np.array([[0.0, 0.0, 16.0, 32.0], [4.0, 8.0, 8.0, 16.0]])
    prompt = Prompt("b", (32, 16), np.array([[8.0, 16.0]]), np.array([0]), boxes=boxes)
    mask = np.full((2, 1, 16, 16), 3.0)
    feeds = decoder_feeds(_fake_sam(), prompt, np.zeros((1, 2, 4, 4)), mask)
    np.testing.assert_allclose(
        feeds["point_coords"], [[[16, 32], [0, 0], [32, 64]], [[16, 32], [8, 16], [16, 32]]]
    )
    np.testing.assert_array_equal(feeds["point_labels"], [[0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(feeds["mask_input"], mask)
    np.testing.assert_array_equal(feeds["has_mask_input"], [1])


def test_validation_prompts_cover_every_kind() -> None:
    """The decoder is checked on each prompt kind; the mask_input case follows the point case it chains from."""
    prompts = _prompts(480, 640)
    names = [p.name for p in prompts]
    assert names == [
        "point",
        "points_with_negatives",
        "box",
        "box_and_point",
        "mask_input",
        "box_batch",
        "point_portrait",
    ]
    by_name = dict(zip(names, prompts, strict=True))
    assert by_name["mask_input"].use_mask_input and not any(
        p.use_mask_input for p in prompts if p.name != "mask_input"
    )
    assert by_name["box_batch"].boxes.shape == (4, 4) and by_name["point_portrait"].original_size == (
        640,
        480,
    )
    np.testing.assert_array_equal(by_name["points_with_negatives"].labels, [1, 0, 1])
    for prompt in prompts:  # every point and box inside its image
        height, width = prompt.original_size
        for xy in [] if prompt.points is None else prompt.points:
            assert 0 <= xy[0] <= width and 0 <= xy[1] <= height
        if prompt.boxes is not None:
            assert (prompt.boxes[:, 2] > prompt.boxes[:, 0]).all() and (
                prompt.boxes[:, 3] > prompt.boxes[:, 1]
            ).all()
            assert (prompt.boxes[:, [2, 3]] <= [width, height]).all()


def test_validation_pictures() -> None:
    """Deterministic RGB pictures: the real-looking one varies (not flat, not saturated), the two others hold
    the uniform areas the encoder check needs."""
    picture = synthetic_image(48, 64, seed=3)
    assert picture.shape == (48, 64, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, synthetic_image(48, 64, seed=3))
    assert not np.array_equal(picture, synthetic_image(48, 64, seed=4))
    assert picture.std() > 20 and 0 < picture.mean() < 255
    images = encoder_images()
    assert list(images) == ["synthetic", "black_strip", "flat_portrait"]
    assert all(image.dtype == np.uint8 for image in images.values())
    assert images["synthetic"].shape == (480, 640, 3)
    assert images["black_strip"].shape == (200, 500, 3) and not images["black_strip"].any()
    portrait = images["flat_portrait"]
    assert portrait.shape == (640, 240, 3)
    assert (portrait[:320] == (124, 116, 104)).all() and portrait[320:].std() > 10
    assert not (portrait[320] == (124, 116, 104)).all()  # exactly the top half is flat
