"""The unit of work of a batch run: one image in, its complete output document out.

    WorkItem (key, path, task) --read_image--> HxWx3 RGB --Segmenter.segment--> document bytes

A :class:`Segmenter` loads the model once (in each worker process or Ray actor) and answers one
image at a time with the public API: ``SamAutomaticMaskGenerator.generate`` (``everything``) or
``SamPredictor`` (``boxes``, ``prompts``). The document it returns is the image's whole output
file, so the driver writes it in one piece; a problem with one image comes back as an
:class:`Outcome` with ``error`` set, never as an exception that would stop the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from samdeploy.batch.inputs import WorkItem
from samdeploy.batch.outputs import encode_document
from samdeploy.errors import SamDeployError

BOX_CHUNK = 64  # boxes answered by one decoder call


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to build its :class:`Segmenter` (picklable, JSON-ready).

    ``generator``: the ``SamAutomaticMaskGenerator`` options (``everything``); ``multimask``: three
    masks per prompt, the best kept (``prompts``); ``fingerprint``: the run's (see ``outputs``).
    """

    mode: str
    fingerprint: str
    model: str | None = None
    backend: str | None = None
    providers: list[str] | None = None
    threads: int | None = None
    max_pixels: int | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    multimask: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one item: its output ``document`` (bytes) or its one-line ``error``, and the
    ``seconds`` its worker spent on it (reading and segmenting)."""

    key: str
    document: bytes | None = None
    error: str | None = None
    seconds: float = 0.0


def describe_error(exc: BaseException) -> str:
    """One line for failures.jsonl: a user error's own message, anything else with its type."""
    text = str(exc) if isinstance(exc, SamDeployError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def read_image(item: WorkItem, max_pixels: int | None) -> np.ndarray:
    """The item's image file as HxWx3 uint8 RGB (raises :class:`~samdeploy.errors.ImageError`)."""
    from samdeploy.sam.images import load_image

    return load_image(item.path, max_pixels=max_pixels)


class Segmenter:
    """A loaded model answering one image at a time (see the module docs)."""

    def __init__(self, config: WorkerConfig) -> None:
        from samdeploy import SamAutomaticMaskGenerator, SamPredictor, load_model

        self.config = config
        # No embedding cache: every image is new, and the generator encodes through its own graph.
        self.model = load_model(
            config.model,
            backend=config.backend,
            providers=config.providers,
            threads=config.threads,
            cache_mb=0,
        )
        if config.mode == "everything":
            self.generator = SamAutomaticMaskGenerator(self.model, **config.generator, output_mode="coco_rle")
        else:
            self.predictor = SamPredictor(self.model)

    def process(self, item: WorkItem) -> Outcome:
        """Read and segment ``item``; every per-image problem becomes the outcome's error."""
        if item.error is not None:
            return Outcome(item.key, error=item.error)
        start = time.perf_counter()
        try:
            image = read_image(item, self.config.max_pixels)
            return Outcome(item.key, self.segment(item, image), seconds=time.perf_counter() - start)
        except Exception as exc:  # one image's failure must not stop the others
            return Outcome(item.key, error=describe_error(exc), seconds=time.perf_counter() - start)

    def segment(self, item: WorkItem, image: np.ndarray) -> bytes:
        """The output document of ``item`` for its decoded HxWx3 ``image``."""
        if self.config.mode == "everything":
            records = self.generator.generate(image)
            annotations = [{"id": i + 1, **record} for i, record in enumerate(records)]
        elif self.config.mode == "boxes":
            annotations = self._boxes(image, item.task)
        else:
            annotations = self._prompts(image, item.task["prompts"])
        return encode_document(item, image.shape[:2], annotations, self.config.fingerprint, self.config.mode)

    def _boxes(self, image: np.ndarray, task: dict[str, Any]) -> list[dict[str, Any]]:
        """One mask per COCO box (single-mask output, as the official predictor for a box)."""
        from samdeploy.sam.results import coco_rle

        boxes, ids = task["boxes"], task["ids"]
        if not boxes:
            return []
        self.predictor.set_image(image)
        annotations = []
        for start in range(0, len(boxes), BOX_CHUNK):
            chunk = np.asarray(boxes[start : start + BOX_CHUNK], dtype=np.float64)
            masks, scores, _ = self.predictor.predict_batch(boxes=chunk, multimask_output=False)
            for offset, (mask, score) in enumerate(zip(masks[:, 0], scores[:, 0], strict=True)):
                annotations.append(
                    {
                        "id": ids[start + offset],
                        "segmentation": coco_rle(mask),
                        "area": int(np.count_nonzero(mask)),
                        "predicted_iou": float(score),
                    }
                )
        return annotations

    def _prompts(self, image: np.ndarray, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One mask per prompt: the best-scoring one of its outputs."""
        from samdeploy.sam.results import coco_rle, mask_bbox

        self.predictor.set_image(image)
        annotations = []
        for index, prompt in enumerate(prompts):
            masks, scores, _ = self.predictor.predict(
                point_coords=None if "points" not in prompt else np.asarray(prompt["points"], np.float64),
                point_labels=None if "labels" not in prompt else np.asarray(prompt["labels"]),
                box=None if "box" not in prompt else np.asarray(prompt["box"], np.float64),
                multimask_output=self.config.multimask,
            )
            best = int(np.argmax(scores))
            mask = masks[best]
            annotations.append(
                {
                    "id": index + 1,
                    "prompt": prompt,
                    "segmentation": coco_rle(mask),
                    "area": int(np.count_nonzero(mask)),
                    "bbox": mask_bbox(mask),
                    "predicted_iou": float(scores[best]),
                }
            )
        return annotations

    # Ray Data's callable-class protocol: one actor builds one Segmenter, then answers batches.

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """A batch of decoded rows (``key``, ``path``, ``task`` JSON, ``image`` or ``error``) ->
        ``key``, ``document`` (bytes, empty on failure), ``error`` (str, empty on success) and
        ``seconds`` (segmenting; the decoding stage's time is not seen here)."""
        out: dict[str, list[Any]] = {"key": [], "document": [], "error": [], "seconds": []}
        for row in _rows(batch):
            item, start = row_item(row), time.perf_counter()
            if row["error"]:
                outcome = Outcome(item.key, error=str(row["error"]))
            else:
                try:
                    outcome = Outcome(item.key, self.segment(item, np.asarray(row["image"])))
                except Exception as exc:
                    outcome = Outcome(item.key, error=describe_error(exc))
            out["key"].append(outcome.key)
            out["document"].append(outcome.document or b"")
            out["error"].append(outcome.error or "")
            out["seconds"].append(time.perf_counter() - start)
        return out


def item_row(item: WorkItem) -> dict[str, Any]:
    """A work item as a flat row of strings (what a Ray dataset carries)."""
    return {
        "key": item.key,
        "path": item.path,
        "task": json.dumps(item.task),
        "image_id": json.dumps(item.image_id),
        "error": item.error or "",
    }


def row_item(row: dict[str, Any]) -> WorkItem:
    return WorkItem(
        str(row["key"]),
        str(row["path"]),
        json.loads(str(row["task"])),
        json.loads(str(row["image_id"])),
        str(row["error"]) or None,
    )


def decode_row(row: dict[str, Any], max_pixels: int | None) -> dict[str, Any]:
    """The decoding stage: a row plus its ``image`` (HxWx3 uint8; 0x0x3 when it failed), or its
    ``error``."""
    image = np.zeros((0, 0, 3), dtype=np.uint8)
    if not row["error"]:
        try:
            image = read_image(row_item(row), max_pixels)
        except Exception as exc:
            row = {**row, "error": describe_error(exc)}
    return {**row, "image": image}


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(batch)
    return [dict(zip(names, values, strict=True)) for values in zip(*(batch[n] for n in names), strict=True)]
