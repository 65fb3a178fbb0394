"""Running a batch: the driver, and the two ways its images are spread over workers.

    read_input -> OutputFolder (lock, resume: skip whole documents) -> pending items
        -> run_local (N processes)  |  run_ray (Ray Data: decode stage -> actor pool stage)
        -> Outcome per image -> driver writes results/<key>.json or a failures.jsonl line
        -> merge -> instances.json, manifest.json

Both pools yield one :class:`~samdeploy.batch.work.Outcome` per pending image, in any order, and
the driver is the only writer. A worker that dies (a killed process, a lost Ray actor) costs
nothing but time: the local pool starts new processes and resubmits the images that were in
flight; Ray Data restarts the actor and retries its task. Ray is imported only on the Ray path.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import samdeploy
from samdeploy.batch.inputs import BatchInput, WorkItem, read_input
from samdeploy.batch.outputs import FAILURES, MANIFEST, OutputFolder, fingerprint
from samdeploy.batch.work import Outcome, Segmenter, WorkerConfig, decode_row, item_row
from samdeploy.errors import SamDeployError
from samdeploy.limits import available_cpus
from samdeploy.sam.images import DEFAULT_MAX_PIXELS

#: An image in flight when its worker died this many times is given up (it may be what kills it).
MAX_ATTEMPTS = 3


class WorkerStartError(SamDeployError):
    """A worker could not load the model or build its generator; the run cannot go on."""


@dataclass
class BatchSummary:
    """The counts and figures of a finished (or stopped) run."""

    output_dir: Path
    total: int = 0  # work items of the input
    skipped: int = 0  # already done by an earlier run
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    worker_seconds: float = 0.0  # summed over images: what the workers spent on them
    merged_images: int = 0
    merged_annotations: int = 0
    status: str = "running"

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RunnerOptions:
    """Where the work runs: ``workers`` processes here, or a Ray actor pool of that size.

    ``ray``: use Ray (a local one unless ``ray_address`` names a cluster, or ``auto`` for the one
    this machine belongs to); ``cpus_per_worker`` / ``memory_per_worker_mb``: what each actor
    reserves (also its intra-op threads by default), ``gpus_per_worker`` the GPUs (for ``--device
    cuda``; a fraction shares one); ``threads``: intra-op threads per worker.
    """

    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_per_worker_mb: float | None = None
    threads: int | None = None


def run_batch(
    source: str | Path,
    output_dir: str | Path,
    *,
    mode: str = "everything",
    prompts: str | Path | None = None,
    image_root: str | Path | None = None,
    model: str | Path | None = None,
    backend: str | None = None,
    providers: list[str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    generator: dict[str, Any] | None = None,
    multimask: bool = False,
    runner: RunnerOptions | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> BatchSummary:
    """Segment every image of ``source`` into ``output_dir``; resumes what an earlier run began.

    ``backend`` / ``providers``: as :func:`~samdeploy.load_model` takes them, in every worker.
    ``mode``: ``everything`` (``generator``: ``SamAutomaticMaskGenerator`` options), ``boxes``
    (a COCO input's bboxes) or ``prompts`` (the JSON Lines file ``prompts``). ``on_start(total,
    skipped)`` is called once the work is known, ``on_outcome`` after each image.

    Raises :class:`~samdeploy.errors.SamDeployError` for bad input or options (before any work)
    and :class:`~samdeploy.batch.outputs.OutputError` when the output folder cannot be written
    (the run stops; rerunning resumes). Failed images do not raise: see ``summary.failed``.
    """
    runner = runner or RunnerOptions()
    if runner.workers < 1:
        raise SamDeployError(f"--workers must be at least 1, got {runner.workers}")
    if runner.cpus_per_worker <= 0:
        raise SamDeployError(f"--cpus-per-worker must be positive, got {runner.cpus_per_worker}")
    if runner.gpus_per_worker < 0:
        raise SamDeployError(f"--gpus-per-worker must be 0 or more, got {runner.gpus_per_worker}")
    if runner.ray_address:
        check_ray_address(runner.ray_address)
    package = _package(model)
    model_info = _model_info(package, model)
    generator = _generator_options(generator, package) if mode == "everything" else {}
    batch = read_input(source, mode, prompts, image_root)
    options = {
        "generator": generator,
        "multimask": multimask,
        "max_pixels": max_pixels,
        "backend": backend,
        "providers": providers,
    }
    # What decides the documents' content (not where or how fast they are made, nor size limits).
    run_fingerprint = fingerprint(
        {
            "model": model_info["sha256"],
            "mode": mode,
            "generator": generator,
            "multimask": multimask,
            "backend": backend,
        }
    )
    config = WorkerConfig(
        mode=mode,
        fingerprint=run_fingerprint,
        model=None if model is None else str(model),
        backend=backend,
        providers=providers,
        threads=runner.threads,
        max_pixels=max_pixels,
        generator=generator,
        multimask=multimask,
    )
    summary = BatchSummary(Path(output_dir), total=len(batch.items))
    started_at, start = datetime.now(timezone.utc), time.monotonic()
    with OutputFolder(output_dir) as out:
        pending = [i for i in batch.items if i.error is not None or out.load(i, run_fingerprint) is None]
        summary.skipped = summary.total - len(pending)
        by_key = {item.key: item for item in pending}

        def manifest() -> None:
            summary.seconds = time.monotonic() - start
            out.write_json(
                MANIFEST,
                _manifest(summary, batch, mode, model_info, options, runner, run_fingerprint, started_at),
            )

        manifest()
        if on_start is not None:
            on_start(summary.total, summary.skipped)
        try:
            runnable = [item for item in pending if item.error is None]
            for item in pending:
                if item.error is not None:  # bad prompt lines, malformed boxes: no model needed
                    _settle(out, summary, item, Outcome(item.key, error=item.error), on_outcome)
            if runnable:
                pool = (
                    _run_ray(runnable, config, runner) if runner.ray else _run_local(runnable, config, runner)
                )
                with contextlib.closing(pool):
                    for outcome in pool:
                        _settle(out, summary, by_key[outcome.key], outcome, on_outcome)
            _, summary.merged_images, summary.merged_annotations = out.merge(batch, mode, run_fingerprint)
            summary.status = "complete" if not summary.failed else "complete, some images failed"
        except BaseException as exc:
            summary.status = f"stopped: {exc}" if str(exc) else f"stopped: {type(exc).__name__}"
            with contextlib.suppress(SamDeployError):
                manifest()
            raise
        manifest()
    return summary


def _settle(
    out: OutputFolder,
    summary: BatchSummary,
    item: WorkItem,
    outcome: Outcome,
    on_outcome: Callable[[Outcome], None] | None,
) -> None:
    """Write an image's document, or its failure line; count it."""
    if outcome.error is None and outcome.document is not None:
        out.write_result(item.key, outcome.document)
        summary.done += 1
    else:
        out.record_failure(item, outcome.error or "no result")
        summary.failed += 1
    summary.worker_seconds += outcome.seconds
    if on_outcome is not None:
        on_outcome(outcome)


