"""SAM's nodes: the three numpy steps around the two inference nodes, plus a file reader.

The five-node graph (see :mod:`samdeploy.sam.graphs`)::

    image -> preprocess -> image_encoder (Inference) -> image_embeddings
    prompt -> prompt_build -> mask_decoder (Inference) -> postprocess -> masks, scores, low_res_logits

Each node's params are JSON fields taken from the package manifest, never hard-coded sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samdeploy.engine import Node, register_node
from samdeploy.package import MASK_FILTER_INPUT
from samdeploy.sam.images import DEFAULT_MAX_PIXELS, load_image
from samdeploy.sam.prompts import Prompt, check_inside, decoder_inputs
from samdeploy.sam.transforms import (
    MASK_THRESHOLD,
    MaskGeometry,
    normalize_and_pad,
    postprocess_masks,
    resize_longest_side,
)

# Official SAM's values; a package's manifest always states its own.
SAM_PIXEL_MEAN = [123.675, 116.28, 103.53]
SAM_PIXEL_STD = [58.395, 57.12, 57.375]


@register_node("sam.ReadImage")
class ReadImage(Node):
    """Image file path -> HxWx3 uint8 RGB (EXIF orientation applied; see :mod:`samdeploy.sam.images`)."""

    @dataclass
    class Params:
        max_pixels: int | None = DEFAULT_MAX_PIXELS  # decompression-bomb guard; None: no limit

    inputs = {"path": Any}
    outputs = {"image": np.ndarray}

    def run(self, path: Any) -> dict[str, Any]:
        return {"image": load_image(path, max_pixels=self.params.max_pixels)}


@register_node("sam.Preprocess")
class Preprocess(Node):
    """HxWx3 uint8 RGB -> the encoder's 1x3xSxS float32 input, and the sizes postprocess needs.

    Resize the long side to S (stock Pillow bilinear), ``(x - mean) / std`` in float32, zero-pad
    bottom/right: the official ``apply_image`` + ``Sam.preprocess``, bit for bit.
    """

    @dataclass
    class Params:
        image_size: int = 1024  # S, from the manifest
        pixel_mean: list[float] = field(default_factory=lambda: list(SAM_PIXEL_MEAN))
        pixel_std: list[float] = field(default_factory=lambda: list(SAM_PIXEL_STD))

    inputs = {"image": np.ndarray}
    outputs = {"tensor": np.ndarray, "original_size": tuple}

    def run(self, image: np.ndarray) -> dict[str, Any]:
        p = self.params
        resized = resize_longest_side(image, p.image_size)
        return {
            "tensor": normalize_and_pad(resized, tuple(p.pixel_mean), tuple(p.pixel_std), p.image_size),
            "original_size": (int(image.shape[0]), int(image.shape[1])),
        }


@register_node("sam.PromptBuild")
class PromptBuild(Node):
    """A validated :class:`~samdeploy.sam.prompts.Prompt` -> the decoder's prompt inputs.

    Outputs ``point_coords`` BxNx2, ``point_labels`` BxN, ``mask_input`` Bx1xRxR, ``has_mask_input``
    [1], ``orig_im_size`` [2], all float32 (see :func:`~samdeploy.sam.prompts.decoder_inputs`).

    ``orig_im_size`` only sizes the official decoder's own upscaled ``masks`` output, which the graphs
    do not use (postprocess works from ``low_res_masks``); packages with the low-res decoder do not
    take it at all. ONNX Runtime computes every output whether asked for or not, so for an official
    decoder the port carries 1x1 by default, which makes that dead upscale cheaper (at 4000x3000 it
    would cost several times the decoder itself). ``decoder_masks=True`` feeds the true size.
    """

    @dataclass
    class Params:
        image_size: int = 1024
        mask_input_size: list[int] = field(default_factory=lambda: [256, 256])
        inside_image: bool = False  # refuse points/boxes outside the image (the CLI sets it)
        decoder_masks: bool = False
        # The decoder's mask filter takes this many tokens (ModelPackage.mask_filter_tokens; 0: no
        # filter): also give its threshold, which keeps a prompt when a multimask token's IoU is
        # > pred_iou_thresh (<= 0: every prompt).
        mask_filter_tokens: int = 0
        pred_iou_thresh: float = 0.0

    inputs = {"prompt": Prompt, "original_size": tuple}
    outputs = {
        "point_coords": np.ndarray,
        "point_labels": np.ndarray,
        "mask_input": np.ndarray,
        "has_mask_input": np.ndarray,
        "orig_im_size": np.ndarray,
    }

    def output_ports(self) -> dict[str, Any]:
        ports = dict(self.outputs)
        if self.params.mask_filter_tokens:
            ports[MASK_FILTER_INPUT] = np.ndarray
        return ports

    def run(self, prompt: Prompt, original_size: tuple) -> dict[str, Any]:
        p = self.params
        if p.inside_image:
            check_inside(prompt, original_size)
        feeds = decoder_inputs(prompt, original_size, p.image_size, tuple(p.mask_input_size))
        if not p.decoder_masks:
            feeds["orig_im_size"] = np.ones(2, dtype=np.float32)
        if p.mask_filter_tokens:
            feeds[MASK_FILTER_INPUT] = mask_iou_threshold(p.mask_filter_tokens, p.pred_iou_thresh)
        return feeds


def mask_iou_threshold(num_mask_tokens: int, pred_iou_thresh: float) -> np.ndarray:
    """The decoder's ``mask_iou_threshold`` for a generator's ``pred_iou_thresh``: token 0 (the
    single-mask output, which the generator never keeps) at ``inf``, the multimask tokens at the
    threshold; ``-inf`` everywhere (every prompt's masks) when the threshold is <= 0 (no filter)."""
    if pred_iou_thresh <= 0.0:
        return np.full(num_mask_tokens, -np.inf, dtype=np.float32)
    return np.array([np.inf] + [pred_iou_thresh] * (num_mask_tokens - 1), dtype=np.float32)


@register_node("sam.Postprocess")
class Postprocess(Node):
    """Decoder outputs -> masks at the original size, scores and low-res logits, as PyTorch returns them.

    ``low_res_masks`` Bx4xRxR and ``iou_predictions`` Bx4 hold all four mask tokens; like the
    official ``MaskDecoder``, ``multimask_output`` keeps tokens 1..3 and otherwise token 0 (C = 3
    or 1). Only the kept masks are upscaled (one composed bilinear matrix per axis). Outputs
    ``masks`` BxCxHxW bool (float32 logits with ``return_logits``), ``scores`` BxC float32,
    ``low_res_logits`` BxCxRxR float32.
    """

    @dataclass
    class Params:
        image_size: int = 1024

    inputs = {
        "low_res_masks": np.ndarray,
        "iou_predictions": np.ndarray,
        "original_size": tuple,
        "multimask_output": bool,
        "return_logits": bool,
    }
    outputs = {"masks": np.ndarray, "scores": np.ndarray, "low_res_logits": np.ndarray}

    def run(
        self,
        low_res_masks: np.ndarray,
        iou_predictions: np.ndarray,
        original_size: tuple,
        multimask_output: bool,
        return_logits: bool,
    ) -> dict[str, Any]:
        tokens = slice(1, None) if multimask_output else slice(0, 1)
        low_res = np.ascontiguousarray(low_res_masks[:, tokens], dtype=np.float32)
        geometry = MaskGeometry.for_image(original_size, self.params.image_size, low_res.shape[-2:])
        return {
            "masks": postprocess_masks(low_res, geometry, None if return_logits else MASK_THRESHOLD),
            "scores": np.ascontiguousarray(iou_predictions[:, tokens], dtype=np.float32),
            "low_res_logits": low_res,
        }
