"""Running the app under uvicorn, with a bounded graceful shutdown.

On SIGTERM or SIGINT: /readyz turns 503 at once (load balancers stop sending), uvicorn stops
accepting, in-flight requests get ``graceful_shutdown_s`` to finish, then the lifespan closes
the job worker, the encoder pool and the model. SIGTERM then exits 0; SIGINT as Ctrl-C does.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from samdeploy.errors import SamDeployError
from samdeploy.package import ModelPackage
from samdeploy.serve.app import create_app
from samdeploy.serve.settings import ServeSettings

log = logging.getLogger("samdeploy.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, marking the app not-ready as soon as a shutdown signal arrives."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.config.app.state.draining = True
        super().handle_exit(sig, frame)


def insecure_binding_warning(settings: ServeSettings) -> str | None:
    """The warning to print when the server listens beyond this machine without an API key."""
    if settings.loopback or settings.api_key is not None:
        return None
    return (
        f"listening on {settings.host} without --api-key: anyone who can reach this port can use the"
        " server; set --api-key (or SAMDEPLOY_API_KEY) or bind to 127.0.0.1"
    )


def serve(settings: ServeSettings, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT. A missing or malformed package fails here, before binding."""
    if settings.model is not None:
        ModelPackage.load(settings.model)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        # One event loop, one model: scale with --workers (encoder threads), not processes.
        workers=1,
    )
    server = _Server(config)
    # uvicorn re-raises the signal it handled once it has shut down; for SIGTERM that signal
    # reaches this handler, so a requested stop exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SamDeployError("the server did not start (see the error above)")
