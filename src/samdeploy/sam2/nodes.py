"""SAM 2's nodes: the numpy steps around its two inference nodes.

    image -> sam2.Preprocess -> image_encoder (Inference) -> high_res_feats_0/1, image_embed
    prompt -> sam2.PromptBuild -> mask_decoder (Inference) -> sam2.Postprocess -> masks, scores, low_res_logits

Each node's params come from the package manifest (input size, pixel statistics, the dynamic
multimask settings), never hard-coded sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from samdeploy.engine import Node, register_node
from samdeploy.sam.prompts import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PADDING, Prompt, check_inside
from samdeploy.sam2.transforms import (
    LOW_RES_CLAMP,
    MASK_THRESHOLD,
    SAM2_PIXEL_MEAN,
    SAM2_PIXEL_STD,
    normalize,
    resize_square,
    select_masks,
    transform_coords,
    upscale_masks,
)


@dataclass(frozen=True)
class NormalizedPrompt(Prompt):
    """A prompt whose coordinates are fractions of the image's width and height (the official
    ``normalize_coords=False``) instead of pixels."""

    @classmethod
    def of(cls, prompt: Prompt) -> NormalizedPrompt:
        return cls(**{f.name: getattr(prompt, f.name) for f in fields(Prompt)})


@register_node("sam2.Preprocess")
class Preprocess(Node):
    """HxWx3 uint8 RGB -> the encoder's 1x3xSxS float32 input and the image's (H, W).

    ``SAM2Transforms``: scale to [0, 1], square resize to SxS, ``(x - mean) / std``.
    """

    @dataclass
    class Params:
        image_size: int = 1024
        pixel_mean: list[float] = field(default_factory=lambda: list(SAM2_PIXEL_MEAN))
        pixel_std: list[float] = field(default_factory=lambda: list(SAM2_PIXEL_STD))

    inputs = {"image": np.ndarray}
    outputs = {"tensor": np.ndarray, "original_size": tuple}

    def run(self, image: np.ndarray) -> dict[str, Any]:
        p = self.params
        resized = resize_square(image, p.image_size)
        return {
            "tensor": normalize(resized, tuple(p.pixel_mean), tuple(p.pixel_std)),
            "original_size": (int(image.shape[0]), int(image.shape[1])),
        }


def decoder_inputs(
    prompt: Prompt,
    original_size: tuple[int, int],
    image_size: int,
    mask_input_size: tuple[int, int],
    normalize_coords: bool = True,
) -> dict[str, np.ndarray]:
    """The SAM 2 decoder's prompt inputs, concatenated as the official ``_predict`` does.

    ``point_coords`` BxNx2 float32 in the SxS frame: box corners first (labels 2, 3), then the
    points, then the padding point (0, 0) labelled -1 whenever there is any point or box (SAM 2's
    prompt encoder always pads, boxes included). With neither, N = 0. ``point_labels`` BxN float32,
    ``mask_input`` Bx1xRxR (or 1x1xRxR zeros) and ``has_mask_input`` [1] float32.
    """
    batch = prompt.batch
    coords = [np.zeros((batch, 0, 2), np.float32)]
    labels = [np.zeros((batch, 0), np.float32)]
    if prompt.boxes is not None:
        corners = prompt.boxes.reshape(batch, 2, 2)
        coords.append(transform_coords(corners, original_size, image_size, normalize_coords))
        labels.append(np.tile(np.float32([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]), (batch, 1)))
    if prompt.point_coords is not None:
        coords.append(transform_coords(prompt.point_coords, original_size, image_size, normalize_coords))
        labels.append(prompt.point_labels.astype(np.float32))
    if prompt.boxes is not None or prompt.point_coords is not None:
        coords.append(np.zeros((batch, 1, 2), np.float32))
        labels.append(np.full((batch, 1), PADDING, np.float32))
    if prompt.mask_input is not None:
        mask_input, has_mask = prompt.mask_input.astype(np.float32), np.ones(1, np.float32)
    else:
        mask_input, has_mask = np.zeros((1, 1, *mask_input_size), np.float32), np.zeros(1, np.float32)
    return {
        "point_coords": np.concatenate(coords, axis=1),
        "point_labels": np.concatenate(labels, axis=1),
        "mask_input": mask_input,
        "has_mask_input": has_mask,
    }


@register_node("sam2.PromptBuild")
class PromptBuild(Node):
    """A validated :class:`~samdeploy.sam.prompts.Prompt` -> the SAM 2 decoder's prompt inputs
    (see :func:`decoder_inputs`); a :class:`NormalizedPrompt`'s coordinates are already in [0, 1]."""

    @dataclass
    class Params:
        image_size: int = 1024
        mask_input_size: list[int] = field(default_factory=lambda: [256, 256])
        inside_image: bool = False  # refuse points/boxes outside the image (the CLI sets it)

    inputs = {"prompt": Prompt, "original_size": tuple}
    outputs = {
        "point_coords": np.ndarray,
        "point_labels": np.ndarray,
        "mask_input": np.ndarray,
        "has_mask_input": np.ndarray,
    }

    def run(self, prompt: Prompt, original_size: tuple) -> dict[str, Any]:
        p = self.params
        normalize_coords = not isinstance(prompt, NormalizedPrompt)
        if p.inside_image and normalize_coords:
            check_inside(prompt, original_size)
        return decoder_inputs(prompt, original_size, p.image_size, tuple(p.mask_input_size), normalize_coords)


@register_node("sam2.Postprocess")
class Postprocess(Node):
    """All four mask tokens -> what ``SAM2ImagePredictor.predict`` returns.

    Selects the tokens (:func:`~samdeploy.sam2.transforms.select_masks`: 1..3 with
    ``multimask_output``, else token 0 or the dynamic fall-back), upscales the kept low-res logits
    straight to the original size, thresholds them at ``mask_threshold`` unless ``return_logits``,
    and clamps the returned low-res logits to [-32, 32]. Outputs ``masks`` BxCxHxW bool (float32
    logits with ``return_logits``), ``scores`` BxC float32, ``low_res_logits`` BxCxRxR float32.
    """

    @dataclass
    class Params:
        dynamic_multimask: bool = True
        stability_delta: float = 0.05
        stability_thresh: float = 0.98
        mask_threshold: float = MASK_THRESHOLD

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
        p = self.params
        low_res, scores = select_masks(
            low_res_masks,
            iou_predictions,
            multimask_output,
            p.dynamic_multimask,
            p.stability_delta,
            p.stability_thresh,
        )
        above = None if return_logits else p.mask_threshold
        return {
            "masks": upscale_masks(np.ascontiguousarray(low_res, dtype=np.float32), original_size, above),
            "scores": np.ascontiguousarray(scores, dtype=np.float32),
            "low_res_logits": np.clip(low_res, -LOW_RES_CLAMP, LOW_RES_CLAMP).astype(np.float32),
        }