def _generator_options(generator: dict[str, Any] | None, package: Any) -> dict[str, Any]:
    """Every generator option as the generator will use it (None or left out: the package's
    recommendation, else the official default), checked. Spelt out in full, so the run's
    fingerprint does not depend on how the options were given."""
    from samdeploy.sam.automatic import GeneratorConfig, recommended_settings

    given = {name: value for name, value in (generator or {}).items() if value is not None}
    try:
        config = GeneratorConfig(**{**recommended_settings(package), **given})
    except TypeError as exc:
        raise SamDeployError(f"unknown generator option: {exc}") from None
    config.check()
    return {k: v for k, v in asdict(config).items() if k != "output_mode"}


def _package(model: str | Path | None) -> Any:
    from samdeploy.package import ModelPackage
    from samdeploy.sam.model import DEFAULT_MODEL

    return ModelPackage.load(model if model is not None else DEFAULT_MODEL)


def _model_info(package: Any, model: str | Path | None) -> dict[str, Any]:
    """The model's identity for the manifest and the fingerprint: path, type and a hash of its files
    (from the package manifest's sha256 of each file: reading GBs of weights is not needed)."""
    files = {name: info.get("sha256") for name, info in sorted(package.manifest["files"].items())}
    return {
        "path": "(embedded default)" if model is None else str(model),
        "model_type": package.model_type,
        "precision": package.precision,
        "sha256": fingerprint(files),
    }


