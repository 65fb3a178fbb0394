"""SAM 2's numeric transforms in numpy, faithful to the official ``SAM2Transforms`` and predictor.

Official code being reproduced (sam2 1.1.0):

- ``SAM2Transforms.__call__``: ``ToTensor`` (uint8 / 255 in float32), then ``Resize((S, S))`` of
  that float image (bilinear, antialiased when shrinking: a *square* resize, the aspect ratio is
  not kept and nothing is padded), then ``Normalize(mean, std)`` in float32. Pillow's "F" mode
  resize is the same filter on the same float32 values (within 1e-6).
- ``transform_coords(normalize=True)``: ``x / W * S`` and ``y / H * S`` in float32 (no rounding).
- ``postprocess_masks``: one bilinear resize (align_corners=False) of the low-res logits straight
  to the original size (no crop: there was no padding). The predictor clamps the low-res logits it
  returns to [-32, 32], after the masks were made from the unclamped ones.
- ``MaskDecoder._dynamic_multimask_via_stability``: with one mask asked for, token 0's mask is kept
  when its stability (pixels above +delta over pixels above -delta, on the low-res logits) is at
  least the threshold; otherwise the multimask output with the best predicted IoU replaces it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from samdeploy.errors import ImageError
from samdeploy.sam.transforms import MaskResize

MASK_THRESHOLD = 0.0
LOW_RES_CLAMP = 32.0
# SAM2Transforms' statistics (of [0, 1] pixels); a package's manifest states its own.
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xSxS float32 in [0, 1]: scaled by 1/255, then resized to SxS.

    Each channel is resized as a float32 Pillow image (bilinear, antialiased when shrinking), the
    filter torchvision's ``Resize`` applies to the float tensor.
    """
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image of {image.shape[1]}x{image.shape[0]} pixels is empty")
    scaled = image.astype(np.float32) / np.float32(255.0)
    if scaled.shape[:2] == (size, size):
        return np.ascontiguousarray(scaled.transpose(2, 0, 1))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(scaled[..., c]), mode="F").resize(
                (size, size), Image.BILINEAR
            )
        )
        for c in range(3)
    ]
    return np.stack(channels, axis=0)


def normalize(resized: np.ndarray, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> np.ndarray:
    """3xSxS float32 in [0, 1] -> the encoder's 1x3xSxS input: ``(x - mean) / std`` in float32."""
    mean = np.asarray(pixel_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pixel_std, dtype=np.float32)[:, None, None]
    return ((resized - mean) / std)[None].astype(np.float32, copy=False)


def transform_coords(
    coords: np.ndarray, original_size: tuple[int, int], image_size: int, normalize_coords: bool = True
) -> np.ndarray:
    """Points (...x2, XY) -> the model's SxS frame, float32.

    ``normalize_coords=True``: pixels of the HxW image (``x / W * S``); False: already in [0, 1]
    (``x * S``), as the official ``transform_coords``.
    """
    coords = np.array(coords, dtype=np.float32)
    if normalize_coords:
        height, width = original_size
        coords[..., 0] = coords[..., 0] / np.float32(width)
        coords[..., 1] = coords[..., 1] / np.float32(height)
    return coords * np.float32(image_size)


def upscale_masks(
    low_res: np.ndarray, original_size: tuple[int, int], above: float | None = None
) -> np.ndarray:
    """Low-res logits ...xRhxRw -> logits at the original size ...xHxW, float32
    (``F.interpolate(..., original_size, mode="bilinear", align_corners=False)``), or with ``above``
    the bool masks ``logits > above`` (without the float logits at full size)."""
    return MaskResize.direct(low_res.shape[-2:], original_size)(low_res, above)


def stability_scores(logits: np.ndarray, delta: float) -> np.ndarray:
    """``...xRxR`` logits -> ``...`` float32: ``#(> delta) / #(> -delta)``, 1 where nothing is above
    ``-delta`` (the official ``_get_stability_scores``)."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    inner = np.count_nonzero(flat > np.float32(delta), axis=-1).astype(np.float32)
    outer = np.count_nonzero(flat > np.float32(-delta), axis=-1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(outer > 0, inner / outer, np.float32(1.0)).astype(np.float32)


def select_masks(
    low_res_masks: np.ndarray,
    iou_predictions: np.ndarray,
    multimask_output: bool,
    dynamic: bool,
    stability_delta: float = 0.05,
    stability_thresh: float = 0.98,
) -> tuple[np.ndarray, np.ndarray]:
    """All four tokens (Bx4xRxR logits, Bx4 scores) -> the ones the official decoder returns.

    ``multimask_output``: tokens 1..3 (C = 3). Otherwise one (C = 1): token 0, or, with ``dynamic``
    (the official builds' default), the best-scoring multimask token where token 0 is unstable.
    """
    if multimask_output:
        return low_res_masks[:, 1:], iou_predictions[:, 1:]
    single_masks, single_scores = low_res_masks[:, :1], iou_predictions[:, :1]
    if not dynamic:
        return single_masks, single_scores
    rows = np.arange(len(iou_predictions))
    best = 1 + np.argmax(iou_predictions[:, 1:], axis=-1)
    stable = stability_scores(single_masks[:, 0], stability_delta) >= np.float32(stability_thresh)
    masks = np.where(stable[:, None, None, None], single_masks, low_res_masks[rows, best][:, None])
    scores = np.where(stable[:, None], single_scores, iou_predictions[rows, best][:, None])
    return masks, scores
