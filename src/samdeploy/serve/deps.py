"""Typed dependencies: the app's state, its settings and the API-key check, for routes to declare."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from samdeploy.engine.inference import SOLO_ALLOWED
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

    @contextmanager
    def segment_request(self) -> Iterator[bool]:
        """Count a segment request in flight while the block runs (on the event loop); yields
        whether it may decode on ``--solo-threads``: it has the server to itself and the model has
        solo sessions. The block's context says so to the model (``SOLO_ALLOWED``); a worker thread
        started from it runs in a copy of that context."""
        self.segments_in_flight += 1
        try:
            alone = self.alone() and self.settings.decoder_solo_threads is not None
            token = SOLO_ALLOWED.set(alone)
            try:
                yield alone
            finally:
                SOLO_ALLOWED.reset(token)
        finally:
            self.segments_in_flight -= 1


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
