"""The server's settings: every knob and every server-side limit in one validated object.

Built by the command line (``samdeploy serve``) or by a test, then handed to
:func:`samdeploy.serve.app.create_app`; nothing is read from the environment at import time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path

from samdeploy import limits
from samdeploy.errors import SamDeployError
from samdeploy.sam.graphs import on_cpu

LOOPBACK_NAMES = ("localhost",)
MIN_API_KEY_LENGTH = 16


class SettingsError(SamDeployError):
    """A server setting is out of range or insecure."""


@dataclass(frozen=True)
class ServeSettings:
    """What the server loads and how much it accepts.

    model: package folder (None: the embedded default model). backend / providers: where the
    models run, as :func:`samdeploy.load_model` takes them (``samdeploy serve --device`` resolves
    to these; None: ONNX Runtime on the CPU, or as the package asks). threads: intra-op threads of each
    model call (0: the backend's default, every core). Each request runs on its own thread, so one
    intra-op thread per call uses the cores best under concurrent clients (default model, 4 at
    once: 26 clicks/s with 1, 13 with every core, on 2 cores). solo_threads: intra-op threads of a
    decoder call (a click) that starts while nothing else runs, so a lone user's clicks take every
    core (0: every core; at most ``threads``, or a GPU: off). cache_mb: bound of the embedding
    cache, in MiB (embeddings and the uploaded files kept for segment-everything jobs). workers:
    threads that encode images.
    queue_depth: encodes that may wait for a worker; beyond it an upload gets 503 + Retry-After.
    api_key: when set, every /v1 request needs the header ``X-API-Key``.
    max_body_bytes: largest request body (413 beyond). max_pixels: largest image, width x height
    (413 beyond; the decompression-bomb guard). max_points / max_boxes / max_prompts: per segment
    request. Each of these, ``threads`` and ``solo_threads`` is capped by :mod:`samdeploy.limits` (request size,
    pixel ceiling, points per prompt, prompts per call, CPUs); the defaults are a quarter of the
    library's prompt limits. max_jobs: segment-everything jobs queued or running at once (503 beyond);
    kept_jobs: finished jobs kept for ``GET /v1/jobs/{id}`` (the oldest are forgotten).
    logits_mb: bound of the store of low-res logits behind ``logits_handle``.
    graceful_shutdown_s: how long in-flight requests may run after SIGTERM/SIGINT.
    retry_after_s: the Retry-After a 503 suggests.
    """

    model: Path | None = None
    backend: str | None = None
    providers: tuple[str, ...] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 1
    solo_threads: int = 0
    cache_mb: float = 1024.0
    workers: int = 1
    queue_depth: int = 8
    api_key: str | None = None
    # Stricter than the library's limits by default (a server answers strangers), never looser:
    # each is capped by its limit in samdeploy.limits, whose name and unit its messages share.
    max_body_bytes: int = 50 * 2**20
    max_pixels: int = limits.MAX_PIXELS.value
    max_points: int = limits.MAX_POINTS.value // 4
    max_boxes: int = limits.MAX_PROMPTS.value // 4
    max_prompts: int = limits.MAX_PROMPTS.value // 4
    max_jobs: int = 4
    kept_jobs: int = 32
    logits_mb: float = 64.0
    graceful_shutdown_s: float = 10.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        positive = {
            "workers": self.workers,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_points": self.max_points,
            "max_boxes": self.max_boxes,
            "max_prompts": self.max_prompts,
            "max_jobs": self.max_jobs,
            "kept_jobs": self.kept_jobs,
            "retry_after_s": self.retry_after_s,
        }
        for name, value in positive.items():
            if value < 1:
                raise SettingsError(f"{name} must be at least 1, got {value}")
        at_least_zero = {
            "threads": self.threads,
            "solo_threads": self.solo_threads,
            "queue_depth": self.queue_depth,
            "cache_mb": self.cache_mb,
            "logits_mb": self.logits_mb,
            "graceful_shutdown_s": self.graceful_shutdown_s,
        }
        for name, value in at_least_zero.items():
            if value < 0:
                raise SettingsError(f"{name} must be >= 0, got {value}")
        capped = {
            "max_body_bytes": (self.max_body_bytes, limits.MAX_REQUEST_BYTES),
            "max_pixels": (self.max_pixels, limits.PIXELS_CEILING),
            "max_points": (self.max_points, limits.MAX_POINTS),
            "max_boxes": (self.max_boxes, limits.MAX_PROMPTS),
            "max_prompts": (self.max_prompts, limits.MAX_PROMPTS),
            "threads": (self.threads, limits.max_threads()),
            "solo_threads": (self.solo_threads, limits.max_threads()),
        }
        for name, (value, limit) in capped.items():
            limits.check(value, limit, name, SettingsError)
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_LENGTH:
            raise SettingsError(
                f"the API key is {len(self.api_key)} characters; use at least {MIN_API_KEY_LENGTH}"
                " (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )

    @property
    def loopback(self) -> bool:
        """Whether ``host`` only accepts connections from this machine."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def points_limit(self) -> limits.Limit:
        """``max_points`` as a :class:`~samdeploy.limits.Limit`: refusals read as the library's."""
        return replace(limits.MAX_POINTS, value=self.max_points)

    @property
    def boxes_limit(self) -> limits.Limit:
        """``max_boxes``: boxes of one prompt are prompts of one decoder call."""
        return replace(limits.MAX_PROMPTS, value=self.max_boxes)

    @property
    def prompts_limit(self) -> limits.Limit:
        return replace(limits.MAX_PROMPTS, value=self.max_prompts)

    @property
    def request_limit(self) -> limits.Limit:
        return replace(limits.MAX_REQUEST_BYTES, value=self.max_body_bytes)

    @property
    def decoder_solo_threads(self) -> int | None:
        """What :func:`samdeploy.load_model` gets as ``solo_threads``: None where it is off (model
        calls on every core already, ``solo_threads`` at most ``threads``, or the models on a GPU)."""
        solo = self.solo_threads or limits.max_threads()
        return solo if 0 < self.threads < solo and on_cpu(self.providers) else None

    @property
    def max_queued_encodes(self) -> int:
        """Encodes in flight (running plus waiting) beyond which an upload is refused."""
        return self.workers + self.queue_depth
