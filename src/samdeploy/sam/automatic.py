"""``SamAutomaticMaskGenerator``: segment everything, a drop-in for the official generator, as graphs.

    from samdeploy import SamAutomaticMaskGenerator, load_model   # was: from segment_anything import ...
    generator = SamAutomaticMaskGenerator(load_model("models/sam_vit_b"))
    records = generator.generate(image)                           # HxWx3 uint8 RGB

Same arguments, defaults, records and order of operations as ``segment_anything``'s generator
(see ``docs/everything.md``). The work runs as three graphs of nodes:

    crop graph, one item per crop box (pipeline: the next crop encodes while this one decodes)
        crop -> encode (preprocess -> image_encoder) -> image_embeddings
    point graph, one item per batch of points (pipeline: decoder and filtering overlap)
        point_prompts -> prompt_build -> mask_decoder (ONE call for the batch) -> filter_masks
    merge graph, one item per image
        merge_crops (per-crop NMS, cross-crop NMS) -> small_regions -> records

``filter_masks`` upscales only the masks whose predicted IoU passes ``pred_iou_thresh`` (the
stability score needs the upscaled logits, the IoU filter does not), a few at a time, and keeps
them as run-length encodings, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy import limits
from samdeploy.engine import Graph, ItemResult, Node, Profile, register_node
from samdeploy.errors import NodeError, PackageError, SamDeployError
from samdeploy.package import MASK_FILTER_OUTPUT
from samdeploy.sam.amg import (
    MaskCandidates,
    area_from_rle,
    batched_mask_to_box,
    box_area,
    box_nms,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    remove_small_regions,
    rle_to_mask,
    stable_masks,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from samdeploy.sam.graphs import EMBEDDINGS, connect_prompt_ports, decoder_node, encode_graph
from samdeploy.sam.images import as_rgb_array
from samdeploy.sam.model import ImageEmbedding, SamModel, load_model
from samdeploy.sam.nodes import PromptBuild
from samdeploy.sam.prompts import Prompt
from samdeploy.sam.transforms import MASK_THRESHOLD, MaskGeometry, MaskResize

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class GeneratorOptionError(SamDeployError, ValueError):
    """An option of :class:`SamAutomaticMaskGenerator` is out of range or inconsistent."""


@dataclass(frozen=True)
class CropInfo:
    """One crop of an image: ``box`` XYXY (right/bottom exclusive) in the image of ``image_size``
    (H, W), and its crop ``layer`` (0: the whole image)."""

    box: tuple[int, int, int, int]
    layer: int
    image_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) of the cropped image."""
        x0, y0, x1, y1 = self.box
        return y1 - y0, x1 - x0

    @property
    def image_box(self) -> list[int]:
        """The whole image as a box, XYXY."""
        return [0, 0, self.image_size[1], self.image_size[0]]


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


@register_node("amg.CropImage")
class CropImage(Node):
    """HxWx3 image and a :class:`CropInfo` -> the crop, hxwx3 uint8 (contiguous)."""

    inputs = {"image": np.ndarray, "crop": CropInfo}
    outputs = {"image": np.ndarray}

    def run(self, image: np.ndarray, crop: CropInfo) -> dict[str, Any]:
        x0, y0, x1, y1 = crop.box
        return {"image": np.ascontiguousarray(image[y0:y1, x0:x1])}


@register_node("amg.PointPrompts")
class PointPrompts(Node):
    """Bx2 points (pixels of the crop) -> one prompt batch of B single foreground clicks.

    Each point is its own prompt (label 1; ``prompt_build`` adds the padding point), so the decoder
    answers all B in one call. ``original_size`` is the crop's (h, w).
    """

    inputs = {"points": np.ndarray, "crop": CropInfo}
    outputs = {"prompt": Prompt, "original_size": tuple}

    def run(self, points: np.ndarray, crop: CropInfo) -> dict[str, Any]:
        batch = len(points)
        prompt = Prompt(
            point_coords=np.asarray(points, dtype=np.float64)[:, None, :],
            point_labels=np.ones((batch, 1), dtype=np.int64),
            boxes=None,
            mask_input=None,
            batch=batch,
        )
        return {"prompt": prompt, "original_size": crop.size}


