"""``POST /v1/images/{image_id}/everything`` (start a segment-everything job) and ``GET /v1/jobs/{job_id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends
from starlette.concurrency import run_in_threadpool

from samdeploy.serve.deps import ServicesDep, require_api_key
from samdeploy.serve.jobs import Job
from samdeploy.serve.schemas import EverythingIn, JobOut

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_api_key)])


def _job_out(job: Job) -> JobOut:
    return JobOut.model_validate(
        {
            "job_id": job.job_id,
            "status": job.status,
            "progress": job.progress,
            "error": job.error,
            "records": job.records if job.status == "done" else None,
        }
    )


@router.post("/images/{image_id}/everything", response_model=JobOut, status_code=202)
async def start_everything(
    image_id: str, services: ServicesDep, options: Annotated[EverythingIn | None, Body()] = None
) -> JobOut:
    """Queue segment-everything on a cached image (``SamAutomaticMaskGenerator`` options; omitted ones
    take its defaults). 404: unknown image; 422: bad option; 503 + Retry-After: too many jobs."""
    entry = services.encoder.lookup(image_id)
    kwargs = {} if options is None else options.model_dump(exclude_none=True)
    job = await run_in_threadpool(services.jobs.submit, image_id, entry, kwargs)
    return _job_out(job)


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, services: ServicesDep) -> JobOut:
    """A job's status and progress (0..1); its records (COCO RLE) once done."""
    return _job_out(services.jobs.get(job_id))
