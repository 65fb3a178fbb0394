"""``SAM2ImagePredictor``: a drop-in for ``sam2.sam2_image_predictor.SAM2ImagePredictor``.

    from samdeploy import SAM2ImagePredictor, load_model      # was: from sam2.sam2_image_predictor import ...
    predictor = SAM2ImagePredictor(load_model("models/sam2.1_tiny"))
    predictor.set_image(image)                                 # HxWx3 uint8 RGB (or a PIL image)
    masks, scores, low_res_logits = predictor.predict(point_coords=..., point_labels=..., box=...)

Same method names, arguments, shapes, dtypes and semantics (masks come back as float32 0/1, as the
official ``predict`` returns them); numpy in and out. The embedding cache is shared through the model.

``max_hole_area`` / ``max_sprinkle_area``: the official post-processing fills holes and removes
sprinkles with a CUDA connected-components kernel; where that kernel is absent (every CPU install,
``SAM2_BUILD_CUDA=0``) it warns and returns the masks unchanged. This predictor does what that CPU
path does: it accepts the options, warns once, and leaves the masks as they are.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from samdeploy.errors import PackageError
from samdeploy.sam.images import as_rgb_array, pil_to_rgb
from samdeploy.sam.prompts import Prompt, validate_prompt
from samdeploy.sam2.model import Sam2Embedding, Sam2Model, load_sam2_model
from samdeploy.sam2.nodes import NormalizedPrompt

_NO_IMAGE = "An image must be set with .set_image(...) before mask prediction."
_NO_BATCH = "An image must be set with .set_image_batch(...) before mask prediction."


def as_sam2_model(model: Any) -> Sam2Model:
    """``model`` if it is a SAM 2 model, a package path loaded, or a clear :class:`PackageError`."""
    if isinstance(model, Sam2Model):
        return model
    if isinstance(model, (str, Path)):
        return load_sam2_model(model)
    package = getattr(model, "package", None)
    family = getattr(package, "family", None)
    raise PackageError(
        f"SAM 2 predictors need a SAM 2.x model package; this one is {family or type(model).__name__}"
        " (use samdeploy.SamPredictor / SamAutomaticMaskGenerator for SAM packages)"
    )


class SAM2ImagePredictor:
    """Computes an image's features once (:meth:`set_image`), then answers prompts (:meth:`predict`).

    ``sam_model``: a :class:`~samdeploy.sam2.model.Sam2Model` (or a package path). ``mask_threshold``
    binarizes the mask logits (0 by default). Bad prompts raise
    :class:`~samdeploy.errors.PromptError`, predicting before an image is set ``RuntimeError``.
    """

    def __init__(
        self,
        sam_model: Sam2Model | str | Path,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.model = as_sam2_model(sam_model)
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        if max_hole_area > 0 or max_sprinkle_area > 0:
            warnings.warn(
                "max_hole_area / max_sprinkle_area are not applied: the official predictor needs its CUDA"
                " extension for them and, without it, returns the masks unchanged, as this one does",
                UserWarning,
                stacklevel=2,
            )
        self.profile: Any = None  # an engine Profile to time every node run, or None
        self.reset_predictor()

    # -- images ---------------------------------------------------------------------------------

    def _encode(self, image: Any, image_format: str) -> Sam2Embedding:
        if isinstance(image, Image.Image):
            image = pil_to_rgb(image)
        return self.model.encode(as_rgb_array(image, image_format), profile=self.profile)

    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Compute the features of an HxWx3 uint8 image (RGB; ``image_format="BGR"`` for BGR) or a
        PIL image. An image whose content was set recently is not encoded again."""
        embedding = self._encode(image, image_format)  # a bad image keeps the previous one
        self.reset_predictor()
        self._embeddings = [embedding]
        self._orig_hw = [embedding.original_size]
        self._is_image_set = True

    def set_image_batch(self, image_list: list[np.ndarray], image_format: str = "RGB") -> None:
        """Compute the features of several HxWx3 uint8 RGB images, for :meth:`predict_batch`."""
        if not isinstance(image_list, list):
            raise TypeError("image_list must be a list of HxWx3 uint8 RGB arrays")
        embeddings = [self._encode(image, image_format) for image in image_list]
        self.reset_predictor()
        self._embeddings = embeddings
        self._orig_hw = [embedding.original_size for embedding in embeddings]
        self._is_image_set = True
        self._is_batch = True

    # -- prompts --------------------------------------------------------------------------------

    def _decode(
        self,
        index: int,
        point_coords: Any,
        point_labels: Any,
        box: Any,
        mask_input: Any,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompt: Prompt = validate_prompt(
            point_coords, point_labels, box, mask_input, mask_input_size=self.model.mask_input_size
        )
        if not normalize_coords:
            prompt = NormalizedPrompt.of(prompt)
        threshold = np.float32(self.mask_threshold)
        # The graph thresholds the masks by blocks, without full-size logits, at the package's
        # threshold; a predictor with another one thresholds the logits itself.
        package_threshold = self.model.decode_graph.nodes["postprocess"].params.mask_threshold
        by_graph = not return_logits and threshold == np.float32(package_threshold)
        out = self.model.decode(
            self._embeddings[index],
            prompt,
            multimask_output,
            return_logits=not by_graph,
            profile=self.profile,
        )
        masks = out["masks"]
        if not return_logits:  # 0/1 float32 masks, as the official predictor returns them
            masks = (masks if by_graph else masks > threshold).astype(np.float32)
        scores, low_res = out["scores"], out["low_res_logits"]
        if prompt.batch == 1:  # the official ``squeeze(0)``
            return masks[0], scores[0], low_res[0]
        return masks, scores, low_res

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Arguments (pixels of the original image, or [0, 1] fractions with ``normalize_coords=False``):
          point_coords: Nx2 points, XY (or BxNx2). point_labels: N labels, 1 foreground, 0 background.
          box: 4 numbers XYXY, or a Bx4 batch answered in one decoder call.
          mask_input: 1xRxR low-res logits from a previous call (R = S/4: 256 for the official models).
          multimask_output: three masks, or one (token 0, or the best multimask output where token
            0's mask is unstable, as the official builds do).
          return_logits: return the mask logits instead of 0/1 masks.

        Returns:
          masks CxHxW float32 (0/1, or logits), C = 3 or 1, (H, W) the original size;
          scores C float32, the predicted IoU of each mask;
          low_res_logits CxRxR float32 clamped to [-32, 32], to pass as ``mask_input`` next.
          A batch of B > 1 prompts (boxes Bx4, points BxNx2) adds a leading B axis to each.
        """
        if not self._is_image_set:
            raise RuntimeError(_NO_IMAGE)
        return self._decode(
            0, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords
        )

    def predict_batch(
        self,
        point_coords_batch: list[np.ndarray] | None = None,
        point_labels_batch: list[np.ndarray] | None = None,
        box_batch: list[np.ndarray] | None = None,
        mask_input_batch: list[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image of :meth:`set_image_batch`, with the i-th entry of each list
        as its prompt; returns the lists of masks, scores and low-res logits."""
        if not self._is_batch:
            raise RuntimeError("predict_batch answers images set with .set_image_batch(...)")
        if not self._is_image_set:
            raise RuntimeError(_NO_BATCH)
        results: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for index in range(len(self._embeddings)):

            def pick(batch: list[Any] | None, i: int = index) -> Any:
                return batch[i] if batch is not None else None

            outputs = self._decode(
                index,
                pick(point_coords_batch),
                pick(point_labels_batch),
                pick(box_batch),
                pick(mask_input_batch),
                multimask_output,
                return_logits,
                normalize_coords,
            )
            for collected, value in zip(results, outputs, strict=True):
                collected.append(value)
        return results

    # -- state ----------------------------------------------------------------------------------

    def get_image_embedding(self) -> np.ndarray:
        """The image embedding, 1xCxGxG float32 (BxCxGxG after :meth:`set_image_batch`)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        if len(self._embeddings) == 1:
            return self._embeddings[0].image_embed
        return np.concatenate([embedding.image_embed for embedding in self._embeddings])

    @property
    def _features(self) -> dict[str, Any] | None:
        """The official attribute: ``image_embed`` Bx... and ``high_res_feats`` [Bx..., Bx...]."""
        if not self._embeddings:
            return None
        return {
            "image_embed": np.concatenate([e.image_embed for e in self._embeddings]),
            "high_res_feats": [
                np.concatenate([e.high_res_feats_0 for e in self._embeddings]),
                np.concatenate([e.high_res_feats_1 for e in self._embeddings]),
            ],
        }

    @property
    def embedding(self) -> Sam2Embedding | None:
        """The current image's :class:`~samdeploy.sam2.model.Sam2Embedding` (the first of a batch)."""
        return self._embeddings[0] if self._embeddings else None

    def reset_predictor(self) -> None:
        """Forget the current image(s)."""
        self._is_image_set = False
        self._embeddings: list[Sam2Embedding] = []
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False
