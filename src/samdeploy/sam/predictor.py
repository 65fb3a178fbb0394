"""``SamPredictor``: a drop-in for ``segment_anything.SamPredictor`` that runs the SAM graph.

    from samdeploy import SamPredictor, load_model      # was: from segment_anything import ...
    predictor = SamPredictor(load_model("models/sam_vit_b"))
    predictor.set_image(image)                           # HxWx3 uint8, "RGB" or "BGR"
    masks, scores, low_res_logits = predictor.predict(point_coords=..., point_labels=..., box=...)

Same method names, arguments, shapes, dtypes and semantics; numpy in and out (there is no
``predict_torch``). Additions: a batch of boxes in one decoder call (``box`` Bx4 -> BxCxHxW),
:meth:`SamPredictor.predict_batch`, and an embedding cache shared through the model.

Threads: a predictor may be shared. Each thread that calls :meth:`SamPredictor.set_image` gets
its own current image, so ``set_image`` in one thread never changes what ``predict`` answers in
another; a thread that never set an image sees the one set last by any thread (set it once,
predict from a pool of workers). The model's :meth:`~samdeploy.sam.model.SamModel.encode` and
:meth:`~samdeploy.sam.model.SamModel.decode` are thread-safe themselves.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.errors import PackageError
from samdeploy.sam.model import ImageEmbedding, SamModel, load_model
from samdeploy.sam.prompts import validate_prompt
from samdeploy.sam.transforms import ResizeLongestSide

_NO_IMAGE = "An image must be set with .set_image(...) before mask prediction."


class SamPredictor:
    """Computes an image's embedding once (:meth:`set_image`), then answers prompts (:meth:`predict`).

    ``sam_model`` is a :class:`~samdeploy.sam.model.SamModel` (or a package path, loaded with
    defaults). Errors are :class:`~samdeploy.errors.PromptError` / :class:`~samdeploy.errors.ImageError`
    for bad input and ``RuntimeError`` for predicting before an image is set, as the official one.
    """

    def __init__(self, sam_model: SamModel | str | Path) -> None:
        self.model = sam_model if isinstance(sam_model, SamModel) else load_model(sam_model)
        if self.model.package.is_sam2:
            raise PackageError(
                f"SamPredictor needs a SAM package; {self.model.package.root} is {self.model.package.family}:"
                " use samdeploy.SAM2ImagePredictor"
            )
        self.transform = ResizeLongestSide(self.model.image_size)
        self.profile: Any = None  # an engine Profile to time every node run, or None
        # The current image is per thread (see the module docs); ``_shared`` is the last one set
        # by any thread, for threads that never set their own. An ImageEmbedding is immutable,
        # so reading one reference gives a consistent embedding and sizes.
        self._local = threading.local()
        self._shared: ImageEmbedding | None = None
        self.reset_image()

    @property
    def _embedding(self) -> ImageEmbedding | None:
        if getattr(self._local, "owns", False):
            return self._local.embedding
        return self._shared

    @property
    def is_image_set(self) -> bool:
        """Whether this thread has an image to predict on."""
        return self._embedding is not None

    @property
    def original_size(self) -> tuple[int, int] | None:
        """(H, W) of the current image, or None."""
        embedding = self._embedding
        return embedding.original_size if embedding is not None else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(h, w) of the current image inside the SxS encoder input, or None."""
        embedding = self._embedding
        return embedding.input_size if embedding is not None else None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute the embedding of an HxWx3 uint8 image (``image_format`` "RGB" or "BGR").

        An image whose content was set recently is not encoded again (see ``model.cache``).
        """
        embedding = self.model.encode(
            image, image_format, profile=self.profile
        )  # a bad image keeps the last one
        self._local.owns, self._local.embedding = True, embedding
        self._shared = embedding

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts on the current image.

        Arguments (pixels of the original image):
          point_coords: Nx2 points, XY. point_labels: N labels, 1 foreground, 0 background.
          box: 4 numbers XYXY; a Bx4 batch (B > 1) is answered in one decoder call.
          mask_input: 1xRxR low-res logits from a previous call (R = 256 for SAM).
          multimask_output: three masks (for ambiguous prompts such as one click) or one.
          return_logits: return un-thresholded logits instead of boolean masks.

        Returns:
          masks CxHxW bool (float32 with ``return_logits``), C = 3 or 1, (H, W) the original size;
          scores C float32, the model's predicted IoU of each mask;
          low_res_logits CxRxR float32, to pass as ``mask_input`` to a next call.
          With a Bx4 box batch every output gains a leading B axis.
        """
        batched = box is not None and np.ndim(box) == 2 and np.shape(box)[0] > 1
        masks, scores, low_res = self.predict_batch(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits
        )
        if batched:
            return masks, scores, low_res
        return masks[0], scores[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts in one decoder call: ``point_coords`` BxNx2 (or Nx2 shared by all boxes) with
        ``point_labels`` BxN (or N), ``boxes`` Bx4, ``mask_input`` Bx1xRxR or 1xRxR (shared).

        Returns masks BxCxHxW, scores BxC, low_res_logits BxCxRxR.
        """
        embedding = self._embedding  # read once: the image this call answers for
        if embedding is None:
            raise RuntimeError(_NO_IMAGE)
        prompt = validate_prompt(
            point_coords, point_labels, boxes, mask_input, mask_input_size=self.model.mask_input_size
        )
        out = self.model.decode(embedding, prompt, multimask_output, return_logits, profile=self.profile)
        return out["masks"], out["scores"], out["low_res_logits"]

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding, 1xCxhxw float32 (C = 256, h = w = S/16), read-only."""
        embedding = self._embedding
        if embedding is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return embedding.embeddings

    @property
    def features(self) -> np.ndarray | None:
        """The official attribute name of the current embedding (None before :meth:`set_image`)."""
        embedding = self._embedding
        return embedding.embeddings if embedding is not None else None

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current :class:`~samdeploy.sam.model.ImageEmbedding` (embedding plus sizes)."""
        return self._embedding

    def reset_image(self) -> None:
        """Forget the current image: this thread's, and the one shared with threads that set none."""
        self._local.owns, self._local.embedding = False, None
        self._shared = None
