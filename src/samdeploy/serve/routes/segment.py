"""``POST /v1/images/{image_id}/segment``: prompts on a cached image, answered from its embedding."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from samdeploy.serve import answers
from samdeploy.serve.deps import ServicesDep, require_api_key
from samdeploy.serve.schemas import SegmentIn, SegmentListOut, SegmentOut

router = APIRouter(prefix="/v1", tags=["segment"], dependencies=[Depends(require_api_key)])


@router.post(
    "/images/{image_id}/segment",
    response_model=SegmentOut | SegmentListOut,
    response_model_exclude_none=True,
)
async def segment(image_id: str, body: SegmentIn, services: ServicesDep) -> dict[str, Any]:
    """Masks for one prompt (points with labels, a box, a batch of boxes, a logits handle), or for
    ``prompts``, a list answered in one decoder call per shape of prompt.

    404: unknown or evicted image id (upload again); 422: malformed prompt.
    """
    entry = services.encoder.lookup(image_id)
    items = answers.parse(services, image_id, entry, body)
    with services.segment_request() as alone:
        if alone:
            services.metrics.segments_alone.inc()
        results = await run_in_threadpool(
            answers.answer, services, image_id, entry, items, body.format, body.polygon_tolerance
        )
    return results[0] if body.prompts is None else {"results": results}
