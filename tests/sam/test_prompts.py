"""Prompt validation and the decoder inputs built from prompts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samdeploy.errors import PromptError, PromptLimitError
from samdeploy.sam.prompts import Prompt, decoder_inputs, validate_prompt

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


# -- exact messages, types and bounds (each one failed to notice a change in mutation testing) --


def _message(**prompt) -> str:
    with pytest.raises(PromptError) as caught:
        validate_prompt(**prompt)
    return str(caught.value)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"point_labels": [1]}, "point_labels given without point_coords"),
        ({"point_coords": [[1, 2]]}, "point_labels must be supplied with point_coords"),
        ({"point_coords": [[np.nan, 2]], "point_labels": [1]}, "point_coords contains NaN or infinity"),
        ({"point_coords": [[1, 2]], "point_labels": [np.inf]}, "point_labels contains NaN or infinity"),
        ({"box": [0, 0, np.nan, 1]}, "box contains NaN or infinity"),
        (
            {"point_coords": [[1, 2], [3]], "point_labels": [1, 1]},
            "point_coords must be a rectangular array of numbers, got list",
        ),
        ({"point_coords": [["a", 2]], "point_labels": [1]}, "point_coords must be numeric, got list of <U21"),
        # A Python int too large for float64 becomes an object array whose conversion fails.
        ({"point_coords": [[10**400, 2]], "point_labels": [1]}, "point_coords must be numeric, got list"),
        (
            {"point_coords": [[1, 2, 3]], "point_labels": [1]},
            "point_coords must be Nx2 (or BxNx2) XY pixels, got shape (1, 3)",
        ),
        (
            {"point_coords": [[1, 2]], "point_labels": [1, 1]},
            "point_labels shape (2,) does not match point_coords shape (1, 2): one label per point",
        ),
        ({"box": [1, 2, 3]}, "box must be 4 numbers XYXY (or Bx4), got shape (3,)"),
        ({"box": np.zeros((0, 4))}, "box must be 4 numbers XYXY (or Bx4), got shape (0, 4)"),
        (
            {"mask_input": np.zeros((256, 256))},
            "mask_input must be 1x256x256 (or Bx1x256x256), the low_res_logits of a previous prediction;"
            " got shape (256, 256)",
        ),
        ({"mask_input": np.zeros((1, 2, 256, 256))}, "mask_input must be 1x256x256"),
        ({"mask_input": np.full((1, 256, 256), 10_001.0)}, "mask_input has a value of 10001"),
        (
            {"point_coords": [[1, 2]], "point_labels": [1], "inside_image": True},
            "inside_image needs the image size",
        ),
    ],
)
def test_error_messages_name_the_input_and_its_shape(prompt: dict, message: str) -> None:
    """The user reads which input is wrong and how: the whole message, not a fragment of it."""
    assert _message(**prompt).startswith(message)


def test_too_many_point_sets_is_a_limit_error_naming_point_sets() -> None:
    """BxNx2 points with B over the prompt limit: a PromptLimitError (callers catch it apart) saying "point sets"."""
    with pytest.raises(PromptLimitError) as caught:
        validate_prompt(np.zeros((257, 1, 2)), np.ones((257, 1)))
    assert str(caught.value) == "point sets: 257 prompts is over the limit of 256 prompts"


def test_oversized_array_is_refused_before_it_is_copied() -> None:
    """An array larger than any call may carry is refused from its size alone (a broadcast view costs no memory)."""
    huge = np.broadcast_to(np.float32(0), (1, 1, 20_000, 20_000))
    with pytest.raises(PromptLimitError) as caught:
        validate_prompt(mask_input=huge)
    assert str(caught.value) == "mask_input size: 400,000,000 is over the limit of 268,443,648"


def test_object_arrays_of_numbers_are_accepted() -> None:
    """Object arrays (e.g. from JSON or pandas) holding only numbers are valid prompts, not "holds None"."""
    prompt = validate_prompt(np.array([[1, 2.5]], dtype=object), np.array([1], dtype=object))
    np.testing.assert_array_equal(prompt.point_coords, [[[1, 2.5]]])


def test_overflow_to_infinity_is_a_prompt_error_not_a_warning() -> None:
    """A long double beyond float64 becomes infinity when converted: refused with a PromptError, silently (no
    RuntimeWarning, which a caller running with warnings as errors would get instead of the message)."""
    coords = np.array([[np.longdouble("1e400"), 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PromptError, match="point_coords contains NaN or infinity"):
            validate_prompt(coords, [1])


def test_validated_dtypes() -> None:
    """Labels come back int64 and masks float32 whatever was given: the decoder's dtypes."""
    prompt = validate_prompt([[1, 2]], [1.0], mask_input=np.zeros((1, 256, 256), np.float64))
    assert prompt.point_labels.dtype == np.int64
    assert prompt.mask_input.dtype == np.float32
    # Mask logits up to the limit are accepted (the limit is the mask's, not the coordinates').
    validate_prompt(mask_input=np.full((1, 256, 256), 10_000.0))


