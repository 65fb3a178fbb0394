"""Segment-everything jobs: bounded in number, run one at a time off the request threads.

    POST .../everything -> Job (queued) -> worker: generate from the cached embedding -> done | failed
                                           progress = decoder batches done / batches (all crops)

The image's cached embedding is reused for the whole-image crop, so a job without crop layers
encodes nothing and never decodes the upload; crop layers decode it to encode their crops.

At most ``max_jobs`` are queued or running (beyond: :class:`Busy`, 503); the ``kept_jobs`` most
recent finished ones stay readable, older ones are forgotten. Options are checked when the job
is submitted, so a bad option is a 422 at once, not a failed job later.

The worker is a daemon thread: at shutdown the queued jobs fail, and a running job gets the
graceful-shutdown time to finish; after that the process exits without it (a job writes nothing,
so nothing is left half-written).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from samdeploy.engine.inference import SOLO_ALLOWED
from samdeploy.errors import SamDeployError
from samdeploy.loading import mask_generator_for
from samdeploy.sam.automatic import SamAutomaticMaskGenerator
from samdeploy.sam.model import SamModel
from samdeploy.serve.errors import Busy, NotFound
from samdeploy.serve.sessions import CachedImage
from samdeploy.serve.settings import ServeSettings
from samdeploy.serve.uploads import decode_upload

log = logging.getLogger("samdeploy.serve")

ACTIVE = ("queued", "running")


@dataclass
class Job:
    """One segment-everything run on an uploaded image."""

    job_id: str
    image_id: str
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    records: list[dict[str, Any]] | None = field(default=None, repr=False)


class JobManager:
    """Queues, runs and remembers segment-everything jobs."""

    def __init__(self, model: SamModel, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Job, SamAutomaticMaskGenerator, CachedImage] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="samdeploy-jobs", daemon=True)
        self._worker.start()
        self._closed = False

    @property
    def active(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(job.status in ACTIVE for job in self._jobs.values())

    def submit(self, key: str, entry: CachedImage, options: dict[str, Any]) -> Job:
        """Queue a job on the cached image ``key`` with generator ``options`` (checked now)."""
        # The family's generator: SAM packages' or SAM 2.x packages' (both generate from the cached embedding).
        generator = mask_generator_for(self.model, output_mode="coco_rle", **options)
        with self._lock:
            active = sum(job.status in ACTIVE for job in self._jobs.values())
            if self._closed or active >= self.settings.max_jobs:
                raise Busy(
                    f"{active} segment-everything jobs are queued or running (the limit is"
                    f" {self.settings.max_jobs}); retry when one finishes",
                    self.settings.retry_after_s,
                )
            job = Job(secrets.token_urlsafe(12), key)
            self._jobs[job.job_id] = job
            self._forget_old()
        self._queue.put((job, generator, entry))
        return job

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.status not in ACTIVE]
        for job_id in finished[: max(0, len(finished) - self.settings.kept_jobs)]:
            del self._jobs[job_id]

    def _work(self) -> None:
        # A job's decoder calls keep to --threads: it runs for seconds, beside whatever clicks come.
        SOLO_ALLOWED.set(False)
        while (task := self._queue.get()) is not None:
            self._run(*task)
            self._queue.task_done()
        self._queue.task_done()

    def join(self) -> None:
        """Wait until every job submitted so far has finished."""
        self._queue.join()

    def _run(self, job: Job, generator: SamAutomaticMaskGenerator, entry: CachedImage) -> None:
        with self._lock:
            if job.status != "queued":  # failed by close() while it waited
                return
            job.status = "running"

        def progress(done: int, total: int) -> None:
            job.progress = done / total

        try:
            # Crop layers encode crops of the image itself; the whole image's embedding is cached.
            image = (
                decode_upload(entry.data, self.settings.max_pixels)
                if generator.config.crop_n_layers
                else None
            )
            records = generator.generate_from_embedding(entry.embedding, image, progress)
        except SamDeployError as exc:
            job.error, job.status = str(exc), "failed"
        except Exception as exc:  # a job's failure must not take the worker down
            log.exception("segment-everything job %s failed", job.job_id)
            job.error, job.status = f"internal error ({type(exc).__name__})", "failed"
        else:
            job.records, job.progress, job.status = records, 1.0, "done"
        with self._lock:
            self._forget_old()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"unknown job id {job_id!r} (never submitted, or forgotten after it finished)")
        return job

    def close(self) -> None:
        """Fail the queued jobs and stop the worker, waiting up to ``graceful_shutdown_s`` for
        the running job."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if job.status == "queued":
                    job.status, job.error = "failed", "the server shut down before the job ran"
        self._queue.put(None)
        self._worker.join(self.settings.graceful_shutdown_s)