def _manifest(
    summary: BatchSummary,
    batch: BatchInput,
    mode: str,
    model_info: dict[str, Any],
    options: dict[str, Any],
    runner: RunnerOptions,
    run_fingerprint: str,
    started_at: datetime,
) -> dict[str, Any]:
    where: dict[str, Any] = {"kind": "ray" if runner.ray else "local", "workers": runner.workers}
    if runner.ray:
        where |= {"address": runner.ray_address or "local", "cpus_per_worker": runner.cpus_per_worker}
        where["gpus_per_worker"] = runner.gpus_per_worker
        where["memory_per_worker_mb"] = runner.memory_per_worker_mb
    return {
        "samdeploy": samdeploy.__version__,
        "status": summary.status,
        "mode": mode,
        "input": batch.describe(),
        "model": model_info,
        "options": options,
        "runner": where,
        "fingerprint": run_fingerprint,
        "counts": {
            "images": summary.total,
            "skipped": summary.skipped,
            "done": summary.done,
            "failed": summary.failed,
            "merged_images": summary.merged_images,
            "merged_annotations": summary.merged_annotations,
        },
        "times": {
            "started": started_at.isoformat(timespec="seconds"),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(summary.seconds, 3),
            "worker_seconds": round(summary.worker_seconds, 3),
            "images_per_second": round(summary.images_per_second, 4),
        },
        "files": {"failures": FAILURES},
    }


# ---------------------------------------------------------------------------------------------
# Local: a pool of processes, each with one Segmenter
# ---------------------------------------------------------------------------------------------

_SEGMENTER: Segmenter | None = None
_START_ERROR: str | None = None


def _start_worker(config: WorkerConfig, parent: int) -> None:
    """Process-pool initializer: die with the driver, then load the model once. A failure is kept
    and reported by the first task (an initializer that raises would read as a crashed worker)."""
    global _SEGMENTER, _START_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops the pool
    if sys.platform.startswith("linux"):
        # A driver killed with SIGKILL cannot stop its workers; the kernel does it for us.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    try:
        _SEGMENTER = Segmenter(config)
    except Exception as exc:
        _START_ERROR = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SamDeployError) else str(exc)


def _work(item: WorkItem) -> Outcome:
    if _SEGMENTER is None:
        raise WorkerStartError(f"a worker could not start: {_START_ERROR}")
    return _SEGMENTER.process(item)


