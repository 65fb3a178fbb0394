"""``SAM2AutomaticMaskGenerator``: segment everything with a SAM 2.x package, a drop-in for
``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``.

    from samdeploy import SAM2AutomaticMaskGenerator, load_model
    generator = SAM2AutomaticMaskGenerator(load_model("models/sam2.1_tiny"))
    records = generator.generate(image)                           # HxWx3 uint8 RGB

The same three graphs as :mod:`samdeploy.sam.automatic` (crop -> point batches -> merge), with
SAM 2's encoder, prompt build and decoder, and the official SAM 2 generator's differences:

- ``pred_iou_thresh`` defaults to 0.8; ``mask_threshold`` binarizes the logits and centres the
  stability score; ``multimask_output=False`` keeps one mask per point (the dynamic selection).
- masks are upscaled straight from the low-res logits to the crop (SAM 2 pads nothing).
- ``min_mask_region_area`` reaches the official generator only as its predictor's hole and
  sprinkle cleanup, which needs the CUDA extension and is skipped (with a warning) without it; the
  official generator never runs ``postprocess_small_regions``. So here too nothing is removed: the
  option is accepted, and a warning says so.
- ``use_m2m``: a second decoder pass, each mask a prompt of its own point and its low-res logits,
  one mask out (``sam2.MaskToMaskPrompts`` and a second decoder node in the point graph).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine import Graph, Node, register_node
from samdeploy.sam.automatic import (
    CropImage,
    CropInfo,
    FilterMasks,
    GeneratorConfig,
    PointPrompts,
    SamAutomaticMaskGenerator,
    merge_graph,
)
from samdeploy.sam.prompts import Prompt
from samdeploy.sam.transforms import MaskResize
from samdeploy.sam2.graphs import (
    FEATURES,
    add_prompt_decoder,
    connect_prompt_ports,
    decoder_node,
    encode_graph,
    prompt_build,
)
from samdeploy.sam2.model import Sam2Model
from samdeploy.sam2.nodes import decoder_inputs
from samdeploy.sam2.predictor import as_sam2_model
from samdeploy.sam2.transforms import LOW_RES_CLAMP, select_masks


@register_node("sam2.FilterMasks")
class FilterMasks2(FilterMasks):
    """:class:`~samdeploy.sam.automatic.FilterMasks` with SAM 2's token choice and upscale.

    ``multimask_output`` keeps tokens 1..3 (else one per point: token 0 or the dynamic fall-back);
    the kept logits go straight to the crop's size (bilinear), as ``SAM2ImagePredictor._predict``.
    """

    @dataclass
    class Params(FilterMasks.Params):
        pred_iou_thresh: float = 0.8
        multimask_output: bool = True
        dynamic_multimask: bool = True
        stability_delta: float = 0.05
        stability_thresh: float = 0.98

    def select_tokens(
        self, low_res_masks: np.ndarray, iou_predictions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        return select_masks(
            low_res_masks,
            iou_predictions,
            p.multimask_output,
            p.dynamic_multimask,
            p.stability_delta,
            p.stability_thresh,
        )

    def mask_resize(self, low_res: np.ndarray, crop: CropInfo) -> MaskResize:
        return MaskResize.direct(low_res.shape[-2:], crop.size)


@register_node("sam2.MaskToMaskPrompts")
class MaskToMaskPrompts(Node):
    """First-pass decoder outputs -> the prompts of the refinement pass (``use_m2m``).

    As the official ``refine_with_m2m``: every kept mask (the tokens ``multimask_output`` selects)
    becomes a prompt of its own: its point (label 1, and the padding point) with its low-res
    logits, clamped to [-32, 32] as the predictor returns them, as ``mask_input``. Outputs the decoder
    inputs for those N = B x C prompts and their ``points`` Nx2 (crop pixels).
    """

    @dataclass
    class Params:
        image_size: int = 1024
        multimask_output: bool = True
        dynamic_multimask: bool = True
        stability_delta: float = 0.05
        stability_thresh: float = 0.98

    inputs = {
        "low_res_masks": np.ndarray,
        "iou_predictions": np.ndarray,
        "points": np.ndarray,
        "crop": CropInfo,
    }
    outputs = {
        "point_coords": np.ndarray,
        "point_labels": np.ndarray,
        "mask_input": np.ndarray,
        "has_mask_input": np.ndarray,
        "points": np.ndarray,
    }

    def run(
        self, low_res_masks: np.ndarray, iou_predictions: np.ndarray, points: np.ndarray, crop: CropInfo
    ) -> dict[str, Any]:
        p = self.params
        low_res, _ = select_masks(
            low_res_masks,
            iou_predictions,
            p.multimask_output,
            p.dynamic_multimask,
            p.stability_delta,
            p.stability_thresh,
        )
        size = low_res.shape[-2:]
        points = np.repeat(np.asarray(points, dtype=np.float64), low_res.shape[1], axis=0)
        masks = np.clip(low_res.reshape(-1, 1, *size), -LOW_RES_CLAMP, LOW_RES_CLAMP).astype(np.float32)
        prompt = Prompt(
            point_coords=points[:, None, :],
            point_labels=np.ones((len(points), 1), dtype=np.int64),
            boxes=None,
            mask_input=masks,
            batch=len(points),
        )
        return {**decoder_inputs(prompt, crop.size, p.image_size, tuple(size)), "points": points}


@dataclass(frozen=True)
class Generator2Config(GeneratorConfig):
    """The SAM 2 generator's options (the official constructor's, with its defaults)."""

    pred_iou_thresh: float = 0.8
    mask_threshold: float = 0.0
    use_m2m: bool = False
    multimask_output: bool = True


def crop_graph(model: Sam2Model) -> Graph:
    """``image`` and ``crop`` -> the crop's three feature maps."""
    graph = Graph("everything_crop")
    graph.add(CropImage("crop"))
    graph.add(encode_graph(model.package, model.options))
    graph.connect("crop.image", "encode.image")
    graph.input("image", "crop.image")
    graph.input("crop", "crop.crop")
    for name in FEATURES:
        graph.output(name, f"encode.{name}")
    graph.validate()
    return graph


