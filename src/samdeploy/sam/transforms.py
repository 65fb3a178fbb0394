"""The numeric transforms around SAM's two networks, in numpy, bit-faithful to the official predictor.

Official code being reproduced (segment_anything 1.0):

- ``ResizeLongestSide.apply_image`` + ``Sam.preprocess``: resize so the long side is S (rounded
  half up), with *stock Pillow* bilinear on the uint8 image (what torchvision does for a PIL image,
  so the bytes are identical), normalize in float32 (subtract, then divide), zero-pad bottom/right.
- ``ResizeLongestSide.apply_coords`` / ``apply_boxes``: scale by the *rounded* new size.
- ``Sam.postprocess_masks``: bilinear (align_corners=False) S/4 -> S, crop to the resized image,
  bilinear to the original size, threshold ``> 0``.

The mask post-process (:class:`MaskResize`) runs the official steps in OpenCV where OpenCV samples
each axis at PyTorch's float32 positions (power-of-two ratios: the S/4 -> S upscale, and pictures
whose long side is S times a power of two). Otherwise the steps are separable, so they collapse
into one matrix per axis (``H x R`` and ``W x R`` for R x R low-res logits) applied as
``Mh @ X @ Mw.T``: two banded BLAS products instead of a 1024x1024 intermediate per mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from samdeploy.errors import ImageError
from samdeploy.sam.blas import single_threaded_blas

if TYPE_CHECKING:
    from samdeploy.sam.amg import TiledMasks

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


def source_positions(in_size: int, out_size: int) -> np.ndarray:
    """Where each of ``out_size`` outputs samples the input in PyTorch's bilinear resize
    (align_corners=False): ``max((i + 0.5) * in/out - 0.5, 0)``, computed in float32 as its CPU
    kernel does for float32 tensors."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    return np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))


