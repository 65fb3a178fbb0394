"""Automatic mask generation math in numpy: the counterpart of ``segment_anything.utils.amg``.

Every function here gives the same numbers as its official (torch/torchvision) counterpart: the
integer and boolean results (boxes, keep indices, RLE counts, filters) are equal, not just close.
Where torch does float32 arithmetic (stability scores, box IoU, comparisons against a Python
threshold) the same float32 operations are done here in the same order.

Shapes: ``N`` masks, ``HxW`` pixels, boxes XYXY in pixels with right/bottom inclusive for boxes
computed from masks (``batched_mask_to_box``) and exclusive for crop boxes, as in the official code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import product
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

if TYPE_CHECKING:
    from samdeploy.sam.transforms import MaskResize

Rle = dict[str, Any]
"""Uncompressed RLE: ``{"size": [h, w], "counts": [zeros, ones, zeros, ...]}`` over column-major pixels."""


# ---------------------------------------------------------------------------------------------
# Point grids and crop boxes
# ---------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n)x2 float64 points evenly spaced in [0,1]x[0,1], cell centres, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One normalized point grid per crop layer 0..n_layers; layer i has ``n_per_side / scale**i`` per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, exclusive right/bottom) and their layer index.

    Layer 0 is the whole image; layer i has ``(2**i)**2`` overlapping crops, listed column by column
    (``product(x0s, y0s)``) as the official generator does.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layer_idxs = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


# ---------------------------------------------------------------------------------------------
# Scores, boxes and the crop frame
# ---------------------------------------------------------------------------------------------


def calculate_stability_score(
    logits: np.ndarray, mask_threshold: float, threshold_offset: float
) -> np.ndarray:
    """Stability of ...xHxW mask logits -> ... float32: IoU of the masks cut at ``thr + off`` and ``thr - off``.

    The high cut is contained in the low one, so the IoU is ``count(> thr + off) / count(> thr - off)``;
    0/0 gives NaN, as in the official code. The thresholds are float32, like torch's comparison
    with a Python scalar, and the counts are summed as int16 per row then int32, as officially.
    """
    high, low = _stability_cuts(mask_threshold, threshold_offset)
    return _stability(_count_above(logits, high), _count_above(logits, low))


def masks_and_stability(
    rows: Iterable[tuple[tuple[int, ...], int, int, np.ndarray]],
    shape: tuple[int, ...],
    mask_threshold: float,
    threshold_offset: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bool masks ``logits > mask_threshold`` (``shape``, ...xHxW; into ``out`` if given) and their
    :func:`calculate_stability_score`, from logits that come a piece at a time:
    ``(index, row0, row1, block)`` as :meth:`~samdeploy.sam.transforms.MaskResize.rows` yields them
    (``block`` is ``logits[index][..., row0:row1, :]``).

    The logits are never held at full size (16 masks of a 12-megapixel picture are 768 MB of
    float32). The counts per piece add up to those of the whole logits, so the scores are the same.
    """
    high, low = _stability_cuts(mask_threshold, threshold_offset)
    threshold = np.float32(mask_threshold)
    masks = np.empty(shape, dtype=bool) if out is None else out
    if masks.shape != tuple(shape) or masks.dtype != np.bool_:
        raise ValueError(f"out is {masks.dtype} {masks.shape}, the masks are bool {tuple(shape)}")
    intersections = np.zeros(shape[:-2], dtype=np.int32)
    unions = np.zeros(shape[:-2], dtype=np.int32)
    for index, row0, row1, block in rows:
        intersections[index] += _count_above(block, high)
        unions[index] += _count_above(block, low)
        np.greater(block, threshold, out=masks[index][..., row0:row1, :])
    return masks, _stability(intersections, unions)


