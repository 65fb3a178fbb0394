"""Prompts: validation, and the six decoder inputs built exactly as the official predictor does.

A prompt is any mix of points (with labels), boxes and a previous low-res mask. Validation rules:

- ``point_coords`` Nx2 (or BxNx2 for a batch) needs ``point_labels`` N (or BxN), and vice versa;
  labels are 1 (foreground), 0 (background) or -1 (ignored point: PyTorch embeds it as "not a
  point", the padding label). Labels 2 and 3 are the box corners' and are refused as point labels:
  PyTorch gives them no embedding while the ONNX decoder does, so results would silently differ.
- ``box`` is 4 or Bx4, XYXY; x1 < x0 or y1 < y0 is an error. A Bx4 batch runs as one decoder call.
- ``mask_input`` is 1xRxR (as the official predictor takes) or Bx1xRxR, R = the package's
  ``mask_input_size`` (256 for SAM); usually a previous call's ``low_res_logits``.
- No NaN, infinity or None anywhere; coordinates within ``limits.MAX_COORDINATE`` (2**24 pixels:
  beyond it float32, the decoder's dtype, loses whole pixels and 1e39 becomes infinity) and
  ``mask_input`` logits within ``limits.MAX_MASK_LOGIT``.
- At most ``limits.MAX_POINTS`` points per prompt, ``limits.MAX_PROMPTS`` prompts per call and
  ``limits.MAX_CALL_POINTS`` points per call (the decoder's cost grows with the square of the
  points): over them raises :class:`~samdeploy.errors.PromptLimitError`.
- Coordinates outside the image are **accepted** by default, as the official predictor accepts
  them (the model extrapolates); ``inside_image=True`` (used by the command line) refuses points or
  box corners outside ``[0, W] x [0, H]``.

Every violation raises :class:`~samdeploy.errors.PromptError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samdeploy import limits
from samdeploy.errors import PromptError, PromptLimitError
from samdeploy.sam.transforms import apply_boxes, apply_coords

POINT_LABELS = (-1, 0, 1)
# mask_input values a call may carry: prompts per call x one 1024x1024 mask (R is 256 for SAM).
_MASK_VALUES = limits.MAX_PROMPTS.value * 1024 * 1024
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT, PADDING = 2, 3, -1


@dataclass(frozen=True)
class Prompt:
    """A validated prompt batch, in original-image pixels.

    ``point_coords`` BxNx2 float64 (XY) and ``point_labels`` BxN int64, or both None; ``boxes``
    Bx4 float64 (XYXY) or None; ``mask_input`` Bx1xRxR or 1x1xRxR float32 or None.
    ``batch`` is B: the number of prompts answered by one decoder call.
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    boxes: np.ndarray | None
    mask_input: np.ndarray | None
    batch: int


def _float_array(value: object, name: str, bound: float = limits.MAX_COORDINATE.value) -> np.ndarray:
    """``value`` as float64, refusing non-numbers, None, NaN, infinity and ``|x| > bound``."""
    if isinstance(value, np.ndarray):  # refuse an oversized array before converting (copying) it
        limits.check(
            value.size, limits.MAX_CALL_POINTS.value * 2 + _MASK_VALUES, f"{name} size", PromptLimitError
        )
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        raise PromptError(
            f"{name} must be a rectangular array of numbers, got {type(value).__name__}"
        ) from None
    if raw.dtype == object and any(item is None for item in raw.flat):
        raise PromptError(f"{name} holds None: give numbers only")
    if raw.dtype.kind not in "biufO":  # strings, complex numbers, dates
        raise PromptError(f"{name} must be numeric, got {type(value).__name__} of {raw.dtype}")
    try:
        with np.errstate(all="ignore"):
            array = raw.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        raise PromptError(f"{name} must be numeric, got {type(value).__name__}") from None
    if not np.all(np.isfinite(array)):
        raise PromptError(f"{name} contains NaN or infinity")
    if array.size and np.abs(array).max() > bound:
        raise PromptError(
            f"{name} has a value of {np.abs(array).max():g}, beyond the limit of +-{bound:,.0f}"
        )
    return array


