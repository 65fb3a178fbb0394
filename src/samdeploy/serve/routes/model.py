"""``GET /v1/model`` (the package manifest) and ``GET /v1/model/decoder.onnx`` (the official-contract
decoder), so that a client can decode an embedding in its own process or browser."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from samdeploy.serve.deps import ServicesDep, require_api_key
from samdeploy.serve.errors import require_sam_family

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[Depends(require_api_key)])


@router.get("/model")
async def get_model(services: ServicesDep) -> dict[str, Any]:
    """The package manifest (``model.json``) plus ``model_id``."""
    return {**services.model.package.manifest, "model_id": services.model_id}


@router.get(
    "/model/decoder.onnx",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "ONNX model"}},
)
async def get_decoder(services: ServicesDep) -> FileResponse:
    """The package's ``mask_decoder.onnx``: inputs image_embeddings, point_coords, point_labels,
    mask_input, has_mask_input, orig_im_size; outputs masks, iou_predictions, low_res_masks."""
    require_sam_family(services.model.package, "decoder.onnx")
    return FileResponse(
        services.model.package.decoder_path,
        media_type="application/octet-stream",
        filename="mask_decoder.onnx",
    )