def _run_local(items: list[WorkItem], config: WorkerConfig, runner: RunnerOptions) -> Iterator[Outcome]:
    """Outcomes of ``items`` from ``runner.workers`` processes; at most two images in flight per
    worker (the rest wait here, so memory stays bounded). A dead worker breaks the whole pool
    (``BrokenProcessPool``): a new pool starts and the images in flight are resubmitted; one that
    was in flight at :data:`MAX_ATTEMPTS` deaths fails."""
    workers = min(runner.workers, len(items))
    threads = runner.threads or max(1, available_cpus() // workers)
    config = WorkerConfig(**{**asdict(config), "threads": threads})
    queue, attempts = deque(items), {item.key: 0 for item in items}
    context = multiprocessing.get_context("spawn")  # no fork of a threaded driver
    while queue:
        in_flight: dict[Future[Outcome], WorkItem] = {}
        pool = ProcessPoolExecutor(workers, context, _start_worker, (config, os.getpid()))
        try:
            while queue or in_flight:
                while queue and len(in_flight) < 2 * workers:
                    item = queue.popleft()
                    in_flight[pool.submit(_work, item)] = item
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcome = future.result()  # BrokenProcessPool when a worker died
                    del in_flight[future]
                    yield outcome
        except BrokenProcessPool:
            for item in in_flight.values():
                attempts[item.key] += 1
                if attempts[item.key] >= MAX_ATTEMPTS:
                    yield Outcome(item.key, error=f"its worker process died {MAX_ATTEMPTS} times")
                else:
                    queue.appendleft(item)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Ray Data: a decoding stage, then an actor pool of Segmenters
# ---------------------------------------------------------------------------------------------


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse (SamDeployError) a cluster address that is malformed or where nothing answers:
    ``ray.init`` would retry such an address for many minutes (over ten measured) before giving up.
    ``auto`` is left to Ray, which finds the running cluster from its own files or says there is none."""
    if address == "auto":
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise SamDeployError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise SamDeployError(
            f"cannot join Ray at {address}: nothing answers at {host}:{port} ({reason})"
        ) from None


def _run_ray(items: list[WorkItem], config: WorkerConfig, runner: RunnerOptions) -> Iterator[Outcome]:
    """Outcomes of ``items`` from a Ray Data pipeline: rows -> ``decode_row`` (a plain stage) ->
    ``map_batches(Segmenter, ActorPoolStrategy(size=workers))``, streamed back to the driver.
    Ray Data's streaming executor keeps the rows in flight bounded (backpressure), whatever the
    number of images. Joins (or starts) Ray here and leaves a Ray it did not start running."""
    try:
        import ray
        from ray.data import ActorPoolStrategy, DataContext
    except ImportError:
        raise SamDeployError("--ray needs Ray: pip install 'samdeploy[ray]'") from None
    needed = runner.workers * runner.cpus_per_worker
    started = not ray.is_initialized()
    if started:
        # A local Ray gets the CPUs the actors ask for, even more than this machine has (they share).
        local = {} if runner.ray_address else {"num_cpus": max(available_cpus(), math.ceil(needed))}
        try:
            ray.init(
                address=runner.ray_address,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
                **local,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = runner.ray_address or "a local Ray"
            raise SamDeployError(f"cannot start or join Ray at {where}: {exc}") from None
    if runner.ray_address is None:  # a pool this Ray cannot place would wait for ever
        have = ray.cluster_resources()
        for kind, each in (("CPU", runner.cpus_per_worker), ("GPU", runner.gpus_per_worker)):
            if have.get(kind, 0) < runner.workers * each:
                if started:
                    ray.shutdown()
                raise SamDeployError(
                    f"this Ray has {have.get(kind, 0):g} {kind}s; {runner.workers} workers x"
                    f" --{kind.lower()}s-per-worker {each:g} need {runner.workers * each:g}: use fewer"
                    f" workers or fewer {kind}s per worker"
                )
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # its per-run notices would break through the progress bar
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        threads = runner.threads or max(1, int(runner.cpus_per_worker))
        config = WorkerConfig(**{**asdict(config), "threads": threads})
        actor: dict[str, Any] = {"num_cpus": runner.cpus_per_worker}
        if runner.gpus_per_worker:
            actor["num_gpus"] = runner.gpus_per_worker
        if runner.memory_per_worker_mb:
            actor["memory"] = runner.memory_per_worker_mb * 2**20
        dataset = ray.data.from_items([item_row(item) for item in items])
        dataset = dataset.map(decode_row, fn_kwargs={"max_pixels": config.max_pixels})
        dataset = dataset.map_batches(
            Segmenter,
            fn_constructor_args=(config,),
            compute=ActorPoolStrategy(size=runner.workers),
            batch_size=1,
            batch_format="numpy",
            **actor,
        )
        for row in dataset.iter_rows():
            yield Outcome(
                str(row["key"]),
                bytes(row["document"]) or None,
                str(row["error"]) or None,
                float(row["seconds"]),
            )
    finally:
        data_logger.setLevel(saved_level)
        if started:
            ray.shutdown()