def validate_prompt(
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    *,
    mask_input_size: tuple[int, int] = (256, 256),
    image_size: tuple[int, int] | None = None,
    inside_image: bool = False,
) -> Prompt:
    """Check a prompt and bring it to batched form (see the module docs for the rules).

    ``image_size`` (H, W) is needed for ``inside_image``. Points Nx2 given with boxes Bx4 are
    shared by every box; BxNx2 points go one set per box.
    """
    coords = labels = boxes = None
    if point_coords is None and point_labels is not None:
        raise PromptError("point_labels given without point_coords")
    if point_coords is not None:
        if point_labels is None:
            raise PromptError("point_labels must be supplied with point_coords")
        coords = _float_array(point_coords, "point_coords")
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[2] != 2:
            raise PromptError(
                f"point_coords must be Nx2 (or BxNx2) XY pixels, got shape {np.shape(point_coords)}"
            )
        _check_counts(coords.shape[0], coords.shape[1])
        labels = _float_array(point_labels, "point_labels")
        if labels.ndim == 1:
            labels = labels[None]
        if labels.shape != coords.shape[:2]:
            raise PromptError(
                f"point_labels shape {np.shape(point_labels)} does not match point_coords shape"
                f" {np.shape(point_coords)}: one label per point"
            )
        bad = ~np.isin(labels, POINT_LABELS)
        if bad.any():
            raise PromptError(
                f"unknown point label {labels[bad][0]:g}: use 1 (foreground), 0 (background) or -1 (ignore)"
            )
        labels = labels.astype(np.int64)
    if box is not None:
        boxes = _float_array(box, "box")
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
            raise PromptError(f"box must be 4 numbers XYXY (or Bx4), got shape {np.shape(box)}")
        limits.check(boxes.shape[0], limits.MAX_PROMPTS, "boxes", PromptLimitError)
        inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if inverted.any():
            x0, y0, x1, y1 = boxes[inverted][0]
            raise PromptError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted: use x0 <= x1 and y0 <= y1 (XYXY)"
            )
    batch = 1
    if boxes is not None:
        batch = boxes.shape[0]
        if coords is not None and coords.shape[0] != batch:
            if coords.shape[0] != 1:
                raise PromptError(
                    f"{coords.shape[0]} point sets for {batch} boxes: give one Nx2 set for all, or BxNx2"
                )
            _check_counts(batch, coords.shape[1])
            coords = np.repeat(coords, batch, axis=0)
            labels = np.repeat(labels, batch, axis=0)
    elif coords is not None:
        batch = coords.shape[0]
    masks = None
    if mask_input is not None:
        masks = _float_array(mask_input, "mask_input", limits.MAX_MASK_LOGIT.value).astype(np.float32)
        height, width = mask_input_size
        if masks.ndim == 3:
            masks = masks[None]
        if masks.ndim != 4 or masks.shape[1:] != (1, height, width) or masks.shape[0] not in (1, batch):
            raise PromptError(
                f"mask_input must be 1x{height}x{width} (or Bx1x{height}x{width}), the low_res_logits of a"
                f" previous prediction; got shape {np.shape(mask_input)}"
            )
    prompt = Prompt(point_coords=coords, point_labels=labels, boxes=boxes, mask_input=masks, batch=batch)
    if inside_image:
        if image_size is None:
            raise PromptError("inside_image needs the image size")
        check_inside(prompt, image_size)
    return prompt


def _check_counts(batch: int, points: int) -> None:
    """Refuse more prompts, points per prompt or points per call than the limits allow."""
    limits.check(batch, limits.MAX_PROMPTS, "point sets", PromptLimitError)
    limits.check(points, limits.MAX_POINTS, error=PromptLimitError)
    limits.check(batch * points, limits.MAX_CALL_POINTS, error=PromptLimitError)


def check_inside(prompt: Prompt, image_size: tuple[int, int]) -> None:
    """Raise :class:`PromptError` if a point or box corner lies outside ``[0, W] x [0, H]``."""
    height, width = image_size
    coords, boxes = prompt.point_coords, prompt.boxes
    if coords is not None:
        outside = (
            (coords[..., 0] < 0) | (coords[..., 0] > width) | (coords[..., 1] < 0) | (coords[..., 1] > height)
        )
        if outside.any():
            x, y = coords[outside][0]
            raise PromptError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    if boxes is not None:
        outside = (boxes[:, [0, 2]] < 0).any(1) | (boxes[:, [0, 2]] > width).any(1)
        outside |= (boxes[:, [1, 3]] < 0).any(1) | (boxes[:, [1, 3]] > height).any(1)
        if outside.any():
            x0, y0, x1, y1 = boxes[outside][0]
            raise PromptError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {width}x{height} image"
            )


def decoder_inputs(
    prompt: Prompt, original_size: tuple[int, int], image_size: int, mask_input_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The official decoder's inputs for a validated prompt on an HxW image.

    Returns ``point_coords`` BxNx2 float32 (in the S-frame), ``point_labels`` BxN float32,
    ``mask_input`` Bx1xRxR (or 1x1xRxR) float32, ``has_mask_input`` [1] float32 and
    ``orig_im_size`` [2] float32 (H, W). Order as PyTorch's ``PromptEncoder``: points first, then the
    box corners (labels 2, 3); the padding point (0, 0, -1) only when there is no box. With neither
    points nor a box there is no sparse prompt at all (N = 0), as in PyTorch.
    """
    batch = prompt.batch
    parts_xy = [np.zeros((batch, 0, 2))]
    parts_label = [np.zeros((batch, 0))]
    if prompt.point_coords is not None:
        parts_xy.append(apply_coords(prompt.point_coords, original_size, image_size))
        parts_label.append(prompt.point_labels.astype(np.float64))
        if prompt.boxes is None:
            parts_xy.append(np.zeros((batch, 1, 2)))
            parts_label.append(np.full((batch, 1), PADDING, dtype=np.float64))
    if prompt.boxes is not None:
        parts_xy.append(apply_boxes(prompt.boxes, original_size, image_size).reshape(batch, 2, 2))
        parts_label.append(np.tile([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], (batch, 1)).astype(np.float64))
    if prompt.mask_input is not None:
        mask_input = prompt.mask_input.astype(np.float32)
        has_mask = np.ones(1, dtype=np.float32)
    else:
        mask_input = np.zeros((1, 1, *mask_input_size), dtype=np.float32)
        has_mask = np.zeros(1, dtype=np.float32)
    return {
        "point_coords": np.concatenate(parts_xy, axis=1).astype(np.float32),
        "point_labels": np.concatenate(parts_label, axis=1).astype(np.float32),
        "mask_input": mask_input,
        "has_mask_input": has_mask,
        "orig_im_size": np.array(original_size, dtype=np.float32),
    }
