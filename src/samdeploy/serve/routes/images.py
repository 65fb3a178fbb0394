"""``POST /v1/images`` (upload and encode) and ``GET /v1/images/{image_id}/embedding`` (.npy)."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from samdeploy.serve.deps import ServicesDep, require_api_key
from samdeploy.serve.errors import require_sam_family
from samdeploy.serve.schemas import ImageOut
from samdeploy.serve.sessions import image_id
from samdeploy.serve.uploads import read_upload

router = APIRouter(prefix="/v1", tags=["images"], dependencies=[Depends(require_api_key)])

# A documented request body for a route that reads raw bytes itself.
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}


@router.post("/images", response_model=ImageOut, openapi_extra=_UPLOAD_BODY)
async def upload_image(request: Request, services: ServicesDep) -> ImageOut:
    """Upload an image (raw bytes or multipart field ``file``) and compute its embedding, unless cached.

    Several uploads of the same uncached image at once share one encode. 400: not an image;
    413: body or pixels over the limit; 503 + Retry-After: the encoder queue is full.
    """
    data = await read_upload(request)
    key = await run_in_threadpool(image_id, data)
    entry, cached = await services.encoder.embed(key, data)
    height, width = entry.size
    return ImageOut(image_id=key, width=width, height=height, model_id=services.model_id, cached=cached)


@router.get(
    "/images/{image_id}/embedding",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": ".npy, 1xCxhxw"}},
)
async def get_embedding(
    image_id: str, services: ServicesDep, dtype: Literal["float32", "float16"] = "float32"
) -> Response:
    """The image embedding as a .npy file (1xCxhxw), with ``X-Original-Size: H,W`` and
    ``X-Input-Size: h,w`` (the resized image inside the encoder's SxS input)."""
    require_sam_family(services.model.package, "the image embedding")
    embedding = services.encoder.lookup(image_id).embedding
    buffer = io.BytesIO()
    np.save(buffer, embedding.embeddings.astype(dtype), allow_pickle=False)
    return Response(
        buffer.getvalue(),
        media_type="application/octet-stream",
        headers={
            "X-Original-Size": ",".join(map(str, embedding.original_size)),
            "X-Input-Size": ",".join(map(str, embedding.input_size)),
            "Content-Disposition": f'attachment; filename="{image_id}.npy"',
        },
    )
