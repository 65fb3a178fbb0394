"""Segment requests -> validated prompt batches -> decoder calls -> the API's answers.

    SegmentIn --validate each prompt (limits, inside the image, labels, logits handle)--> Prompt
              --group prompts of one shape (points per prompt, box or not, mask or not, multimask)-->
              one decoder call per group (usually one for the whole list)
              --masks BxCxHxW--> per prompt: C masks (or B*C for a batch of boxes), best, handle

Every prompt is validated by :func:`samdeploy.sam.prompts.validate_prompt`, the same checks and
messages as ``SamPredictor`` and the command line, with points and boxes required inside the image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from samdeploy import limits
from samdeploy.errors import PromptError, PromptLimitError
from samdeploy.sam.prompts import Prompt, validate_prompt
from samdeploy.serve.deps import Services
from samdeploy.serve.formats import Format, mask_json
from samdeploy.serve.schemas import PromptIn, SegmentIn
from samdeploy.serve.sessions import CachedImage

_PROMPT_FIELDS = ("points", "labels", "box", "boxes", "mask_input")


@dataclass(frozen=True)
class _Item:
    """A validated prompt and how it groups: prompts with equal keys share one decoder call."""

    prompt: Prompt
    multimask: bool

    @property
    def key(self) -> tuple[Any, ...]:
        p = self.prompt
        points = None if p.point_coords is None else p.point_coords.shape[1]
        return (points, p.boxes is not None, p.mask_input is not None, self.multimask, p.batch)


def _validate(services: Services, key: str, entry: CachedImage, item: PromptIn, in_list: bool) -> _Item:
    settings = services.settings
    if item.box is not None and item.boxes is not None:
        raise PromptError("give either box or boxes, not both")
    if in_list and item.boxes is not None:
        raise PromptError("boxes inside a prompts list: give each box as its own prompt")
    if item.points is not None:
        limits.check(len(item.points), settings.points_limit, error=PromptLimitError)
    if item.boxes is not None:
        if not item.boxes:
            raise PromptError("boxes is empty: give at least one XYXY box, or leave it out")
        limits.check(len(item.boxes), settings.boxes_limit, "boxes", PromptLimitError)
    if item.points is not None and not item.points:
        raise PromptError("points is empty: give at least one XY point, or leave it out")
    mask_input = None if item.mask_input is None else services.logits.get(key, item.mask_input)
    prompt = validate_prompt(
        item.points,
        item.labels,
        item.box if item.boxes is None else item.boxes,
        mask_input,
        mask_input_size=services.model.mask_input_size,
        image_size=entry.size,
        inside_image=True,
    )
    return _Item(prompt, item.multimask)


def parse(services: Services, key: str, entry: CachedImage, body: SegmentIn) -> list[_Item]:
    """The request's prompts, validated; :class:`PromptError` (422) for the first bad one."""
    if body.prompts is None:
        return [_validate(services, key, entry, body, in_list=False)]
    given = [name for name in _PROMPT_FIELDS if getattr(body, name) is not None]
    if given:
        raise PromptError(
            f"give either prompts or one prompt's fields, not both (got prompts and {given[0]})"
        )
    if not body.prompts:
        raise PromptError("prompts is empty: give at least one prompt")
    limits.check(len(body.prompts), services.settings.prompts_limit, error=PromptLimitError)
    return [_validate(services, key, entry, item, in_list=True) for item in body.prompts]


def _stack(prompts: list[Prompt]) -> Prompt:
    """Prompts of one shape -> one batch (concatenated along B)."""
    if len(prompts) == 1:
        return prompts[0]

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(p, name) for p in prompts]
        return None if parts[0] is None else np.concatenate(parts, axis=0)

    return Prompt(
        point_coords=cat("point_coords"),
        point_labels=cat("point_labels"),
        boxes=cat("boxes"),
        mask_input=cat("mask_input"),
        batch=sum(p.batch for p in prompts),
    )


def answer(
    services: Services, key: str, entry: CachedImage, items: list[_Item], fmt: Format, tolerance: float
) -> list[dict[str, Any]]:
    """Decode every prompt (one decoder call per group of one shape) and format the answers.

    Blocking (runs the decoder): call it from a worker thread.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.key, []).append(index)
    outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [None] * len(items)  # type: ignore[list-item]
    for indices in groups.values():
        batch = _stack([items[i].prompt for i in indices])
        start = time.perf_counter()
        out = services.model.decode(entry.embedding, batch, items[indices[0]].multimask)
        services.metrics.decode_seconds.observe(time.perf_counter() - start)
        offset = 0
        for i in indices:
            size = items[i].prompt.batch
            part = slice(offset, offset + size)
            outputs[i] = (out["masks"][part], out["scores"][part], out["low_res_logits"][part])
            offset += size
    height, width = entry.size
    answers = []
    for masks, scores, low_res in outputs:
        # B x C -> B*C, row-major: prompt (box) b's masks are b*C .. b*C + C-1.
        masks = masks.reshape(-1, *masks.shape[2:])
        scores = scores.reshape(-1)
        low_res = low_res.reshape(-1, *low_res.shape[2:])
        best = int(np.argmax(scores))
        answers.append(
            {
                "masks": [mask_json(m, s, fmt, tolerance) for m, s in zip(masks, scores, strict=True)],
                "best": best,
                "logits_handle": services.logits.put(key, np.array(low_res[best][None], dtype=np.float32)),
                "width": width,
                "height": height,
            }
        )
    return answers
