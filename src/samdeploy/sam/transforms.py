"""The numeric transforms around SAM's two networks, in numpy, bit-faithful to the official predictor.

Official code being reproduced (segment_anything 1.0):

- ``ResizeLongestSide.apply_image`` + ``Sam.preprocess``: resize so the long side is S (rounded
  half up), with *stock Pillow* bilinear on the uint8 image (what torchvision does for a PIL image,
  so the bytes are identical), normalize in float32 (subtract, then divide), zero-pad bottom/right.
- ``ResizeLongestSide.apply_coords`` / ``apply_boxes``: scale by the *rounded* new size.
- ``Sam.postprocess_masks``: bilinear (align_corners=False) S/4 -> S, crop to the resized image,
  bilinear to the original size, threshold ``> 0``.

The mask post-process is separable, so the three steps collapse into one matrix per axis
(``H x R`` and ``W x R`` for R x R low-res logits) applied as ``Mh @ X @ Mw.T``: two BLAS products
instead of materializing a 1024x1024 intermediate per mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from samdeploy.errors import ImageError
from samdeploy.sam.blas import single_threaded_blas

MASK_THRESHOLD = 0.0


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(newh, neww) with the long side equal to ``long_side``; Python float64, round half up.

    Same arithmetic as ``ResizeLongestSide.get_preprocess_shape``.
    """
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB image so its long side is ``long_side``: newh x neww x 3 uint8.

    Stock Pillow bilinear (antialiased when shrinking), exactly as torchvision's ``resize`` of a
    PIL image, which the official ``apply_image`` uses.
    """
    height, width = image.shape[:2]
    newh, neww = preprocess_shape(height, width, long_side)
    if newh < 1 or neww < 1:
        raise ImageError(
            f"image of {width}x{height} pixels is too thin: its short side would shrink to 0 pixels"
            f" at input size {long_side}"
        )
    if (newh, neww) == (height, width):
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image), mode="RGB").resize((neww, newh), Image.BILINEAR)
    return np.asarray(resized)


def normalize_and_pad(
    resized: np.ndarray, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...], size: int
) -> np.ndarray:
    """newh x neww x 3 uint8 -> 1x3xSxS float32 encoder input.

    float32 ``(x - mean) / std`` (a true division: multiplying by 1/std differs in the last bit),
    then zeros on the bottom/right *after* normalizing, as ``Sam.preprocess`` does.
    """
    newh, neww = resized.shape[:2]
    mean = np.asarray(pixel_mean, dtype=np.float32)
    std = np.asarray(pixel_std, dtype=np.float32)
    tensor = np.zeros((1, 3, size, size), dtype=np.float32)
    normalized = (resized.astype(np.float32) - mean) / std  # newh x neww x 3
    tensor[0, :, :newh, :neww] = normalized.transpose(2, 0, 1)
    return tensor


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Points (...x2, XY in original pixels) -> the model's resized frame, float64.

    Scales by the rounded resized size over the original size (``ResizeLongestSide.apply_coords``).
    """
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Boxes (Bx4, XYXY in original pixels) -> the model's resized frame, Bx4 float64."""
    return apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side).reshape(-1, 4)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``out_size x in_size`` float64 matrix of PyTorch's 1-D bilinear resize (align_corners=False).

    Row ``i`` holds the two weights output ``i`` takes from the input: ``src = max((i + 0.5) *
    in/out - 0.5, 0)``, ``i0 = min(floor(src), in - 1)``, ``i1 = min(i0 + 1, in - 1)``. The source
    position is computed in float32 like PyTorch's CPU kernel does for float32 tensors, so the
    weights (not just the formula) match: in float64 they would differ by up to 1e-4 at 4000 px.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    lam0 = np.float32(1.0) - lam1
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), lam0.astype(np.float64))
    np.add.at(matrix, (rows, i1), lam1.astype(np.float64))
    return matrix


@dataclass(frozen=True)
class BandedMatrix:
    """A resize matrix (out x in) stored as row blocks, each with the narrow column band it reads.

    Bilinear rows have at most 4 non-zero weights, on neighbouring columns, so a block of consecutive
    rows touches only a few columns: multiplying block by block costs ``out x band`` instead of
    ``out x in`` multiply-adds (for a 4000-pixel side, ~20x less than the dense product).
    """

    shape: tuple[int, int]
    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (row0, row1, col0, col1, weights)

    @classmethod
    def from_dense(cls, matrix: np.ndarray, rows_per_block: int) -> BandedMatrix:
        blocks = []
        for row0 in range(0, matrix.shape[0], rows_per_block):
            row1 = min(row0 + rows_per_block, matrix.shape[0])
            cols = np.flatnonzero(matrix[row0:row1].any(axis=0))
            col0, col1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
            weights = np.ascontiguousarray(matrix[row0:row1, col0:col1], dtype=np.float32)
            blocks.append((row0, row1, col0, col1, weights))
        return cls(shape=matrix.shape, blocks=tuple(blocks))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``M @ x`` for x of shape ...x in x K -> ...x out x K, float32."""
        out = np.empty((*x.shape[:-2], self.shape[0], x.shape[-1]), dtype=np.float32)
        for row0, row1, col0, col1, weights in self.blocks:
            np.matmul(weights, x[..., col0:col1, :], out=out[..., row0:row1, :])
        return out

    def products(self, x: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(row0, row1, (M @ x)[..., row0:row1, :])`` block by block, each in one scratch buffer
        that the next block overwrites: for callers that threshold or count the product without
        holding it at full size (3 masks of a 12-megapixel photo are 144 MB of float32). Each
        block is the product :meth:`apply` makes, so what is made of it has the same bits."""
        rows = max(row1 - row0 for row0, row1, *_ in self.blocks)
        scratch = np.empty((*x.shape[:-2], rows, x.shape[-1]), dtype=np.float32)
        for row0, row1, col0, col1, weights in self.blocks:
            block = scratch[..., : row1 - row0, :]
            np.matmul(weights, x[..., col0:col1, :], out=block)
            yield row0, row1, block


