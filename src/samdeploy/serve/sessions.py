"""Image ids, the byte-bounded embedding cache, single-flight encodes and logits handles.

    upload bytes --sha256--> image_id --cache hit--> CachedImage
                                 |
                                 +--miss--> Encoder: one future per image id (single flight),
                                            a bounded queue in front of ``workers`` threads;
                                            full -> Busy (503 + Retry-After)

Encodes run on their own thread pool, so decoder calls for cached images (run on the server's
request threads) never wait behind them. The cache (:class:`~samdeploy.sam.model.EmbeddingCache`,
keyed by image id) is bounded in bytes: a forgotten image id is a 404 that says to upload again.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from samdeploy.errors import PromptError
from samdeploy.sam.model import EmbeddingCache, ImageEmbedding, SamModel
from samdeploy.serve.errors import Busy, NotFound, UnknownImage
from samdeploy.serve.metrics import Metrics
from samdeploy.serve.settings import ServeSettings
from samdeploy.serve.uploads import decode_upload


def image_id(data: bytes) -> str:
    """The id of an uploaded file: the sha256 of its bytes, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CachedImage:
    """An uploaded image's embedding, plus its file (kept for segment-everything jobs)."""

    embedding: ImageEmbedding
    data: bytes

    @property
    def nbytes(self) -> int:
        return self.embedding.nbytes + len(self.data)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return self.embedding.original_size


class Encoder:
    """Computes embeddings of uploads: bounded, single-flight, off the request threads."""

    def __init__(
        self, model: SamModel, cache: EmbeddingCache, settings: ServeSettings, metrics: Metrics
    ) -> None:
        self.model = model
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="samdeploy-encode")
        self._inflight: dict[str, asyncio.Future[CachedImage]] = {}

    @property
    def pending(self) -> int:
        """Encodes running or waiting for a worker."""
        return len(self._inflight)

    def lookup(self, key: str) -> CachedImage:
        """The cached image of ``key``; :class:`UnknownImage` (404) when absent."""
        entry = self.cache.get(key)
        if entry is None:
            raise UnknownImage(key)
        return entry  # type: ignore[return-value]  # the cache holds CachedImage entries

    async def embed(self, key: str, data: bytes) -> tuple[CachedImage, bool]:
        """The image of ``data`` (whose id is ``key``) and whether it was cached already.

        Concurrent calls for the same uncached image share one encode. Raises :class:`Busy` when
        ``workers + queue_depth`` encodes are already in flight, and the upload's
        :class:`~samdeploy.errors.ImageError` for a bad file.
        """
        entry = self.cache.get(key)
        if entry is not None:
            return entry, True  # type: ignore[return-value]
        future = self._inflight.get(key)
        if future is None:
            if self.pending >= self.settings.max_queued_encodes:
                raise Busy(
                    f"the encoder queue is full ({self.pending} images in flight); retry shortly",
                    self.settings.retry_after_s,
                )
            future = asyncio.get_running_loop().run_in_executor(self._pool, self._encode, key, data)
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        # shield: a client that disconnects does not cancel the encode others may be waiting for.
        return await asyncio.shield(future), False

    def _finished(self, key: str, future: asyncio.Future[CachedImage]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here, so an error nobody awaits is not logged as lost

    def _encode(self, key: str, data: bytes) -> CachedImage:
        start = time.perf_counter()
        rgb = decode_upload(data, self.settings.max_pixels)
        entry = CachedImage(self.model.encode(rgb), data)
        self.cache.put(key, entry)  # type: ignore[arg-type]  # any entry with .nbytes
        self.metrics.encode_seconds.observe(time.perf_counter() - start)
        return entry

    def close(self) -> None:
        """Drop waiting encodes and wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class LogitsEntry:
    """Low-res logits 1xRxR float32 of one answer's best mask, tied to the image they came from."""

    image_id: str
    logits: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.logits.nbytes)


class LogitsStore:
    """Handles to earlier answers' low-res logits, for refinement (``mask_input``); bounded in bytes."""

    def __init__(self, max_mb: float) -> None:
        self._cache = EmbeddingCache(max_mb)

    def put(self, key: str, logits: np.ndarray) -> str:
        handle = secrets.token_urlsafe(12)
        self._cache.put(handle, LogitsEntry(key, logits))  # type: ignore[arg-type]
        return handle

    def get(self, key: str, handle: str) -> np.ndarray:
        """The logits behind ``handle``, which must come from an answer on image ``key``."""
        entry: LogitsEntry | None = self._cache.get(handle)  # type: ignore[assignment]
        if entry is None:
            raise NotFound(
                f"unknown or expired logits handle {handle!r}: send the prompt without mask_input,"
                " then refine with the new answer's handle"
            )
        if entry.image_id != key:
            raise PromptError(
                f"logits handle {handle!r} belongs to another image: use a handle from this image"
            )
        return entry.logits