def stable_masks(
    resize: MaskResize,
    low_res: np.ndarray,
    mask_threshold: float,
    threshold_offset: float,
    stability_thresh: float,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, BoxedMasks | TiledMasks, np.ndarray]:
    """The generator's stability filter on N x Rh x Rw low-res logits brought to ``resize.size``:
    (``keep``, the indices whose :func:`calculate_stability_score` is ``>= stability_thresh``, all
    of them if it is <= 0; their bool masks ``> mask_threshold``, as :class:`TiledMasks` or
    :class:`BoxedMasks`, both with the boxes :func:`batched_mask_to_box` gives and the official RLEs;
    every mask's stability score).

    Where OpenCV resizes, the masks and scores come mask by mask (:func:`masks_and_stability`),
    into ``out`` (N x H x W bool) if given, and are kept inside their boxes (:class:`BoxedMasks`).
    Otherwise, where the tiles pay (:meth:`~samdeploy.sam.transforms.MaskResize.tiles_pay`: 6
    megapixels in all), the scores are counted first
    (:meth:`~samdeploy.sam.transforms.Tiling.count_above`) and only the masks that pass are made, as
    tiles, none at the picture's size (:meth:`~samdeploy.sam.transforms.Tiling.make_tiled`; with no
    filter, masks and counts in one pass), skipping the tiles the low-res logits already decide: the
    same masks, boxes and scores, several times faster at most photos' sizes. Smaller calls take
    whole rows (:meth:`~samdeploy.sam.transforms.MaskResize.rows`) as OpenCV's do, and so do rows
    wider than int16 counts (32767 pixels), to keep the official per-row sums."""
    shape = (len(low_res), *resize.size)
    if out is not None and (out.shape != shape or out.dtype != np.bool_):
        raise ValueError(f"out is {out.dtype} {out.shape}, the masks are bool {shape}")
    if resize.in_opencv or resize.size[1] > np.iinfo(np.int16).max or not resize.tiles_pay(len(low_res)):
        masks, stability = masks_and_stability(
            resize.rows(low_res), shape, mask_threshold, threshold_offset, out
        )
        keep = _stable(stability, stability_thresh)
        return keep, BoxedMasks.from_masks(masks if len(keep) == len(masks) else masks[keep]), stability
    cuts = _stability_cuts(mask_threshold, threshold_offset)
    tiling = resize.tiling(low_res)
    if stability_thresh <= 0.0:  # every mask is kept: one pass makes masks and counts
        masks, counts = tiling.make_tiled(mask_threshold, cuts)
        return np.arange(len(low_res)), masks, _stability(counts[:, 0], counts[:, 1])
    counts = tiling.count_above(cuts)
    stability = _stability(counts[:, 0], counts[:, 1])
    keep = _stable(stability, stability_thresh)
    return keep, tiling.make_tiled(mask_threshold, masks=keep)[0], stability


def _stable(stability: np.ndarray, stability_thresh: float) -> np.ndarray:
    if stability_thresh <= 0.0:
        return np.arange(len(stability))
    return np.flatnonzero(stability >= np.float32(stability_thresh))


def _stability_cuts(mask_threshold: float, threshold_offset: float) -> tuple[np.float32, np.float32]:
    return np.float32(mask_threshold + threshold_offset), np.float32(mask_threshold - threshold_offset)


def _count_above(logits: np.ndarray, cut: np.float32) -> np.ndarray:
    """Pixels above ``cut`` per ...xHxW mask, summed as int16 per row then int32, as officially."""
    if logits.ndim == 2 and logits.shape[-1] <= np.iinfo(np.int16).max:
        # One mask whose rows cannot overflow int16: the plain count is the same number, faster.
        return np.int32(np.count_nonzero(logits > cut))
    return (logits > cut).sum(-1, dtype=np.int16).sum(-1, dtype=np.int32)