# Blocks of 64 output rows keep the band narrow (about 64 * in/out + 3 columns) while the number of
# BLAS calls stays small (64 for a 4000-pixel side).
_ROWS_PER_BLOCK = 64


@lru_cache(maxsize=64)
def _axis_matrix(low_res: int, image_size: int, input_len: int, original_len: int) -> BandedMatrix:
    """``original_len x low_res``: upscale to S, crop to ``input_len``, resize to the original length."""
    upscale = bilinear_matrix(low_res, image_size)[:input_len]  # input_len x low_res
    resize = bilinear_matrix(input_len, original_len)  # original_len x input_len
    return BandedMatrix.from_dense(resize @ upscale, _ROWS_PER_BLOCK)


@dataclass(frozen=True)
class MaskGeometry:
    """Sizes that map low-res mask logits back onto the original image.

    ``image_size`` S is the encoder's square input, ``input_size`` the resized image inside it
    (newh, neww), ``original_size`` the user's image (H, W), ``low_res_size`` the decoder's
    ``low_res_masks`` grid (S/4 x S/4 for SAM).
    """

    image_size: int
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    low_res_size: tuple[int, int]

    @classmethod
    def for_image(cls, original_size: tuple[int, int], image_size: int, low_res_size: tuple[int, int]):
        """Geometry of an HxW image fed to an encoder of input size S."""
        height, width = int(original_size[0]), int(original_size[1])
        return cls(
            image_size=image_size,
            input_size=preprocess_shape(height, width, image_size),
            original_size=(height, width),
            low_res_size=(int(low_res_size[0]), int(low_res_size[1])),
        )

    def matrices(self) -> tuple[BandedMatrix, BandedMatrix]:
        """(Mh: H x Rh, Mw: W x Rw), cached per geometry."""
        mh = _axis_matrix(self.low_res_size[0], self.image_size, self.input_size[0], self.original_size[0])
        mw = _axis_matrix(self.low_res_size[1], self.image_size, self.input_size[1], self.original_size[1])
        return mh, mw


def _width_pass(low_res: np.ndarray, mw: BandedMatrix) -> np.ndarray:
    """``X @ Mw^T`` for ...xRhxRw logits: ...xRhxW, a transposed view of the contiguous product."""
    # Width pass on the transposed logits (Mw @ X^T: ... x W x Rh); the height pass reads it back
    # transposed (... x Rh x W): both passes are row-blocked products with contiguous outputs.
    low_res = np.asarray(low_res, dtype=np.float32)
    return np.swapaxes(mw.apply(np.swapaxes(low_res, -1, -2)), -1, -2)


def resized_rows(
    low_res: np.ndarray, mh: BandedMatrix, mw: BandedMatrix
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``Mh @ X @ Mw^T`` for ...xRhxRw logits, a block of output rows at a time (as
    :meth:`BandedMatrix.products`: ``(row0, row1, block)``, the block overwritten by the next)."""
    # Small products: one BLAS thread is faster, and leaves no spinning threads behind.
    with single_threaded_blas():
        yield from mh.products(_width_pass(low_res, mw))


def resize_axes(
    low_res: np.ndarray, mh: BandedMatrix, mw: BandedMatrix, above: float | None = None
) -> np.ndarray:
    """``Mh @ X @ Mw^T`` for ...xRhxRw logits: ...xHxW float32, or with ``above`` the bool
    ``... > above``, thresholded a block of rows at a time (the float product never at full size)."""
    if above is None:
        with single_threaded_blas():
            return mh.apply(_width_pass(low_res, mw))
    out = np.empty((*low_res.shape[:-2], mh.shape[0], mw.shape[0]), dtype=bool)
    threshold = np.float32(above)
    for row0, row1, block in resized_rows(low_res, mh, mw):
        np.greater(block, threshold, out=out[..., row0:row1, :])
    return out


def postprocess_masks(low_res: np.ndarray, geometry: MaskGeometry, above: float | None = None) -> np.ndarray:
    """Low-res logits (...xRhxRw) -> logits at the original size (...xHxW) float32, or with ``above``
    the bool masks ``logits > above`` (without the float logits at full size).

    Equals ``Sam.postprocess_masks`` up to float32 rounding (the official code rounds after each of
    its two interpolations; here the composed weights are exact in float64 before one cast).
    """
    return resize_axes(low_res, *geometry.matrices(), above)


class ResizeLongestSide:
    """numpy stand-in for ``segment_anything.utils.transforms.ResizeLongestSide`` (same method names),
    so code that uses ``predictor.transform`` keeps working."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> newh x neww x 3 uint8."""
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """...x2 XY pixels -> the resized frame, float64."""
        return apply_coords(coords, original_size, self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Bx4 XYXY pixels -> the resized frame, Bx4 float64."""
        return apply_boxes(boxes, original_size, self.target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return preprocess_shape(oldh, oldw, long_side_length)
