"""The FastAPI application: :func:`create_app` builds it from :class:`ServeSettings`.

    lifespan start: load the model once -> Services on app.state (encoder pool, caches, jobs)
    request:        RequestMetrics -> BodyLimit -> routes (/v1 behind the API key) -> handlers
    lifespan end:   fail queued jobs, drain the encoder pool, close the model

The web page is served from ``static/`` at ``/``; OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from samdeploy import __version__
from samdeploy.sam.blas import hold_single_threaded_blas
from samdeploy.sam.model import EmbeddingCache, SamModel, load_model
from samdeploy.serve.deps import Services
from samdeploy.serve.errors import install_error_handlers
from samdeploy.serve.jobs import JobManager
from samdeploy.serve.metrics import LiveFigures, Metrics
from samdeploy.serve.middleware import BodyLimit, RequestMetrics
from samdeploy.serve.routes import health, images, jobs, model, segment
from samdeploy.serve.sessions import Encoder, LogitsStore
from samdeploy.serve.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("samdeploy.serve")


def model_id(sam: SamModel) -> str:
    """A short id of a loaded package: its model type and a digest of its files' checksums."""
    files = sam.package.manifest.get("files", {})
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    return f"{sam.package.model_type}-{digest}"


def build_services(settings: ServeSettings, metrics: Metrics) -> Services:
    """Load the model and build the services around it (blocking: seconds for a large model)."""
    # The model's own cache is keyed by pixels; the server keys its cache by upload instead.
    sam = load_model(
        settings.model,
        backend=settings.backend,
        providers=None if settings.providers is None else list(settings.providers),
        threads=settings.threads or None,
        solo_threads=settings.decoder_solo_threads,
        cache_mb=0,
    )
    cache = EmbeddingCache(settings.cache_mb)
    return Services(
        settings=settings,
        model=sam,
        model_id=model_id(sam),
        encoder=Encoder(sam, cache, settings, metrics),
        logits=LogitsStore(settings.logits_mb),
        jobs=JobManager(sam, settings),
        metrics=metrics,
    )


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The samdeploy server as an ASGI app; the model loads when the app starts (lifespan)."""
    settings = settings or ServeSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests decode concurrently: numpy's BLAS on one thread for the server's life, taken
        # here on the event loop's thread (the model's own hold is taken on a pool thread, which
        # OpenBLAS may ignore). Toggling it per call from many threads at once made the mask
        # upscaling ~100x slower (default model, 4 concurrent clicks: 2.9 s instead of 23 ms).
        blas = hold_single_threaded_blas()
        try:
            services = await run_in_threadpool(build_services, settings, metrics)
        except BaseException:
            blas.release()
            raise
        app.state.services = services
        log.info("model %s loaded (%s)", services.model_id, services.model.backend_summary)
        try:
            yield
        finally:
            app.state.draining = True
            await run_in_threadpool(_close, services)
            app.state.services = None
            blas.release()

    app = FastAPI(
        title="samdeploy",
        version=__version__,
        summary="Segment Anything over HTTP: upload an image once, then segment it with prompts.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = None
    app.state.draining = False  # set when a shutdown signal arrives: /readyz answers 503
    app.state.metrics = metrics

    def live() -> LiveFigures:
        services: Services | None = app.state.services
        if services is None:
            return LiveFigures(0, 0, 0, 0, 0, 0)
        cache = services.encoder.cache
        return LiveFigures(
            cache.nbytes, len(cache), cache.hits, cache.misses, services.encoder.pending, services.jobs.active
        )

    metrics.watch(live)
    install_error_handlers(app)
    for module in (images, segment, jobs, model, health):
        app.include_router(module.router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    app.add_middleware(BodyLimit, limit=settings.request_limit)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: sees the 413s too
    return app


def _close(services: Services) -> None:
    services.jobs.close()
    services.encoder.close()
    services.model.close()