def point_graph(model: Sam2Model, config: Generator2Config) -> Graph:
    """The three feature maps, ``points`` (Bx2 crop pixels), ``crop`` -> the batch's ``candidates``."""
    settings = model.package.manifest.get("postprocessing", {}).get("dynamic_multimask", {})
    dynamic = {
        "dynamic_multimask": bool(settings.get("enabled", True)),
        "stability_delta": float(settings.get("stability_delta", 0.05)),
        "stability_thresh": float(settings.get("stability_thresh", 0.98)),
    }
    graph = Graph("everything_points")
    graph.add(PointPrompts("point_prompts"))
    graph.add(prompt_build(model.package))
    # The first pass has no mask_input: the decoder cut in two where the package has it (the image
    # side once per crop, remembered while its batches run; 11% less per batch of 64 on Hiera tiny).
    prepared = model.package.has_prepared_decoder
    takers = [add_prompt_decoder(graph, model.package, model.options, prepared, memo=1)]
    graph.add(
        FilterMasks2(
            "filter_masks",
            {
                "pred_iou_thresh": config.pred_iou_thresh,
                "stability_score_thresh": config.stability_score_thresh,
                "stability_score_offset": config.stability_score_offset,
                "mask_threshold": config.mask_threshold,
                # The refinement pass asks for one mask per prompt.
                "multimask_output": config.multimask_output and not config.use_m2m,
                **dynamic,
            },
        )
    )
    graph.connect("point_prompts.prompt", "prompt_build.prompt")
    graph.connect("point_prompts.original_size", "prompt_build.original_size")
    decoders = ["mask_decoder"]
    if config.use_m2m:
        m2m = {"image_size": model.image_size, "multimask_output": config.multimask_output, **dynamic}
        graph.add(MaskToMaskPrompts("m2m_prompts", m2m))
        graph.add(decoder_node(model.package, model.options, name="m2m_decoder"))
        graph.connect("mask_decoder.iou_predictions", "m2m_prompts.iou_predictions")
        graph.connect("mask_decoder.low_res_masks", "m2m_prompts.low_res_masks")
        connect_prompt_ports(graph, "m2m_prompts", "m2m_decoder")
        graph.connect("m2m_prompts.points", "filter_masks.points")
        graph.input("points", "point_prompts.points", "m2m_prompts.points")
        graph.input("crop", "point_prompts.crop", "m2m_prompts.crop", "filter_masks.crop")
        decoders.append("m2m_decoder")
        takers.append("m2m_decoder")
    else:
        graph.input("points", "point_prompts.points", "filter_masks.points")
        graph.input("crop", "point_prompts.crop", "filter_masks.crop")
    graph.connect(f"{decoders[-1]}.iou_predictions", "filter_masks.iou_predictions")
    graph.connect(f"{decoders[-1]}.low_res_masks", "filter_masks.low_res_masks")
    for name in FEATURES:  # into the nodes that take the feature maps
        graph.input(name, *(f"{taker}.{name}" for taker in takers))
    graph.output("candidates", "filter_masks.candidates")
    graph.validate()
    return graph


class SAM2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Masks for a whole image from a grid of point prompts, filtered and de-duplicated, with a SAM
    2.x model. Arguments are the official SAM 2 generator's (see
    :class:`~samdeploy.sam.automatic.SamAutomaticMaskGenerator` for their meaning), plus
    ``mask_threshold``, ``use_m2m`` and ``multimask_output``. Records are the official ones."""

    def __init__(
        self,
        model: Sam2Model | str | Path,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        **kwargs: Any,
    ) -> None:
        options = {
            name: value for name, value in locals().items() if name in Generator2Config.__dataclass_fields__
        }
        self.config = Generator2Config(**options)
        self.config.check()
        if min_mask_region_area > 0:
            warnings.warn(
                "min_mask_region_area is not applied: the official SAM 2 generator passes it only to its"
                " predictor's CUDA-only hole/sprinkle cleanup, which CPU installs skip, as this one does",
                UserWarning,
                stacklevel=2,
            )
        self.point_grids = self._point_grids(point_grids)
        self.model = as_sam2_model(model)
        self.crop_graph = crop_graph(self.model)
        self.point_graph = point_graph(self.model, self.config)
        # No small-region removal (see the module docs): the merge graph runs with min_area 0.
        self.merge_graph = merge_graph(
            GeneratorConfig(**{**_base_options(self.config), "min_mask_region_area": 0})
        )
        self.profile = None

    @staticmethod
    def _embedding_features(embedding: Any) -> dict[str, np.ndarray]:
        """A :class:`~samdeploy.sam2.model.Sam2Embedding` as the point graph's three feature maps."""
        return embedding.features()


def _base_options(config: Generator2Config) -> dict[str, Any]:
    names = GeneratorConfig.__dataclass_fields__
    return {name: getattr(config, name) for name in names}
