"""Prompt validation and the decoder inputs built from prompts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samdeploy.errors import PromptError
from samdeploy.sam.prompts import decoder_inputs, validate_prompt

SIZE = (480, 640)  # H, W -> resized to 768 x 1024


def _inputs(**prompt) -> dict[str, np.ndarray]:
    return decoder_inputs(validate_prompt(**prompt), SIZE, 1024, (256, 256))


def test_points_get_the_padding_point() -> None:
    out = _inputs(point_coords=[[320, 240], [10, 20]], point_labels=[1, 0])
    np.testing.assert_allclose(out["point_coords"], [[[512, 384], [16, 32], [0, 0]]])
    np.testing.assert_array_equal(out["point_labels"], [[1, 0, -1]])
    assert out["mask_input"].shape == (1, 1, 256, 256) and not out["mask_input"].any()
    np.testing.assert_array_equal(out["has_mask_input"], [0])
    np.testing.assert_array_equal(out["orig_im_size"], [480, 640])
    assert all(value.dtype == np.float32 for value in out.values())


def test_box_corners_follow_points_and_no_padding() -> None:
    out = _inputs(point_coords=[[320, 240]], point_labels=[1], box=[0, 0, 640, 480])
    np.testing.assert_allclose(out["point_coords"], [[[512, 384], [0, 0], [1024, 768]]])
    np.testing.assert_array_equal(out["point_labels"], [[1, 2, 3]])
    box_only = _inputs(box=np.array([[0, 0, 640, 480]]))
    np.testing.assert_array_equal(box_only["point_labels"], [[2, 3]])


def test_batch_of_boxes_shares_points() -> None:
    out = _inputs(point_coords=[[1, 1]], point_labels=[0], box=[[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 1, 1]])
    assert out["point_coords"].shape == (3, 3, 2)
    np.testing.assert_array_equal(out["point_labels"], [[0, 2, 3]] * 3)


def test_mask_input_and_no_sparse_prompt() -> None:
    mask = np.ones((1, 256, 256), dtype=np.float32)
    out = _inputs(mask_input=mask)
    assert out["point_coords"].shape == (1, 0, 2)
    np.testing.assert_array_equal(out["has_mask_input"], [1])
    assert out["mask_input"].shape == (1, 1, 256, 256)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"point_coords": [[1, 2]]}, "point_labels must be supplied"),
        ({"point_labels": [1]}, "without point_coords"),
        ({"point_coords": [[1, 2, 3]], "point_labels": [1]}, "Nx2"),
        ({"point_coords": [[1, 2]], "point_labels": [1, 1]}, "one label per point"),
        ({"point_coords": [[np.nan, 2]], "point_labels": [1]}, "NaN"),
        ({"point_coords": [[np.inf, 2]], "point_labels": [1]}, "NaN or infinity"),
        ({"point_coords": [[1, 2]], "point_labels": [2]}, "unknown point label 2"),
        ({"point_coords": [["a", 2]], "point_labels": [1]}, "numeric"),
        ({"box": [10, 10, 5, 20]}, "inverted"),
        ({"box": [1, 2, 3]}, "XYXY"),
        ({"mask_input": np.zeros((256, 256))}, "mask_input must be 1x256x256"),
        ({"mask_input": np.zeros((2, 1, 256, 256))}, "mask_input must be"),
        (
            {"point_coords": np.zeros((2, 1, 2)), "point_labels": np.ones((2, 1)), "box": np.zeros((3, 4))},
            "2 point sets",
        ),
    ],
)
def test_bad_prompts(prompt: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        validate_prompt(**prompt)


def test_inside_image_is_opt_in() -> None:
    validate_prompt(point_coords=[[700, 10]], point_labels=[1])  # accepted, as the official predictor does
    validate_prompt(point_coords=[[640, 480]], point_labels=[1], image_size=SIZE, inside_image=True)
    with pytest.raises(PromptError, match=r"point \(700, 10\) is outside the 640x480 image"):
        validate_prompt(point_coords=[[700, 10]], point_labels=[1], image_size=SIZE, inside_image=True)
    with pytest.raises(PromptError, match="reaches outside"):
        validate_prompt(box=[-1, 0, 10, 10], image_size=SIZE, inside_image=True)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    points=st.integers(0, 5),
    boxes=st.integers(0, 3),
    with_mask=st.booleans(),
)
def test_decoder_input_layout(height: int, width: int, points: int, boxes: int, with_mask: bool) -> None:
    """Points, then the padding point (only without a box), then box corners 2/3; one row per box."""
    rng = np.random.default_rng(height + width)
    prompt = {}
    if points:
        prompt["point_coords"] = rng.uniform(0, [width, height], (points, 2))
        prompt["point_labels"] = rng.integers(0, 2, points)
    if boxes:
        corner = rng.uniform(0, [width / 2, height / 2], (boxes, 2))
        prompt["box"] = np.hstack([corner, corner + [width / 2, height / 2]])
    if with_mask:
        prompt["mask_input"] = rng.normal(size=(1, 256, 256))
    out = decoder_inputs(validate_prompt(**prompt), (height, width), 1024, (256, 256))
    batch = max(boxes, 1)
    expected = points + (1 if points and not boxes else 0) + (2 if boxes else 0)
    assert out["point_coords"].shape == (batch, expected, 2)
    labels = out["point_labels"]
    if points:
        np.testing.assert_array_equal(
            labels[:, :points], np.broadcast_to(prompt["point_labels"], (batch, points))
        )
    if boxes:
        np.testing.assert_array_equal(labels[:, -2:], [[2, 3]] * batch)
    elif points:
        np.testing.assert_array_equal(labels[:, -1], -1)
        np.testing.assert_array_equal(out["point_coords"][:, -1], 0)
    # Coordinates land in the resized frame: at most the long side S.
    assert (out["point_coords"] >= 0).all() and (out["point_coords"] <= 1024 + 1e-3).all()
    np.testing.assert_array_equal(out["has_mask_input"], [float(with_mask)])
