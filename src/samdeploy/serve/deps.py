"""Typed dependencies: the app's state, its settings and the API-key check, for routes to declare."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from samdeploy.sam.model import SamModel
from samdeploy.serve.errors import Unauthorized
from samdeploy.serve.jobs import JobManager
from samdeploy.serve.metrics import Metrics
from samdeploy.serve.sessions import Encoder, LogitsStore
from samdeploy.serve.settings import ServeSettings


@dataclass
class Services:
    """What the lifespan builds once: the model and the services around it."""

    settings: ServeSettings
    model: SamModel
    model_id: str
    encoder: Encoder
    logits: LogitsStore
    jobs: JobManager
    metrics: Metrics
    draining: bool = False
    segments_in_flight: int = 0  # segment requests between parsing and answer (event loop only)

    def alone(self) -> bool:
        """Whether the one segment request in flight has the server to itself: no other segment
        request, no encode and no segment-everything job running or waiting."""
        return self.segments_in_flight == 1 and not self.encoder.pending and not self.jobs.active


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_services(request: Request) -> Services:
    return request.app.state.services


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """Refuse a /v1 request without the right key (when the server has one) before any work."""
    if settings.api_key is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), settings.api_key.encode()):
        raise Unauthorized("missing or wrong API key: send it in the X-API-Key header")
