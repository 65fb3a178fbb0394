"""Segment whole datasets: every image of a folder, glob, list or COCO file, locally or on Ray.

    from samdeploy.batch import run_batch, RunnerOptions
    summary = run_batch("photos/", "out/", generator={"points_per_side": 16})
    summary = run_batch("coco.json", "out/", mode="boxes", runner=RunnerOptions(workers=4, ray=True))

Modules: ``inputs`` (what to segment), ``work`` (one image -> its document), ``runner`` (the driver,
the local process pool and the Ray Data pipeline), ``outputs`` (the output folder: atomic per-image
documents, resume, merged COCO file, failures, manifest). See ``docs/batch.md``.
"""

from __future__ import annotations

from samdeploy.batch.inputs import MODES, BatchInputError, WorkItem, read_input
from samdeploy.batch.outputs import OutputError
from samdeploy.batch.runner import BatchSummary, RunnerOptions, WorkerStartError, run_batch

__all__ = [
    "MODES",
    "BatchInputError",
    "BatchSummary",
    "OutputError",
    "RunnerOptions",
    "WorkItem",
    "WorkerStartError",
    "read_input",
    "run_batch",
]
