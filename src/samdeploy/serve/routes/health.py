"""``GET /healthz`` (the process answers), ``GET /readyz`` (model loaded, not draining) and
``GET /metrics`` (Prometheus text). Outside /v1: no API key, for probes and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from samdeploy.serve.errors import error_response
from samdeploy.serve.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "loading or shutting down"}})
async def readyz(request: Request) -> Health | Response:
    state = request.app.state
    if state.draining:
        return error_response(503, "the server is shutting down")
    if state.services is None:
        return error_response(503, "the model is loading")
    return Health(status="ready", detail={"model_id": state.services.model_id})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
