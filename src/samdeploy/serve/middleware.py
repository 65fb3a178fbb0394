"""ASGI middleware: the request body limit and per-route request metrics.

Both are plain ASGI (no ``BaseHTTPMiddleware``), so streaming bodies stay streamed.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from samdeploy.limits import Limit, check
from samdeploy.serve.errors import PayloadTooLarge, error_response
from samdeploy.serve.metrics import Metrics


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413: at once from ``Content-Length``, else while
    reading (a chunked body raises :class:`PayloadTooLarge` inside the route, answered 413)."""

    def __init__(self, app: ASGIApp, limit: Limit) -> None:
        self.app = app
        self.limit = limit

    def _check(self, size: int) -> None:
        """:class:`PayloadTooLarge` with :func:`samdeploy.limits.check`'s sentence beyond the limit."""
        check(size, self.limit, error=PayloadTooLarge)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit():
            try:
                self._check(int(length))
            except PayloadTooLarge as exc:
                await error_response(413, str(exc))(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                self._check(seen)
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Count requests by route template, method and status, and time them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            # The template (/v1/images/{image_id}/segment), never the raw path: bounded label values.
            label = getattr(route, "path", None) or ("static" if status < 400 else "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - start)