def test_decoder_inputs_are_float32_with_a_mask() -> None:
    """A Prompt built directly with a float64 mask still gives the decoder float32 inputs (ONNX refuses others)."""
    prompt = Prompt(None, None, None, np.ones((1, 1, 256, 256)), 1)
    out = decoder_inputs(prompt, SIZE, 1024, (256, 256))
    assert out["mask_input"].dtype == np.float32 and out["has_mask_input"].dtype == np.float32
    np.testing.assert_array_equal(out["has_mask_input"], [1])


WIDE = (480, 640)  # H, W
TALL = (100, 50)


@pytest.mark.parametrize(
    ("size", "prompt"),
    [
        (WIDE, {"point_coords": [[0, 0], [0.5, 0.5], [640, 480]], "point_labels": [1, 1, 1]}),
        (WIDE, {"box": [[0, 0, 640, 480], [0.5, 0.5, 600, 10]]}),
        # y beyond the width but inside the height, x beyond the height but inside the width: inside.
        (TALL, {"box": [0, 60, 10, 70], "point_coords": [[5, 99]], "point_labels": [1]}),
    ],
)
def test_inside_image_accepts_the_edges(size: tuple[int, int], prompt: dict) -> None:
    """With inside_image, the image's border itself (0 and W or H) is inside; each axis is checked on its own."""
    validate_prompt(**prompt, image_size=size, inside_image=True)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"point_coords": [[-1, 5]], "point_labels": [1]}, r"point \(-1, 5\) is outside"),
        ({"point_coords": [[5, -1]], "point_labels": [1]}, r"point \(5, -1\) is outside"),
        ({"point_coords": [[641, 5]], "point_labels": [1]}, r"point \(641, 5\) is outside"),
        ({"point_coords": [[5, 481]], "point_labels": [1]}, r"point \(5, 481\) is outside"),
        ({"box": [-1, 0, 10, 10]}, r"box \(-1, 0, 10, 10\) reaches outside"),
        ({"box": [0, -1, 10, 10]}, r"box \(0, -1, 10, 10\) reaches outside"),
        ({"box": [0, 0, 641, 10]}, r"box \(0, 0, 641, 10\) reaches outside"),
        ({"box": [0, 0, 10, 481]}, r"box \(0, 0, 10, 481\) reaches outside"),
        # The message names the box that is outside, not the first of the batch.
        (
            {"box": [[0, 0, 10, 10], [0, 0, 10, 500]]},
            r"box \(0, 0, 10, 500\) reaches outside the 640x480 image",
        ),
        ({"box": [[0, 0, 10, 10], [-5, 0, 10, 10]]}, r"box \(-5, 0, 10, 10\) reaches outside"),
        ({"box": [[0, 0, 10, 10], [0, 0, 700, 10]]}, r"box \(0, 0, 700, 10\) reaches outside"),
        ({"box": [[0, 0, 10, 10], [0, -5, 10, 10]]}, r"box \(0, -5, 10, 10\) reaches outside"),
    ],
)
def test_inside_image_refuses_each_side(prompt: dict, message: str) -> None:
    """Each of the four sides is checked, for points and box corners."""
    with pytest.raises(PromptError, match=message):
        validate_prompt(**prompt, image_size=WIDE, inside_image=True)