def _stability(intersections: np.ndarray, unions: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return intersections.astype(np.float32) / unions.astype(np.float32)


def batched_mask_to_box(masks: np.ndarray) -> np.ndarray:
    """Boxes around ...xHxW boolean masks -> ...x4 int64 XYXY, right/bottom inclusive; [0,0,0,0] if empty.

    The rows of each mask are searched whole, its columns only between its top and bottom row.
    """
    h, w = masks.shape[-2:]
    boxes = np.zeros((*masks.shape[:-2], 4), dtype=np.int64)
    if masks.size == 0:
        return boxes
    rows = masks.any(axis=-1)  # ...xH
    for index in np.ndindex(masks.shape[:-2]):
        filled = np.flatnonzero(rows[index])
        if not filled.size:
            continue
        top, bottom = int(filled[0]), int(filled[-1])
        cols = np.flatnonzero(masks[index][top : bottom + 1].any(axis=0))
        boxes[index] = cols[0], top, cols[-1], bottom
    return boxes


def box_xyxy_to_xywh(box: np.ndarray) -> np.ndarray:
    """A 4-vector (or ...x4 array) XYXY -> XYWH, same dtype."""
    out = np.array(box, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas ``(x1 - x0) * (y1 - y0)`` of Nx4 XYXY boxes, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> np.ndarray:
    """N bool: the box (crop frame, Nx4) lies within ``atol`` px of a crop edge that is not an image edge."""
    crop = np.asarray(crop_box, dtype=np.float32)
    orig = np.asarray(orig_box, dtype=np.float32)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    near_crop_edge = np.abs(boxes - crop[None, :]) <= np.float32(atol)
    near_image_edge = np.abs(boxes - orig[None, :]) <= np.float32(atol)
    return np.any(near_crop_edge & ~near_image_edge, axis=1)


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: list[int]) -> np.ndarray:
    """...x4 boxes in the crop frame -> the image frame."""
    x0, y0, _, _ = crop_box
    return boxes + np.array([x0, y0, x0, y0], dtype=np.int64)


def uncrop_points(points: np.ndarray, crop_box: list[int]) -> np.ndarray:
    """...x2 points in the crop frame -> the image frame."""
    x0, y0, _, _ = crop_box
    return points + np.array([x0, y0], dtype=np.int64)


def uncrop_masks(masks: np.ndarray, crop_box: list[int], orig_h: int, orig_w: int) -> np.ndarray:
    """Nxhxw masks of a crop -> NxHxW masks of the image, zero outside the crop."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    out = np.zeros((*masks.shape[:-2], orig_h, orig_w), dtype=masks.dtype)
    out[..., y0:y1, x0:x1] = masks
    return out


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression
# ---------------------------------------------------------------------------------------------


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy box NMS: indices (int64) of the boxes kept, by decreasing score.

    Same result as ``torchvision.ops.batched_nms(boxes.float(), scores, zeros, iou_threshold)`` on
    CPU, which is how the official generator calls it: IoU in float32 in torchvision's operation
    order, a box is dropped when its IoU with a kept box is ``> iou_threshold`` (compared in float64).
    Equal scores are visited in index order (torchvision's kernel sorts stably), which decides which
    of two tied duplicates survives; for more than 1000 boxes torchvision re-sorts the kept indices
    with torch's unstable sort, replayed here so that the order of tied results matches too.

    Args:
      boxes: Nx4 XYXY boxes (any real dtype; used as float32).
      scores: N scores (used as float32).
      iou_threshold: the IoU above which the lower-scored box is suppressed.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.lexsort((-scores, ~np.isnan(scores)))  # stable: by score descending, NaN first
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for pos, i in enumerate(order):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = order[pos + 1 :]
            rest = rest[~suppressed[rest]]
            if rest.size == 0:
                break
            w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest[iou.astype(np.float64) > iou_threshold]] = True
    kept = np.asarray(keep, dtype=np.int64)
    if boxes.size > 4000:
        # torchvision's large-input path re-sorts the kept indices (in index order) by score.
        kept = np.sort(kept)
        kept = kept[_torch_sort_descending(scores[kept])]
    return kept


def _torch_sort_descending(keys: np.ndarray) -> np.ndarray:
    """Indices that sort float32 ``keys`` descending, NaN first, equal keys ordered as torch's CPU sort.

    Without ties every sort agrees, so numpy sorts. With ties, ``torch.sort(descending=True)`` on
    CPU is libstdc++'s ``std::sort`` (introsort: median-of-three quicksort to runs of 16, heapsort
    past a depth of 2*log2(n), then insertion sort) over (key, index) pairs compared by key only;
    it is replayed here step by step so that ties come out in the same order.
    """
    keys = np.asarray(keys, dtype=np.float32)
    if np.unique(keys).size == keys.size and not np.isnan(keys).any():
        return np.argsort(-keys, kind="stable").astype(np.int64)
    return np.asarray(_IntroSort([float(k) for k in keys]).run(), dtype=np.int64)


class _IntroSort:
    """libstdc++'s ``std::sort`` of the indices 0..n-1 with "a before b" = key[a] > key[b] (NaN largest)."""

    _THRESHOLD = 16

    def __init__(self, keys: list[float]) -> None:
        self.keys = keys
        self.a = list(range(len(keys)))

    def before(self, i: int, j: int) -> bool:
        ki, kj = self.keys[i], self.keys[j]
        return (math.isnan(ki) and not math.isnan(kj)) or ki > kj

    def run(self) -> list[int]:
        n = len(self.a)
        if n < 2:
            return self.a
        self._introsort_loop(0, n, 2 * (n.bit_length() - 1))
        if n > self._THRESHOLD:
            self._insertion_sort(0, self._THRESHOLD)
            for i in range(self._THRESHOLD, n):
                self._unguarded_linear_insert(i)
        else:
            self._insertion_sort(0, n)
        return self.a

    def _introsort_loop(self, first: int, last: int, depth: int) -> None:
        a = self.a
        while last - first > self._THRESHOLD:
            if depth == 0:
                self._heap_sort(first, last)
                return
            depth -= 1
            self._move_median_to_first(first, first + 1, first + (last - first) // 2, last - 1)
            lo, hi = first + 1, last
            while True:
                while self.before(a[lo], a[first]):
                    lo += 1
                hi -= 1
                while self.before(a[first], a[hi]):
                    hi -= 1
                if not lo < hi:
                    break
                a[lo], a[hi] = a[hi], a[lo]
                lo += 1
            self._introsort_loop(lo, last, depth)
            last = lo

    def _move_median_to_first(self, result: int, x: int, y: int, z: int) -> None:
        a, before = self.a, self.before
        if before(a[x], a[y]):
            if before(a[y], a[z]):
                pick = y
            elif before(a[x], a[z]):
                pick = z
            else:
                pick = x
        elif before(a[x], a[z]):
            pick = x
        elif before(a[y], a[z]):
            pick = z
        else:
            pick = y
        a[result], a[pick] = a[pick], a[result]

    def _insertion_sort(self, first: int, last: int) -> None:
        a = self.a
        for i in range(first + 1, last):
            if self.before(a[i], a[first]):
                value = a[i]
                a[first + 1 : i + 1] = a[first:i]
                a[first] = value
            else:
                self._unguarded_linear_insert(i)

    def _unguarded_linear_insert(self, last: int) -> None:
        a = self.a
        value = a[last]
        while self.before(value, a[last - 1]):
            a[last] = a[last - 1]
            last -= 1
        a[last] = value

    def _heap_sort(self, first: int, last: int) -> None:
        a = self.a
        length = last - first
        for parent in range((length - 2) // 2, -1, -1):
            self._adjust_heap(first, parent, length, a[first + parent])
        while last - first > 1:
            last -= 1
            value = a[last]
            a[last] = a[first]
            self._adjust_heap(first, 0, last - first, value)

    def _adjust_heap(self, first: int, hole: int, length: int, value: int) -> None:
        a, before = self.a, self.before
        top = child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if before(a[first + child], a[first + child - 1]):
                child -= 1
            a[first + hole] = a[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            a[first + hole] = a[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and before(a[first + parent], value):
            a[first + hole] = a[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        a[first + hole] = value


# ---------------------------------------------------------------------------------------------
# Run-length encoding and mask clean-up
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoxedMasks:
    """N boolean masks of an H x W picture held as the pixels inside each one's box, every pixel
    outside it False: what the generator keeps of a candidate mask made whole (by OpenCV, or at a
    small size) until its run-length encoding, its crop's masks never copied into the picture.

    ``regions[i]`` is mask i's ``[y0 : y1 + 1, x0 : x1 + 1]`` for ``boxes[i] = [x0, y0, x1, y1]``
    (inclusive; ``[0, 0, 0, 0]`` and one False pixel for an empty mask). The boxes are those of
    :func:`batched_mask_to_box` when the masks were made by :func:`stable_masks` or
    :meth:`from_masks` without boxes; looser ones describe the same masks.
    """

    regions: tuple[np.ndarray, ...]
    boxes: np.ndarray
    size: tuple[int, int]

    @classmethod
    def from_masks(cls, masks: np.ndarray, boxes: np.ndarray | None = None) -> BoxedMasks:
        """NxHxW bool masks -> their regions inside ``boxes`` (views; :func:`batched_mask_to_box`
        if not given)."""
        boxes = batched_mask_to_box(masks) if boxes is None else np.asarray(boxes, dtype=np.int64)
        regions = tuple(
            mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
            for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True)
        )
        return cls(regions, boxes, (int(masks.shape[-2]), int(masks.shape[-1])))

    def __len__(self) -> int:
        return len(self.regions)

    def select(self, index: np.ndarray) -> BoxedMasks:
        """The masks at ``index`` (integer indices or a bool selector)."""
        index = np.arange(len(self))[index]
        return BoxedMasks(tuple(self.regions[i] for i in index), self.boxes[index], self.size)

    def uncrop(self, crop_box: list[int], height: int, width: int) -> BoxedMasks:
        """Masks of a crop (XYXY, exclusive) -> the same masks in the ``height`` x ``width`` image,
        False outside the crop (:func:`uncrop_masks`, without a copy)."""
        return BoxedMasks(self.regions, uncrop_boxes_xyxy(self.boxes, crop_box), (int(height), int(width)))

    def to_masks(self) -> np.ndarray:
        """The NxHxW bool masks."""
        masks = np.zeros((len(self), *self.size), dtype=bool)
        for mask, region, (x0, y0, _, _) in zip(masks, self.regions, self.boxes, strict=True):
            mask[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
        return masks

    def to_rle(self) -> list[Rle]:
        """N uncompressed RLEs, as the official ``mask_to_rle_pytorch`` gives them for the masks.

        The changes of value in column-major order are found in the row-major regions (a
        transposed copy costs ~10x the rest): down a column, between (y - 1, x) and (y, x), at
        column-major index x * h + y, inside the box and across its top and bottom edges; from
        the bottom of a column to the top of the next, at (x + 1) * h, only where a box touches
        the picture's top or bottom row. A 2-D search is one-dimensional ``flatnonzero`` on the
        region (a 2-D nonzero is ~10x slower).
        """
        h, w = self.size
        out = []
        for region, box in zip(self.regions, self.boxes, strict=True):
            x0, y0 = int(box[0]), int(box[1])
            rows, cols = region.shape
            y, x = np.divmod(np.flatnonzero(region[1:] != region[:-1]), cols)
            _, edges = _frame_edge_changes(region[:1], region[-1:], x0, y0, rows, (h, w))
            changes = np.concatenate([(x + x0) * h + y + y0 + 1, edges])
            changes.sort()
            out.append(_rle(changes, (h, w), x0 == 0 and y0 == 0 and bool(region[0, 0])))
        return out


@dataclass(frozen=True)
class TiledMasks:
    """K boolean masks of an ``size`` (h x w) frame as bands of rows, none written whole: every row of
    band b of mask k (rows ``edges[b]`` to ``edges[b + 1] - 1``) is ``patterns[k, b]`` (K x B x w),
    except in the columns of the cells. Cell column j is column ``cell_x[j]`` of band ``cell_band[j]``
    of mask ``cell_mask[j]``, and its rows are ``cells[:height, j]`` (``cells`` is as tall as the
    tallest band; below a shorter band's rows its last row repeats). ``patterns`` is False under
    the cells, whose columns come mask by mask.

    :meth:`~samdeploy.sam.transforms.Tiling.make_tiled` makes them from tiles: the known ones are the
    patterns, the open ones' pixels the cells. The boxes and RLEs follow from the bands' first and
    last rows and the cells, so their cost grows with the masks' edges, not their areas.
    ``index`` selects masks (:meth:`select`) and ``origin``/``picture`` place the frame in a
    larger picture (:meth:`uncrop`), as :class:`BoxedMasks` does.
    """

    edges: np.ndarray
    patterns: np.ndarray
    cells: np.ndarray
    cell_mask: np.ndarray
    cell_band: np.ndarray
    cell_x: np.ndarray
    size: tuple[int, int]
    index: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)  # (x, y) of the frame in the picture
    picture: tuple[int, int] | None = None  # (h, w); the frame's size if None

    def __len__(self) -> int:
        return len(self.patterns) if self.index is None else len(self.index)

    @property
    def _chosen(self) -> np.ndarray:
        return np.arange(len(self.patterns)) if self.index is None else self.index

    def select(self, index: np.ndarray) -> TiledMasks:
        """The masks at ``index`` (integer indices or a bool selector)."""
        return replace(self, index=self._chosen[index])

    def uncrop(self, crop_box: list[int], height: int, width: int) -> TiledMasks:
        """Masks of a crop (XYXY, exclusive) -> the same masks in the ``height`` x ``width`` image."""
        x0, y0 = self.origin
        return replace(self, origin=(x0 + crop_box[0], y0 + crop_box[1]), picture=(int(height), int(width)))

    @cached_property
    def _frame_boxes(self) -> np.ndarray:
        """K x 4 boxes of every mask in the frame, as :func:`batched_mask_to_box` finds them."""
        k_masks, bands, width = self.patterns.shape
        heights = np.diff(self.edges)
        band_any = self.patterns.any(axis=2)  # K x B
        top, bottom = np.full(k_masks, self.size[0]), np.full(k_masks, -1)
        has = band_any.any(axis=1)
        first, last = band_any.argmax(axis=1), bands - 1 - band_any[:, ::-1].argmax(axis=1)
        top[has], bottom[has] = self.edges[first[has]], self.edges[last[has] + 1] - 1
        columns = self.patterns.any(axis=1)  # K x w
        if self.cells.size:
            # The rows with a True pixel in each run of cell columns of one band of one mask (a
            # reduction along the rows; searching down each column is strided, several times slower).
            group = self.cell_mask * bands + self.cell_band
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            rows = np.logical_or.reduceat(self.cells, starts, axis=1)  # R x groups
            filled = rows.any(axis=0)
            owner, band = self.cell_mask[starts][filled], self.cell_band[starts][filled]
            row_first = rows[:, filled].argmax(axis=0)
            row_last = np.minimum(len(rows) - 1 - rows[::-1, filled].argmax(axis=0), heights[band] - 1)
            np.minimum.at(top, owner, self.edges[band] + row_first)
            np.maximum.at(bottom, owner, self.edges[band] + row_last)
            filled = self.cells.any(axis=0)
            columns[self.cell_mask[filled], self.cell_x[filled]] = True
        left, right = columns.argmax(axis=1), width - 1 - columns[:, ::-1].argmax(axis=1)
        boxes = np.stack([left, top, right, bottom], axis=1).astype(np.int64)
        boxes[bottom < 0] = 0
        return boxes

    @property
    def boxes(self) -> np.ndarray:
        """N x 4 int64 boxes XYXY inclusive in the picture ([0, 0, 0, 0] in the frame for an empty mask)."""
        x0, y0 = self.origin
        return self._frame_boxes[self._chosen] + np.array([x0, y0, x0, y0], dtype=np.int64)

    def _band_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """K x B x w: the first and the last row of every band of every mask."""
        first, last = self.patterns.copy(), self.patterns.copy()
        if self.cells.size:
            _, bands, width = self.patterns.shape
            at = (self.cell_mask * bands + self.cell_band) * width + self.cell_x
            first.reshape(-1)[at] = self.cells[0]
            last.reshape(-1)[at] = self.cells[-1]  # a short band's last row repeats down to there
        return first, last

    def to_masks(self) -> np.ndarray:
        """The N x h x w bool masks of the picture."""
        height, width = self.picture or self.size
        x0, y0 = self.origin
        heights = np.diff(self.edges)
        out = np.zeros((len(self), height, width), dtype=bool)
        for n, k in enumerate(self._chosen):
            frame = np.repeat(self.patterns[k], heights, axis=0)
            for j in np.flatnonzero(self.cell_mask == k):
                band = self.cell_band[j]
                frame[self.edges[band] : self.edges[band + 1], self.cell_x[j]] = self.cells[
                    : heights[band], j
                ]
            out[n, y0 : y0 + self.size[0], x0 : x0 + self.size[1]] = frame
        return out

    def to_rle(self) -> list[Rle]:
        """N uncompressed RLEs, as the official ``mask_to_rle_pytorch`` gives them for the masks
        in the picture: the changes of value in column-major order (key x * h + y for a change
        between (y - 1, x) and (y, x), and (x + 1) * h from the bottom of column x to the top of
        the next) are down the cells, between bands, across the frame's top and bottom edges and,
        where the frame touches the picture's top or bottom row, from column to column."""
        height, width = self.picture or self.size
        x0, y0 = self.origin
        frame_h, frame_w = self.size
        k_masks, bands, _ = self.patterns.shape
        first, last = self._band_rows()
        owners, keys = [], []

        def add(masks: np.ndarray, changes: np.ndarray) -> None:
            owners.append(masks)
            keys.append(changes)

        if self.cells.size:  # down a column inside a band: only in the cells
            row, j = np.divmod(np.flatnonzero(self.cells[1:] != self.cells[:-1]), self.cells.shape[1])
            y = y0 + self.edges[self.cell_band[j]] + row + 1
            add(self.cell_mask[j], (self.cell_x[j] + x0) * height + y)
        k, rest = np.divmod(np.flatnonzero(last[:, :-1] != first[:, 1:]), max((bands - 1) * frame_w, 1))
        band, x = np.divmod(rest, frame_w)
        add(k, (x + x0) * height + y0 + self.edges[band + 1])  # from band to band
        add(*_frame_edge_changes(first[:, 0], last[:, -1], x0, y0, frame_h, (height, width)))
        size = height * width
        combined = np.concatenate(owners).astype(np.int64) * (size + 1) + np.concatenate(keys)
        combined.sort()
        owner, changes = np.divmod(combined, size + 1)
        bounds = np.searchsorted(owner, np.arange(k_masks + 1))
        out = []
        for k in self._chosen.tolist():
            starts_true = x0 == 0 and y0 == 0 and bool(first[k, 0, 0])
            out.append(_rle(changes[bounds[k] : bounds[k + 1]], (height, width), starts_true))
        return out


def _frame_edge_changes(
    top: np.ndarray, bottom: np.ndarray, x0: int, y0: int, frame_h: int, picture: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, column-major key) of the changes of value at the edges of a frame of K masks, False
    outside it: ``top`` and ``bottom`` (K x frame width) are the frame's first and last rows, the
    frame ``frame_h`` rows tall at (``x0``, ``y0``) of a ``picture`` (h, w). Into the frame from the
    pixel above, out of it into the pixel below, and, where the frame touches the picture's top or
    bottom row, from the bottom of column x to the top of column x + 1 (key (x + 1) * h)."""
    height, width = picture
    k_masks, frame_w = top.shape
    owners, keys = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    if y0 > 0:  # into the frame from the False pixel above it
        k, x = np.divmod(np.flatnonzero(top), frame_w)
        owners.append(k)
        keys.append((x + x0) * height + y0)
    if y0 + frame_h < height:  # out of it into the False pixel below
        k, x = np.divmod(np.flatnonzero(bottom), frame_w)
        owners.append(k)
        keys.append((x + x0) * height + y0 + frame_h)
    if y0 == 0 or y0 + frame_h == height:  # column x's bottom pixel against column x + 1's top one
        below, above = np.zeros((k_masks, width), dtype=bool), np.zeros((k_masks, width), dtype=bool)
        if y0 + frame_h == height:
            below[:, x0 : x0 + frame_w] = bottom
        if y0 == 0:
            above[:, x0 : x0 + frame_w] = top
        k, x = np.divmod(np.flatnonzero(below[:, :-1] != above[:, 1:]), max(width - 1, 1))
        owners.append(k)
        keys.append((x + 1) * height)
    return np.concatenate(owners), np.concatenate(keys)


def _rle(changes: np.ndarray, picture: tuple[int, int], starts_true: bool) -> Rle:
    """The uncompressed RLE of an h x w mask from its sorted column-major ``changes`` of value."""
    height, width = picture
    runs = np.diff(np.concatenate(([0], changes, [height * width]))).tolist()
    return {"size": [height, width], "counts": [0, *runs] if starts_true else runs}


def mask_to_rle(masks: np.ndarray, boxes: np.ndarray | None = None) -> list[Rle]:
    """NxHxW boolean masks -> N uncompressed RLEs (column-major, counts start with a run of zeros).

    ``boxes`` (Nx4 XYXY inclusive, as :func:`batched_mask_to_box` gives them; computed if not
    given) may be looser than the masks' own, but every True pixel must be inside: only the boxes
    are searched (:meth:`BoxedMasks.to_rle`).
    """
    return BoxedMasks.from_masks(masks, boxes).to_rle()


def rle_to_mask(rle: Rle) -> np.ndarray:
    """An uncompressed RLE -> HxW boolean mask (C order)."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: Rle) -> int:
    """Number of foreground pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: Rle) -> Rle:
    """Uncompressed RLE -> COCO compressed RLE with ``counts`` as a str (JSON-serializable)."""
    h, w = rle["size"]
    coco = mask_utils.frPyObjects(rle, h, w)
    coco["counts"] = coco["counts"].decode("utf-8")
    return coco


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` pixels.

    8-connected components (``cv2.connectedComponentsWithStats``). If every island is small, the
    largest one is kept. Returns the HxW boolean mask and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    correct_holes = mode == "holes"
    working_mask = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working_mask, 8)
    sizes = stats[1:, -1]  # row 0 is the background
    small_regions = np.flatnonzero(sizes < area_thresh) + 1
    if small_regions.size == 0:
        return mask, False
    fill_labels = np.concatenate(([0], small_regions))
    if not correct_holes:
        fill_labels = np.setdiff1d(np.arange(n_labels), fill_labels)
        if fill_labels.size == 0:
            fill_labels = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, fill_labels), True


# ---------------------------------------------------------------------------------------------
# A batch of candidate masks and what is known about them
# ---------------------------------------------------------------------------------------------


@dataclass
class MaskCandidates:
    """N candidate masks in the image frame, as RLEs with their scores (the official ``MaskData``).

    ``rles`` N uncompressed RLEs at image size; ``boxes`` Nx4 int64 XYXY (inclusive); ``iou_preds``
    N float32 predicted IoU; ``points`` Nx2 float64 prompt points (image pixels); ``stability_score``
    N float32; ``crop_boxes`` Nx4 int64 XYXY crop each mask came from.
    """

    rles: list[Rle] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    iou_preds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    stability_score: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: np.ndarray) -> MaskCandidates:
        """The candidates at integer indices ``keep``, in that order."""
        keep = np.asarray(keep, dtype=np.int64)
        return MaskCandidates(
            rles=[self.rles[i] for i in keep],
            boxes=self.boxes[keep],
            iou_preds=self.iou_preds[keep],
            points=self.points[keep],
            stability_score=self.stability_score[keep],
            crop_boxes=self.crop_boxes[keep],
        )

    @staticmethod
    def concat(parts: list[MaskCandidates]) -> MaskCandidates:
        """All candidates of ``parts``, in order."""
        if not parts:
            return MaskCandidates()
        return MaskCandidates(
            rles=[rle for part in parts for rle in part.rles],
            boxes=np.concatenate([p.boxes for p in parts]),
            iou_preds=np.concatenate([p.iou_preds for p in parts]),
            points=np.concatenate([p.points for p in parts]),
            stability_score=np.concatenate([p.stability_score for p in parts]),
            crop_boxes=np.concatenate([p.crop_boxes for p in parts]),
        )