MULTIMASK_TOKENS = slice(1, None)  # SAM's decoder: token 0 is the single-mask output


@register_node("amg.FilterMasks")
class FilterMasks(Node):
    """Decoder outputs for B points -> the candidate masks that pass the filters, as RLEs.

    In the official order: predicted IoU ``> pred_iou_thresh`` (on tokens 1..3, the multimask
    outputs), then the survivors' logits are upscaled to the crop, stability score
    ``>= stability_score_thresh``, binarize ``> 0``, boxes, drop boxes near a crop edge that is not
    an image edge, pad to the image and run-length encode. A threshold <= 0 disables its filter.

    ``iou_predictions`` Bx4, ``low_res_masks`` Bx4xRxR, ``points`` Bx2 (crop pixels). The output
    :class:`MaskCandidates` has boxes and points in the crop's frame and RLEs in the image's.

    With ``mask_filter`` the decoder has already dropped the prompts whose tokens all fail the IoU
    filter (:func:`~samdeploy.sam.nodes.mask_iou_threshold`): ``low_res_masks`` is KxTxRxR for the
    K prompts of the ``mask_indices`` input, and every mask the filter keeps is among them.
    """

    @dataclass
    class Params:
        image_size: int = 1024
        pred_iou_thresh: float = 0.88
        stability_score_thresh: float = 0.95
        stability_score_offset: float = 1.0
        chunk: int = 16  # masks upscaled at once: bounds memory at chunk x h x w bool
        mask_threshold: float = MASK_THRESHOLD
        mask_filter: bool = False  # low_res_masks holds only the prompts of mask_indices

    inputs = {
        "iou_predictions": np.ndarray,
        "low_res_masks": np.ndarray,
        "points": np.ndarray,
        "crop": CropInfo,
    }
    outputs = {"candidates": MaskCandidates}

    def input_ports(self) -> dict[str, Any]:
        ports = dict(self.inputs)
        if self.params.mask_filter:
            ports[MASK_FILTER_OUTPUT] = np.ndarray
        return ports

    def run(
        self,
        iou_predictions: np.ndarray,
        low_res_masks: np.ndarray,
        points: np.ndarray,
        crop: CropInfo,
        mask_indices: np.ndarray | None = None,
    ) -> dict[str, Any]:
        p = self.params
        if mask_indices is None:
            low_res, iou = self.select_tokens(low_res_masks, iou_predictions)
        else:  # B IoU rows but K mask rows: SAM's multimask tokens (the filter's tokens), as select_tokens
            low_res, iou = low_res_masks[:, MULTIMASK_TOKENS], iou_predictions[:, MULTIMASK_TOKENS]
        iou = np.ascontiguousarray(iou, dtype=np.float32)
        per_point = iou.shape[1]
        iou = iou.reshape(-1)  # point-major: point 0's three masks, then point 1's, ...
        low_res = low_res.reshape(-1, *low_res_masks.shape[-2:])
        points = np.repeat(np.asarray(points, dtype=np.float64), per_point, axis=0)
        keep = np.arange(iou.size)
        if p.pred_iou_thresh > 0.0:
            keep = np.flatnonzero(iou > np.float32(p.pred_iou_thresh))
        rows = keep  # mask i of the batch is row rows[i] of low_res
        if mask_indices is not None:  # low_res holds the prompts of mask_indices only
            row_of = np.full(len(iou_predictions), -1, dtype=np.int64)
            row_of[mask_indices] = np.arange(len(mask_indices))
            prompt_rows = row_of[keep // per_point]
            if (prompt_rows < 0).any():
                raise RuntimeError(
                    f"node '{self.name}': the decoder's mask filter dropped a mask that passes"
                    f" pred_iou_thresh {p.pred_iou_thresh}"
                )
            rows = prompt_rows * per_point + keep % per_point
        resize = self.mask_resize(low_res, crop)
        # One buffer for every chunk's bool masks: a fresh one per chunk (48 MB for 16 masks of 3
        # megapixels) was mapped and page-faulted anew each time, 6% of a 32x32-point run there.
        buffer = np.empty((min(p.chunk, keep.size), *resize.size), dtype=bool)
        parts = [
            self._filter_chunk(
                low_res[rows[chunk]], iou[keep[chunk]], points[keep[chunk]], crop, resize, buffer
            )
            for chunk in np.split(np.arange(keep.size), range(p.chunk, keep.size, p.chunk))
            if chunk.size
        ]
        return {"candidates": MaskCandidates.concat(parts)}

    def select_tokens(
        self, low_res_masks: np.ndarray, iou_predictions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The mask tokens the generator keeps (Bx4 -> BxC): the three multimask outputs."""
        return low_res_masks[:, MULTIMASK_TOKENS], iou_predictions[:, MULTIMASK_TOKENS]

    def mask_resize(self, low_res: np.ndarray, crop: CropInfo) -> MaskResize:
        """How low-res logits reach the crop's size (SAM's resize, crop, resize)."""
        return MaskGeometry.for_image(crop.size, self.params.image_size, low_res.shape[-2:]).resize()

    def _filter_chunk(
        self,
        low_res: np.ndarray,
        iou: np.ndarray,
        points: np.ndarray,
        crop: CropInfo,
        resize: MaskResize,
        buffer: np.ndarray,
    ) -> MaskCandidates:
        p = self.params
        # The masks that pass the stability filter, the logits at the crop's size never held whole
        # (a mask at a time in OpenCV, into the buffer; else only the tiles near the masks' edges,
        # each mask made only inside its box).
        keep, masks, stability = stable_masks(
            resize,
            low_res,
            p.mask_threshold,
            p.stability_score_offset,
            p.stability_score_thresh,
            out=buffer[: len(low_res)],
        )
        boxes = masks.boxes
        inside = ~is_box_near_crop_edge(boxes, list(crop.box), crop.image_box)
        if not inside.all():
            keep, masks, boxes = keep[inside], masks.select(inside), boxes[inside]
        height, width = crop.image_size
        return MaskCandidates(
            rles=masks.uncrop(list(crop.box), height, width).to_rle(),
            boxes=boxes,
            iou_preds=iou[keep],
            points=points[keep],
            stability_score=stability[keep],
            crop_boxes=np.tile(np.asarray(crop.box, dtype=np.int64), (len(keep), 1)),
        )


@register_node("amg.MergeCrops")
class MergeCrops(Node):
    """Per-crop candidates (crop frames) -> one set in the image frame, duplicates removed.

    Each crop's masks go through box NMS (``box_nms_thresh``, by predicted IoU) and back to image
    coordinates; with more than one crop, NMS across crops (``crop_nms_thresh``) prefers masks from
    smaller crops (score ``1 / crop area``).
    """

    @dataclass
    class Params:
        box_nms_thresh: float = 0.7
        crop_nms_thresh: float = 0.7

    inputs = {"crop_candidates": list}
    outputs = {"candidates": MaskCandidates}

    def run(self, crop_candidates: list[MaskCandidates]) -> dict[str, Any]:
        p = self.params
        parts = []
        for part in crop_candidates:
            part = part.select(box_nms(part.boxes, part.iou_preds, p.box_nms_thresh))
            if len(part):
                crop_box = part.crop_boxes[0].tolist()
                part = replace(
                    part,
                    boxes=uncrop_boxes_xyxy(part.boxes, crop_box),
                    points=uncrop_points(part.points, crop_box),
                )
            parts.append(part)
        merged = MaskCandidates.concat(parts)
        if len(crop_candidates) > 1:
            scores = np.float32(1) / box_area(merged.crop_boxes).astype(np.float32)
            merged = merged.select(box_nms(merged.boxes, scores, p.crop_nms_thresh))
        return {"candidates": merged}


@register_node("amg.SmallRegions")
class SmallRegions(Node):
    """Fill holes and drop islands smaller than ``min_area`` pixels, then remove new duplicates.

    As the official ``postprocess_small_regions``: masks left unchanged score 1 and changed ones 0
    in a box NMS at ``nms_thresh``; surviving changed masks get their new RLE and box.
    ``min_area`` <= 0 passes the candidates through.
    """

    @dataclass
    class Params:
        min_area: int = 0
        nms_thresh: float = 0.7

    inputs = {"candidates": MaskCandidates}
    outputs = {"candidates": MaskCandidates}

    def run(self, candidates: MaskCandidates) -> dict[str, Any]:
        p = self.params
        if p.min_area <= 0 or len(candidates) == 0:
            return {"candidates": candidates}
        changed_masks: dict[int, np.ndarray] = {}
        boxes = np.empty_like(candidates.boxes)
        scores = np.ones(len(candidates), dtype=np.float32)
        for i, rle in enumerate(candidates.rles):
            mask, holes = remove_small_regions(rle_to_mask(rle), p.min_area, "holes")
            mask, islands = remove_small_regions(mask, p.min_area, "islands")
            boxes[i] = batched_mask_to_box(mask)
            if holes or islands:
                changed_masks[i] = mask
                scores[i] = 0.0
        keep = box_nms(boxes, scores, p.nms_thresh)
        rles, new_boxes = list(candidates.rles), candidates.boxes.copy()
        for i in keep:
            if i in changed_masks:
                rles[i] = mask_to_rle(changed_masks[i][None])[0]
                new_boxes[i] = boxes[i]
        return {"candidates": replace(candidates, rles=rles, boxes=new_boxes).select(keep)}


@register_node("amg.MaskRecords")
class MaskRecords(Node):
    """Candidates -> the official generator's records (a list of dicts, one per mask).

    ``segmentation`` HxW bool (``binary_mask``), the uncompressed RLE dict (``uncompressed_rle``)
    or a COCO RLE with str counts (``coco_rle``); ``area`` int; ``bbox`` XYWH ints;
    ``predicted_iou`` float; ``point_coords`` [[x, y]]; ``stability_score`` float; ``crop_box`` XYWH.
    """

    @dataclass
    class Params:
        output_mode: str = "binary_mask"

    inputs = {"candidates": MaskCandidates}
    outputs = {"records": list}

    def run(self, candidates: MaskCandidates) -> dict[str, Any]:
        encode: Callable[[dict[str, Any]], Any] = {
            "binary_mask": rle_to_mask,
            "uncompressed_rle": lambda rle: rle,
            "coco_rle": coco_encode_rle,
        }[self.params.output_mode]
        records = [
            {
                "segmentation": encode(rle),
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(candidates.boxes[i]).tolist(),
                "predicted_iou": float(candidates.iou_preds[i]),
                "point_coords": [candidates.points[i].tolist()],
                "stability_score": float(candidates.stability_score[i]),
                "crop_box": box_xyxy_to_xywh(candidates.crop_boxes[i]).tolist(),
            }
            for i, rle in enumerate(candidates.rles)
        ]
        return {"records": records}


# ---------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's options, as the official constructor takes them (see its docstring)."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"

    def check(self) -> None:
        """Raise :class:`GeneratorOptionError` for an option out of range."""
        if self.output_mode not in OUTPUT_MODES:
            raise GeneratorOptionError(
                f"unknown output_mode {self.output_mode!r}; choose one of {', '.join(OUTPUT_MODES)}"
            )
        at_least = {
            "points_per_batch": (self.points_per_batch, 1),
            "crop_n_layers": (self.crop_n_layers, 0),
            "crop_n_points_downscale_factor": (self.crop_n_points_downscale_factor, 1),
        }
        if self.points_per_side is not None:
            at_least["points_per_side"] = (self.points_per_side, 1)
        for name, (value, low) in at_least.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise GeneratorOptionError(f"{name} must be an integer >= {low}, got {value!r}")
        at_most = {"points_per_batch": limits.MAX_POINTS_PER_BATCH, "crop_n_layers": limits.MAX_CROP_LAYERS}
        if self.points_per_side is not None:
            at_most["points_per_side"] = limits.MAX_POINTS_PER_SIDE
        for name, limit in at_most.items():
            limits.check(getattr(self, name), limit, error=GeneratorOptionError)
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not np.isfinite(value):
                raise GeneratorOptionError(f"{item.name} must be a finite number, got {value!r}")
        for name in ("box_nms_thresh", "crop_nms_thresh", "crop_overlap_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise GeneratorOptionError(f"{name} must be in [0, 1], got {value!r}")
        if self.stability_score_offset <= 0.0:
            raise GeneratorOptionError(
                f"stability_score_offset must be > 0, got {self.stability_score_offset!r}"
            )
        if self.min_mask_region_area < 0:
            raise GeneratorOptionError(
                f"min_mask_region_area must be >= 0, got {self.min_mask_region_area!r}"
            )


def _bounded(grids: list[np.ndarray]) -> list[np.ndarray]:
    """``grids`` (one per crop layer), unless the points of all crops of an image exceed
    ``limits.MAX_GENERATOR_POINTS`` (layer i has (2**i)**2 crops, each prompted with its grid)."""
    total = sum(len(grid) * 4**layer for layer, grid in enumerate(grids))
    limits.check(total, limits.MAX_GENERATOR_POINTS, error=GeneratorOptionError)
    return grids


def crop_graph(model: SamModel) -> Graph:
    """``image`` (HxWx3 RGB) and ``crop`` (:class:`CropInfo`) -> the crop's ``image_embeddings``."""
    graph = Graph("everything_crop")
    graph.add(CropImage("crop"))
    graph.add(encode_graph(model.package, model.options))
    graph.connect("crop.image", "encode.image")
    graph.input("image", "crop.image")
    graph.input("crop", "crop.crop")
    graph.output(EMBEDDINGS, f"encode.{EMBEDDINGS}")
    graph.validate()
    return graph


def point_graph(model: SamModel, config: GeneratorConfig) -> Graph:
    """``image_embeddings``, ``points`` (Bx2 crop pixels), ``crop`` -> ``candidates`` of the batch."""
    graph = Graph("everything_points")
    graph.add(PointPrompts("point_prompts"))
    mask_filter = model.package.filters_masks  # upscale only prompts with a mask above pred_iou_thresh
    graph.add(
        PromptBuild(
            "prompt_build",
            {
                "image_size": model.image_size,
                "mask_input_size": list(model.mask_input_size),
                "mask_filter_tokens": model.package.mask_filter_tokens,
                "pred_iou_thresh": config.pred_iou_thresh,
            },
        )
    )
    graph.add(decoder_node(model.package, model.options))
    graph.add(
        FilterMasks(
            "filter_masks",
            {
                "image_size": model.image_size,
                "pred_iou_thresh": config.pred_iou_thresh,
                "stability_score_thresh": config.stability_score_thresh,
                "stability_score_offset": config.stability_score_offset,
                "mask_filter": mask_filter,
            },
        )
    )
    graph.connect("point_prompts.prompt", "prompt_build.prompt")
    graph.connect("point_prompts.original_size", "prompt_build.original_size")
    connect_prompt_ports(graph, model.package)
    graph.connect("mask_decoder.iou_predictions", "filter_masks.iou_predictions")
    graph.connect("mask_decoder.low_res_masks", "filter_masks.low_res_masks")
    if mask_filter:
        graph.connect(f"mask_decoder.{MASK_FILTER_OUTPUT}", f"filter_masks.{MASK_FILTER_OUTPUT}")
    graph.input(EMBEDDINGS, f"mask_decoder.{EMBEDDINGS}")
    graph.input("points", "point_prompts.points", "filter_masks.points")
    graph.input("crop", "point_prompts.crop", "filter_masks.crop")
    graph.output("candidates", "filter_masks.candidates")
    graph.validate()
    return graph


def merge_graph(config: GeneratorConfig) -> Graph:
    """``crop_candidates`` (one :class:`MaskCandidates` per crop) -> ``records``."""
    graph = Graph("everything_merge")
    graph.add(
        MergeCrops(
            "merge_crops",
            {"box_nms_thresh": config.box_nms_thresh, "crop_nms_thresh": config.crop_nms_thresh},
        )
    )
    graph.add(
        SmallRegions(
            "small_regions",
            {
                "min_area": config.min_mask_region_area,
                "nms_thresh": max(config.box_nms_thresh, config.crop_nms_thresh),
            },
        )
    )
    graph.add(MaskRecords("records", {"output_mode": config.output_mode}))
    graph.connect("merge_crops.candidates", "small_regions.candidates")
    graph.connect("small_regions.candidates", "records.candidates")
    graph.input("crop_candidates", "merge_crops.crop_candidates")
    graph.output("records", "records.records")
    graph.validate()
    return graph


def _outputs(results: Iterable[ItemResult]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, outputs) of each streamed item; a failed item raises (its user error as itself)."""
    for result in results:
        if result.error is not None:
            if isinstance(result.error.cause, SamDeployError):
                raise result.error.cause from None
            raise result.error
        yield result.index, result.outputs  # type: ignore[misc]


#: The generator's numeric options: those a package may recommend and a caller may leave at None.
GENERATOR_OPTIONS = tuple(field.name for field in fields(GeneratorConfig) if field.name != "output_mode")


def recommended_settings(package: Any) -> dict[str, Any]:
    """The generator options a model package recommends (its manifest's ``generator``; {} if none).

    Only :data:`GENERATOR_OPTIONS` count; a value that is out of range fails later, in
    :meth:`GeneratorConfig.check`, like a bad argument.
    """
    generator = package.manifest.get("generator") or {}
    return {name: generator[name] for name in GENERATOR_OPTIONS if generator.get(name) is not None}


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts, then filters and de-duplicates.

    ``model`` is a :class:`~samdeploy.sam.model.SamModel` (or a package path, loaded with defaults).
    Every other argument is the official generator's, with its meaning. An option left at None takes
    the value the model package recommends (its manifest's ``generator``, measured to fit that
    model; see :attr:`recommended`), else the official default (:class:`GeneratorConfig`): the
    official checkpoints carry no recommendation, so they run exactly as ``segment_anything`` does.

    points_per_side: points sampled along each side (``points_per_side**2`` in all); not used when
      ``point_grids`` gives them. points_per_batch: points answered by one decoder call.
    pred_iou_thresh / stability_score_thresh: keep masks above these quality scores (<= 0: no filter).
    stability_score_offset: shift of the cut-off used for the stability score.
    box_nms_thresh: box IoU above which a lower-scored duplicate is removed.
    crop_n_layers: run again on ``(2**i)**2`` crops for each layer i in 1..n.
    crop_nms_thresh: box IoU for removing duplicates across crops.
    crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short image side.
    crop_n_points_downscale_factor: layer i samples ``points_per_side / factor**i`` points per side.
    point_grids: explicit Nx2 grids in [0, 1], one per crop layer (exclusive with points_per_side).
    min_mask_region_area: fill holes and remove islands smaller than this many pixels.
    output_mode: ``binary_mask``, ``uncompressed_rle`` or ``coco_rle``.

    Bad options raise :class:`GeneratorOptionError` (not ``AssertionError``).
    """

    def __init__(
        self,
        model: SamModel | str | Path,
        points_per_side: int | None = None,
        points_per_batch: int | None = None,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float | None = None,
        box_nms_thresh: float | None = None,
        crop_n_layers: int | None = None,
        crop_nms_thresh: float | None = None,
        crop_overlap_ratio: float | None = None,
        crop_n_points_downscale_factor: int | None = None,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int | None = None,
        output_mode: str = "binary_mask",
    ) -> None:
        arguments = locals()
        given = {name: arguments[name] for name in GENERATOR_OPTIONS}
        if point_grids is not None and points_per_side is not None:
            raise GeneratorOptionError("give exactly one of points_per_side and point_grids")
        owned = not isinstance(model, SamModel)
        self.model = load_model(model) if owned else model
        if self.model.package.is_sam2:
            if owned:
                self.model.close()
            raise PackageError(
                f"SamAutomaticMaskGenerator needs a SAM package; {self.model.package.root} is"
                f" {self.model.package.family}: use samdeploy.SAM2AutomaticMaskGenerator"
            )
        #: The settings taken from the package's recommendation (the options left at None).
        self.recommended = {
            name: value
            for name, value in recommended_settings(self.model.package).items()
            if given.get(name, 0) is None and not (name == "points_per_side" and point_grids is not None)
        }
        settings = {name: value for name, value in given.items() if value is not None}
        if point_grids is not None:
            settings["points_per_side"] = None
        try:
            self.config = GeneratorConfig(**{**self.recommended, **settings}, output_mode=output_mode)
            self.config.check()
            self.point_grids = self._point_grids(point_grids)
        except BaseException:
            if owned:
                self.model.close()
            raise
        self.crop_graph = crop_graph(self.model)
        self.point_graph = point_graph(self.model, self.config)
        self.merge_graph = merge_graph(self.config)
        self.profile: Profile | None = None  # an engine Profile to time every node run, or None

    def _point_grids(self, point_grids: list[np.ndarray] | None) -> list[np.ndarray]:
        config = self.config
        if point_grids is None:
            assert config.points_per_side is not None
            factor = config.crop_n_points_downscale_factor
            for layer in range(config.crop_n_layers + 1):
                if int(config.points_per_side / factor**layer) < 1:
                    raise GeneratorOptionError(
                        f"crop layer {layer} would get no points: points_per_side {config.points_per_side}"
                        f" / crop_n_points_downscale_factor {factor}**{layer} < 1"
                    )
            return _bounded(build_all_layer_point_grids(config.points_per_side, config.crop_n_layers, factor))
        grids = [np.asarray(grid, dtype=np.float64) for grid in point_grids]
        if len(grids) < config.crop_n_layers + 1:
            raise GeneratorOptionError(
                f"point_grids has {len(grids)} grid(s) but crop_n_layers={config.crop_n_layers}"
                f" needs {config.crop_n_layers + 1} (one per layer)"
            )
        for i, grid in enumerate(grids):
            if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0 or not np.all(np.isfinite(grid)):
                raise GeneratorOptionError(
                    f"point_grids[{i}] must be a non-empty Nx2 array of finite [0, 1] XY, got shape {grid.shape}"
                )
        return _bounded(grids[: config.crop_n_layers + 1]) + grids[config.crop_n_layers + 1 :]

    @property
    def graphs(self) -> tuple[Graph, Graph, Graph]:
        """The crop, point and merge graphs (each saves to JSON with ``to_json``)."""
        return self.crop_graph, self.point_graph, self.merge_graph

    def generate(
        self, image: np.ndarray, progress: Callable[[int, int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Masks for an HxWx3 uint8 RGB image, as a list of records (see :class:`MaskRecords`).

        ``progress(done, total)`` is called after each crop is processed.
        """
        image = as_rgb_array(image)
        height, width = image.shape[:2]
        boxes, layers = generate_crop_boxes(
            (height, width), self.config.crop_n_layers, self.config.crop_overlap_ratio
        )
        crops = [
            CropInfo(box=tuple(box), layer=layer, image_size=(height, width))  # type: ignore[arg-type]
            for box, layer in zip(boxes, layers, strict=True)
        ]
        crop_items = ({"image": image, "crop": crop} for crop in crops)
        parts = []
        for index, outputs in self._stream(self.crop_graph, crop_items, len(crops) > 1, queue_depth=1):
            parts.append(self._crop_candidates(outputs, crops[index]))
            if progress is not None:
                progress(index + 1, len(crops))
        return self._run(self.merge_graph, {"crop_candidates": parts})["records"]

    def generate_from_embedding(
        self,
        embedding: ImageEmbedding,
        image: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`generate` from the image's embedding (``model.encode(image)``, e.g. cached):
        the records equal ``generate(image)``'s, without encoding the whole image again.

        ``image`` (HxWx3 uint8 RGB, the encoded one) is needed only with crop layers, whose crops
        are encoded from it; without them only the embedding is used. ``progress(done, total)``
        is called after each decoder batch (``points_per_batch`` points) over all crops.
        Raises :class:`GeneratorOptionError` when crop layers have no image, or the image is not
        the embedding's size.
        """
        height, width = embedding.original_size
        if image is not None:
            image = as_rgb_array(image)
            if image.shape[:2] != (height, width):
                raise GeneratorOptionError(
                    f"the image is {image.shape[1]}x{image.shape[0]} but the embedding is of a"
                    f" {width}x{height} image: pass the image that was encoded"
                )
        elif self.config.crop_n_layers > 0:
            raise GeneratorOptionError(
                f"crop_n_layers={self.config.crop_n_layers} encodes crops of the image: pass the image too"
            )
        boxes, layers = generate_crop_boxes(
            (height, width), self.config.crop_n_layers, self.config.crop_overlap_ratio
        )
        crops = [
            CropInfo(box=tuple(box), layer=layer, image_size=(height, width))  # type: ignore[arg-type]
            for box, layer in zip(boxes, layers, strict=True)
        ]
        step = self.config.points_per_batch
        total = sum(-(-len(self.point_grids[crop.layer]) // step) for crop in crops)
        done = 0

        def on_batch() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        # The first crop is the whole image (generate_crop_boxes puts it first): its embedding is given.
        parts = [self._crop_candidates(self._embedding_features(embedding), crops[0], on_batch)]
        crop_items = ({"image": image, "crop": crop} for crop in crops[1:])
        for index, outputs in self._stream(self.crop_graph, crop_items, len(crops) > 2, queue_depth=1):
            parts.append(self._crop_candidates(outputs, crops[index + 1], on_batch))
        return self._run(self.merge_graph, {"crop_candidates": parts})["records"]

    @staticmethod
    def _embedding_features(embedding: Any) -> dict[str, np.ndarray]:
        """An encoded image as the point graph's feature inputs (the family's)."""
        return {EMBEDDINGS: embedding.embeddings}

    def _crop_candidates(
        self,
        features: Mapping[str, np.ndarray],
        crop: CropInfo,
        on_batch: Callable[[], None] | None = None,
    ) -> MaskCandidates:
        """All filtered candidates of one crop (``features``: the crop graph's outputs), batch by
        batch in the official order (``on_batch()`` after each decoder batch)."""
        h, w = crop.size
        points = self.point_grids[crop.layer] * np.array([[w, h]])
        step = self.config.points_per_batch
        for value in features.values():  # the crop's own outputs: read-only, so a memo may keep
            value.setflags(write=False)  # what a decoder's image side makes of them for every batch
        items = (
            {**features, "points": points[start : start + step], "crop": crop}
            for start in range(0, len(points), step)
        )
        candidates = []
        for _, out in self._stream(self.point_graph, items, len(points) > step, queue_depth=2):
            candidates.append(out["candidates"])
            if on_batch is not None:
                on_batch()
        return MaskCandidates.concat(candidates)

    def _stream(
        self, graph: Graph, items: Iterable[Mapping[str, Any]], pipeline: bool, queue_depth: int
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, outputs) per item, pipelined when there is more than one item to overlap."""
        if pipeline:
            results = graph.stream(items, executor="pipeline", profile=self.profile, queue_depth=queue_depth)
        else:
            results = graph.stream(items, executor="sequential", profile=self.profile)
        with contextlib.closing(results):
            yield from _outputs(results)

    def _run(self, graph: Graph, inputs: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return graph.run(inputs, profile=self.profile)
        except NodeError as exc:
            if isinstance(exc.cause, SamDeployError):
                raise exc.cause from None
            raise