@lru_cache(maxsize=256)
def opencv_matches_torch(in_size: int, out_size: int) -> bool:
    """Whether ``cv2.resize(..., INTER_LINEAR)`` samples an axis of ``in_size`` -> ``out_size`` at
    the very positions PyTorch does, so that its weights are PyTorch's to the bit.

    OpenCV takes the same formula in float64 and rounds once to float32; PyTorch rounds in float32
    at each step. They agree where every step is exact: ratios that are powers of two (256 -> 1024,
    1024 -> 2048, 1024 -> 512) and equal sizes, not the general ratio (1024 -> 4032).
    """
    if in_size == out_size:
        return True
    dst = np.arange(out_size, dtype=np.float64)
    opencv = ((dst + 0.5) * (1.0 / (out_size / in_size)) - 0.5).astype(np.float32)
    return bool(np.array_equal(np.maximum(opencv, np.float32(0.0)), source_positions(in_size, out_size)))


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``out_size x in_size`` float64 matrix of PyTorch's 1-D bilinear resize (align_corners=False).

    Row ``i`` holds the two weights output ``i`` takes from the input: ``src = max((i + 0.5) *
    in/out - 0.5, 0)``, ``i0 = min(floor(src), in - 1)``, ``i1 = min(i0 + 1, in - 1)``. The source
    position is computed in float32 like PyTorch's CPU kernel does for float32 tensors, so the
    weights (not just the formula) match: in float64 they would differ by up to 1e-4 at 4000 px.
    """
    src = source_positions(in_size, out_size)
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

    @cached_property
    def bands(self) -> tuple[np.ndarray, np.ndarray]:
        """(the input indices each block reads, block after block; where each block's run starts in
        them): ``np.maximum.reduceat(x[..., index, :], starts, axis=-2)`` is the largest input each
        block reads, per column of ``x``."""
        index = np.concatenate([np.arange(col0, col1) for _, _, col0, col1, _ in self.blocks])
        starts = np.cumsum([0] + [col1 - col0 for _, _, col0, col1, _ in self.blocks[:-1]])
        return index, starts

    def block_product(self, block: int, x: np.ndarray) -> np.ndarray:
        """``(M @ x)[..., row0:row1, :]`` for the rows of block number ``block``: the product
        :meth:`apply` makes of them (the same bits, for any columns of ``x``)."""
        _, _, col0, col1, weights = self.blocks[block]
        return np.matmul(weights, x[..., col0:col1, :])

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
def _axis_matrix(low_res: int, resize_len: int, crop_len: int, out_len: int) -> BandedMatrix:
    """``out_len x low_res``: resize to ``resize_len``, keep the first ``crop_len``, resize to ``out_len``."""
    matrix = bilinear_matrix(low_res, resize_len)[:crop_len]  # crop_len x low_res
    if out_len != crop_len:
        matrix = bilinear_matrix(crop_len, out_len) @ matrix  # out_len x low_res
    return BandedMatrix.from_dense(matrix, _ROWS_PER_BLOCK)


# Upscaled pixels (masks x H x W) from which the tiles pay for their bounds (Zen 4, smooth masks
# with noisy edges): 3 masks at 1500x2000 (9M) take 0.63 of the time of whole rows, 16 at 600x800
# (7.7M) 0.85; 16 at 480x640 (4.9M) and 3 at 1080x1440 (4.7M) the same; 16 at 300x400 (1.9M) 1.5x.
TILE_MIN_PIXELS = 6_000_000

Tile = tuple[int, slice, slice, np.ndarray]
"""A piece of upscaled masks made by the products: ``(k, rows, columns, block)``, where ``block``
is ``logits[k][rows, columns]`` of the k-th mask asked for (:meth:`Tiling.make`)."""

Rows = Iterator[tuple[tuple[int, ...], int, int, np.ndarray]]
"""Upscaled logits a piece at a time: ``(index, row0, row1, block)``, where ``block`` is
``logits[index][..., row0:row1, :]``, ``index`` a (possibly empty) index into the leading axes."""


@dataclass(frozen=True)
class MaskResize:
    """PyTorch's bilinear steps (align_corners=False) from low-res logits to the output size:
    resize to ``resize_to``, keep the top-left ``crop_to``, resize to ``size`` (SAM: S x S, the
    resized image, the original image; SAM 2: one resize, all three the original).

    Two ways, the same arithmetic up to float32 rounding (about 1e-6 of the logits):

    - ``cv2.resize`` step by step, mask by mask, where OpenCV samples every axis of every step at
      PyTorch's positions (:func:`opencv_matches_torch`: e.g. SAM's 256 -> 1024 upscale, and a
      picture whose long side is the encoder's size or a power of two times it). Its vectorized
      two-tap kernel is about 2.8x faster than the products below for a 768x1024 picture.
    - Otherwise each axis's steps composed into one banded matrix (exact in float64, one cast) and
      applied as two products, ``Mh @ X @ Mw^T``, a block of output rows at a time, so thresholded
      masks never hold the float logits at full size. Masks and counts of large pictures
      (:meth:`threshold`, :meth:`count_above`) make only the tiles near each mask's edges, where
      the low-res logits do not already tell the answer (:meth:`_tiles`).
    """

    low_res_size: tuple[int, int]
    resize_to: tuple[int, int]
    crop_to: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def direct(cls, low_res_size: tuple[int, ...], size: tuple[int, int]) -> MaskResize:
        """One bilinear resize from ``low_res_size`` straight to ``size`` (SAM 2)."""
        size = (int(size[0]), int(size[1]))
        return cls((int(low_res_size[0]), int(low_res_size[1])), size, size, size)

    def matrices(self) -> tuple[BandedMatrix, BandedMatrix]:
        """(Mh: H x Rh, Mw: W x Rw), the steps of each axis composed; cached per geometry."""
        return (
            _axis_matrix(self.low_res_size[0], self.resize_to[0], self.crop_to[0], self.size[0]),
            _axis_matrix(self.low_res_size[1], self.resize_to[1], self.crop_to[1], self.size[1]),
        )

    @property
    def in_opencv(self) -> bool:
        """Whether ``cv2.resize`` gives PyTorch's weights for every step (the fast way)."""
        steps = ((self.low_res_size, self.resize_to), (self.crop_to, self.size))
        return all(
            opencv_matches_torch(a, b) for start, end in steps for a, b in zip(start, end, strict=True)
        )

    def rows(self, low_res: np.ndarray, *, products: bool = False) -> Rows:
        """The upscaled ...xRhxRw logits as :data:`Rows`: a whole mask at a time with OpenCV, a
        block of rows of every mask with the products (either way each piece is overwritten by the
        next: use it before asking for the next).
        ``products=True`` takes the products where OpenCV could be used (for comparisons)."""
        if self.in_opencv and not products:
            return self._opencv_masks(low_res)
        return self._banded_rows(low_res)

    def __call__(
        self, low_res: np.ndarray, above: float | None = None, *, products: bool = False
    ) -> np.ndarray:
        """``...xRhxRw`` logits -> ``...xHxW`` float32, or with ``above`` the bool ``... > above``
        (made a piece at a time: the float logits are never all held at full size)."""
        if above is None and (products or not self.in_opencv):
            mh, mw = self.matrices()
            with single_threaded_blas():
                return mh.apply(_width_pass(low_res, mw))
        if (
            above is not None
            and (products or not self.in_opencv)
            and self.tiles_pay(math.prod(low_res.shape[:-2]))
        ):
            return self.threshold(low_res, above)
        out = np.empty((*low_res.shape[:-2], *self.size), dtype=np.float32 if above is None else bool)
        threshold = None if above is None else np.float32(above)
        for index, row0, row1, block in self.rows(low_res, products=products):
            target = out[index][..., row0:row1, :]
            if threshold is None:
                target[...] = block
            else:
                np.greater(block, threshold, out=target)
        return out

    def tiles_pay(self, masks: int) -> bool:
        """Whether making only the open tiles (:meth:`threshold`, :meth:`count_above`) beats the
        products of whole rows (:meth:`rows`) for ``masks`` masks: from :data:`TILE_MIN_PIXELS`
        pixels in all, where the saving outgrows the bounds' fixed cost."""
        return masks * self.size[0] * self.size[1] >= TILE_MIN_PIXELS

    def threshold(self, low_res: np.ndarray, threshold: float, out: np.ndarray | None = None) -> np.ndarray:
        """``...xRhxRw`` logits -> the bool masks ``upscaled > threshold`` (``...xHxW``, into ``out``
        if given) by the products, making only the tiles the low-res logits leave open
        (:class:`Tiling`): the same bits as thresholding the full-size logits."""
        return self.threshold_and_count(low_res, threshold, (), out)[0]

    def threshold_and_count(
        self, low_res: np.ndarray, threshold: float, cuts: tuple[float, ...], out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`threshold` and :meth:`count_above` in one pass over the tiles: (masks, counts)."""
        shape = (*np.shape(low_res)[:-2], *self.size)
        if out is not None and (out.shape != shape or out.dtype != np.bool_ or not out.flags.c_contiguous):
            raise ValueError(f"out is {out.dtype} {out.shape}, the masks are C-contiguous bool {shape}")
        masks = np.empty(shape, dtype=bool) if out is None else out
        tiling = self.tiling(low_res)
        flat_masks = masks.reshape(tiling.count, *self.size)  # a view: out is filled in place
        counts = tiling.make(threshold, cuts, flat_masks)
        return masks, counts.reshape(*shape[:-2], len(cuts))

    def count_above(self, low_res: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
        """``...xRhxRw`` logits -> int64 ``... x len(cuts)``: the pixels of each upscaled mask
        ``> cut``, by the products, making only the tiles the low-res logits leave open
        (:class:`Tiling`): the counts of the full-size logits."""
        counts = self.tiling(low_res).count_above(cuts)
        return counts.reshape(*np.shape(low_res)[:-2], len(cuts))

    def tiling(self, low_res: np.ndarray) -> Tiling:
        """The tiles of ``...xRhxRw`` logits' upscaled masks, bounded from the low-res logits."""
        return Tiling(self, _masks_first(low_res))

    def _opencv_masks(self, low_res: np.ndarray) -> Rows:
        low_res = np.asarray(low_res, dtype=np.float32)
        crop_h, crop_w = self.crop_to
        # One buffer per step, written again for each mask: one mask's float logits at a time.
        resizes = self.resize_to != self.low_res_size, self.size != self.crop_to
        resized = np.empty(self.resize_to, dtype=np.float32) if resizes[0] else None
        final = np.empty(self.size, dtype=np.float32) if resizes[1] else None
        for index in np.ndindex(low_res.shape[:-2]):
            logits = np.ascontiguousarray(low_res[index])
            if resizes[0]:
                logits = cv2.resize(logits, self.resize_to[::-1], dst=resized, interpolation=cv2.INTER_LINEAR)
            logits = logits[:crop_h, :crop_w]
            if resizes[1]:
                logits = cv2.resize(logits, self.size[::-1], dst=final, interpolation=cv2.INTER_LINEAR)
            yield index, 0, self.size[0], logits

    def _banded_rows(self, low_res: np.ndarray) -> Rows:
        mh, mw = self.matrices()
        # Small products: one BLAS thread is faster, and leaves no spinning threads behind.
        with single_threaded_blas():
            for row0, row1, block in mh.products(_width_pass(low_res, mw)):
                yield (), row0, row1, block


class Tiling:
    """The upscaled masks of N x Rh x Rw low-res logits as tiles (a row block of ``Mh`` by a row
    block of ``Mw``: 64 x 64 pixels inside the picture), each bounded from the low-res logits.

    Each output pixel is a weighted mean (weights >= 0, summing to one) of the low-res logits its
    row block and column block read, so a tile lies between the least and the largest of them.
    Where that range, widened by far more than float32 rounding moves a pixel, is on one side of
    every level asked about, the tile is known: above or not. That is a mask's inside and outside,
    all but a band along its edges. Neighbouring open tiles of a row block are made by one product,
    the one :meth:`MaskResize.rows` makes restricted to their columns: the same bits.

    The bounds and the products' first pass are computed once, so the pixels above some levels
    can be counted (:meth:`count_above`) and then some of the masks made, whole (:meth:`make`) or
    as tiles (:meth:`make_tiled`).
    """

    def __init__(self, resize: MaskResize, flat: np.ndarray) -> None:
        self.resize = resize
        self.flat = flat
        self.count = len(flat)
        self.mh, self.mw = resize.matrices()
        # NaN where a tile reads a NaN: never known.
        self.least, self.largest = _tile_bounds(flat, self.mh, self.mw)  # N x B x C
        # Two products of a few non-zero terms each: rounding moves a pixel by under 1e-6 of the
        # largest logit; 1e-5 of it is the margin.
        self.margin = (np.abs(flat).max(axis=(1, 2)) * np.float32(1e-5))[:, None, None, None]
        self.row_edges, self.col_edges = _block_edges(self.mh), _block_edges(self.mw)

    @cached_property
    def wide(self) -> np.ndarray:
        """``X @ Mw^T`` of every mask (N x Rh x W): the first of the products that make open tiles."""
        with single_threaded_blas():
            return _width_pass(self.flat, self.mw)

    def classify(self, levels: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the ``masks`` (indices) and L ``levels``: (bool K x B x C x L, the tiles known to be
        all above each level; bool K x B x C, the tiles left open at one level or more)."""
        least, largest, margin = self.least[masks], self.largest[masks], self.margin[masks]
        above = (least[..., None] - margin) > levels
        known = (above | ((largest[..., None] + margin) <= levels)).all(axis=-1)
        above &= known[..., None]
        return above, ~known

    def count_above(self, cuts: tuple[float, ...]) -> np.ndarray:
        """int64 N x len(cuts): the pixels of each upscaled mask ``> cut``."""
        levels = np.asarray(cuts, dtype=np.float32)
        counts = np.zeros((self.count, len(levels)), dtype=np.int64)
        if self.count and len(levels):
            masks = np.arange(self.count)
            above, unknown = self.classify(levels, masks)
            counts += self._whole_tiles(above)
            for k, _, _, block in self._made(masks, self._runs(unknown)):
                _add_counts(counts[k], block, levels)
        return counts

    def make(self, threshold: float, cuts: tuple[float, ...], out: np.ndarray) -> np.ndarray:
        """Every upscaled mask ``> threshold`` into ``out`` (N x H x W bool), and the N x len(cuts)
        pixel counts ``> cut`` (as :meth:`count_above`): the known tiles filled whole, the open
        ones made."""
        levels = np.asarray([threshold, *cuts], dtype=np.float32)
        counts = np.zeros((self.count, len(cuts)), dtype=np.int64)
        if not self.count:
            return counts
        masks = np.arange(self.count)
        above, unknown = self.classify(levels, masks)
        counts += self._whole_tiles(above[..., 1:])
        pattern = np.repeat(above[..., 0], np.diff(self.col_edges), axis=2)  # N x B x W
        # The known tiles' answer (the open ones are made after): each block's first row from the
        # pattern, the rest copied from it (4x faster than broadcasting the pattern).
        edges = self.row_edges.tolist()
        for b, (row0, row1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            out[:, row0, :] = pattern[:, b]
            out[:, row0 + 1 : row1, :] = out[:, row0 : row0 + 1, :]
        for k, rows, columns, block in self._made(masks, self._runs(unknown)):
            np.greater(block, levels[0], out=out[k, rows, columns])
            _add_counts(counts[k], block, levels[1:])
        return counts

    def _whole_tiles(self, above: np.ndarray) -> np.ndarray:
        """K x L pixel counts of the tiles ``above`` (K x B x C x L) marks."""
        heights, widths = np.diff(self.row_edges), np.diff(self.col_edges)
        return np.einsum("nbcl,b,c->nl", above.astype(np.int64), heights, widths)

    def _runs(self, unknown: np.ndarray) -> np.ndarray:
        """Runs of neighbouring ``unknown`` tiles (K x B x C) in a row block of a mask, in order:
        rows of (k, row block, first pixel column, end pixel column)."""
        unknown = np.argwhere(unknown)  # rows of (k, row block, column block)
        if not len(unknown):
            return np.zeros((0, 4), dtype=np.int64)
        breaks = (np.diff(unknown[:, 2]) != 1) | (np.diff(unknown[:, :2], axis=0) != 0).any(axis=1)
        starts = np.flatnonzero(np.r_[True, breaks])
        ends = np.r_[starts[1:], len(unknown)] - 1
        first, last = unknown[starts], unknown[ends]
        return np.stack(
            [first[:, 0], first[:, 1], self.col_edges[first[:, 2]], self.col_edges[last[:, 2] + 1]], axis=1
        ).astype(np.int64)

    def _made(self, masks: np.ndarray, runs: np.ndarray) -> Iterator[Tile]:
        """The products of the ``runs`` (:meth:`_runs`) of ``masks``, one each, in order, as
        :data:`Tile` pieces numbered 0..K-1."""
        wide = self.wide if len(runs) else None
        with single_threaded_blas():
            for k, b, x0, x1 in runs.tolist():
                rows = slice(int(self.row_edges[b]), int(self.row_edges[b + 1]))
                yield k, rows, slice(x0, x1), self.mh.block_product(b, wide[masks[k], :, x0:x1])

    def make_tiled(
        self, threshold: float, cuts: tuple[float, ...] = (), masks: np.ndarray | None = None
    ) -> tuple[TiledMasks, np.ndarray]:
        """The upscaled masks ``> threshold`` of ``masks`` (indices; all if None), K of them, as
        :class:`~samdeploy.sam.amg.TiledMasks`, and their K x len(cuts) pixel counts ``> cut`` (as
        :meth:`count_above`): the known tiles as one row pattern per row block, the open ones'
        pixels as made, no mask written at the picture's size."""
        from samdeploy.sam.amg import TiledMasks

        masks = np.arange(self.count) if masks is None else np.asarray(masks, dtype=np.int64)
        levels = np.asarray([threshold, *cuts], dtype=np.float32)
        counts = np.zeros((len(masks), len(cuts)), dtype=np.int64)
        above, unknown = self.classify(levels, masks)
        counts += self._whole_tiles(above[..., 1:])
        # Known tiles (False where open): each row block's rows, tile columns widened to pixels.
        patterns = np.repeat(above[..., 0], np.diff(self.col_edges), axis=2)  # K x B x W
        runs = self._runs(unknown)
        widths = runs[:, 3] - runs[:, 2]
        starts = np.cumsum(widths) - widths  # where each run's columns start in the cells
        heights = np.diff(self.row_edges)
        cells = np.empty((int(heights.max()), int(widths.sum())), dtype=bool)
        for (k, _, columns, block), j in zip(self._made(masks, runs), starts.tolist(), strict=True):
            target = cells[: block.shape[0], j : j + columns.stop - columns.start]
            np.greater(block, levels[0], out=target)
            # Below a short block's rows, its last row repeated (no change of value down there).
            cells[block.shape[0] :, j : j + target.shape[1]] = target[-1]
            _add_counts(counts[k], block, levels[1:])
        column = np.arange(cells.shape[1]) - np.repeat(starts - runs[:, 2], widths)
        tiled = TiledMasks(
            edges=self.row_edges,
            patterns=patterns,
            cells=cells,
            cell_mask=np.repeat(runs[:, 0], widths),
            cell_band=np.repeat(runs[:, 1], widths),
            cell_x=column,
            size=self.resize.size,
        )
        return tiled, counts


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

    def resize(self) -> MaskResize:
        """SAM's steps: upscale to S x S, crop to the resized image, resize to the original."""
        square = (self.image_size, self.image_size)
        return MaskResize(self.low_res_size, square, self.input_size, self.original_size)


def _masks_first(low_res: np.ndarray) -> np.ndarray:
    """``...xRhxRw`` logits as float32 N x Rh x Rw (a view where they already are)."""
    low_res = np.asarray(low_res, dtype=np.float32)
    return low_res.reshape(-1, *low_res.shape[-2:])


def _add_counts(counts: np.ndarray, block: np.ndarray, levels: np.ndarray) -> None:
    """Add the pixels of ``block`` above each of the ``levels`` to ``counts`` (one per level)."""
    for level, cut in enumerate(levels):
        counts[level] += np.count_nonzero(block > cut)


def _block_edges(matrix: BandedMatrix) -> np.ndarray:
    """Where each row block of ``matrix`` starts, and where the last one ends (blocks + 1 values)."""
    return np.array([row0 for row0, *_ in matrix.blocks] + [matrix.blocks[-1][1]], dtype=np.int64)


def _tile_bounds(low_res: np.ndarray, mh: BandedMatrix, mw: BandedMatrix) -> tuple[np.ndarray, np.ndarray]:
    """For N x Rh x Rw logits: the least and the largest logit each tile of ``Mh @ X @ Mw^T`` reads
    (N x row blocks of Mh x row blocks of Mw). NaN where a tile reads a NaN."""
    rows, row_starts = mh.bands
    cols, col_starts = mw.bands
    band = low_res[:, rows, :]
    least = np.minimum.reduceat(np.minimum.reduceat(band, row_starts, axis=1)[..., cols], col_starts, axis=2)
    largest = np.maximum.reduceat(
        np.maximum.reduceat(band, row_starts, axis=1)[..., cols], col_starts, axis=2
    )
    return least, largest


def _width_pass(low_res: np.ndarray, mw: BandedMatrix) -> np.ndarray:
    """``X @ Mw^T`` for ...xRhxRw logits: ...xRhxW, a transposed view of the contiguous product."""
    # Width pass on the transposed logits (Mw @ X^T: ... x W x Rh); the height pass reads it back
    # transposed (... x Rh x W): both passes are row-blocked products with contiguous outputs.
    low_res = np.asarray(low_res, dtype=np.float32)
    return np.swapaxes(mw.apply(np.swapaxes(low_res, -1, -2)), -1, -2)


def postprocess_masks(low_res: np.ndarray, geometry: MaskGeometry, above: float | None = None) -> np.ndarray:
    """Low-res logits (...xRhxRw) -> logits at the original size (...xHxW) float32, or with ``above``
    the bool masks ``logits > above`` (without the float logits at full size).

    Equals ``Sam.postprocess_masks`` up to float32 rounding (see :class:`MaskResize`).
    """
    return geometry.resize()(low_res, above)


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
