"""`/v1/jobs`: submit, read, list, wait for, cancel, retry and delete jobs."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from docqueue.api.deps import (
    FinishWatchDep,
    JobId,
    MetricsDep,
    ServiceDep,
    SettingsDep,
    StoreDep,
    Wait,
)
from docqueue.api.longpoll import FinishWatch
from docqueue.api.problems import NOT_FINISHED, ProblemError, problem_responses
from docqueue.api.schemas import JobOut, JobPageOut, JobSubmission, ResultOut, job_path
from docqueue.api.submission import SubmissionDep, accept
from docqueue.api.views import job_out, job_response
from docqueue.models import Job, JobState
from docqueue.store import JobStore

log = logging.getLogger("docqueue.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: The problems each kind of endpoint may answer with, for the OpenAPI document.
READ_PROBLEMS = problem_responses(404, 422)
ACTION_PROBLEMS = problem_responses(404, 409, 422)

#: The request body of a submission, described by hand because the endpoint reads either form.
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobSubmission.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["operation"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "operation": {"type": "string"},
                        "params": {"type": "string", "description": "a JSON object, as text"},
                        "priority": {"type": "string", "description": "high, normal, low, 0-9"},
                        "queue": {"type": "string"},
                        "delay": {"type": "number"},
                        "run_at": {"type": "string", "format": "date-time"},
                        "max_attempts": {"type": "integer"},
                    },
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=problem_responses(
        404, 413, 415, 422, 429, ok={"model": JobOut, "description": "Finished within `wait`."}
    ),
    openapi_extra=SUBMIT_BODY,
)
async def submit_job(
    submission: SubmissionDep,
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    watch: FinishWatchDep,
    wait: Wait = 0,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description=(
                "The same key with the same request gives the same job, stored once; with "
                "another request (operation, params, queue, priority or file) it is refused."
            ),
        ),
    ] = None,
) -> Response:
    """Submit a job (JSON, or multipart with the file in `file`); 202 with its id at once.

    An `async def`, unlike the other endpoints, because it pays: the busiest endpoint waits
    for its write on the event loop instead of a thread of the pool (submission.py).
    """
    job, created, position = await accept(
        service, submission, idempotency_key, settings.max_upload_bytes
    )
    request.state.job_id = str(job.id)
    headers = {"Location": job_path(job.id)}
    if created:
        metrics.submitted.labels(job.operation).inc()
        # Said on the request's own line (middleware.py): one line per submission, not two.
        request.state.log_note = f"accepted {job.operation} job in queue {job.queue}"
    else:
        headers["Idempotent-Replayed"] = "true"
    seconds = min(wait, settings.max_wait_seconds)
    if seconds > 0 and not job.status.finished:
        job, position = await run_in_threadpool(_waited, service.store, watch, job, seconds)
    code = status.HTTP_200_OK if job.status.finished else status.HTTP_202_ACCEPTED
    if submission.large:  # its answer holds the params: made off the loop, as they were checked
        return await run_in_threadpool(job_response, job, position, code, headers)
    return job_response(job, position, code, headers)


@router.get("", responses=problem_responses(422))
def list_jobs(
    request: Request,
    response: Response,
    store: StoreDep,
    status_: Annotated[JobState | None, Query(alias="status")] = None,
    operation: str | None = None,
    queue: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JobPageOut:
    """Jobs newest first, filtered; follow `next_cursor` (also the `Link` header) for more."""
    page = store.list_jobs(
        status=status_, operation=operation, queue=queue, limit=limit, cursor=cursor
    )
    if page.next_cursor:
        following = request.url.include_query_params(cursor=page.next_cursor)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return JobPageOut(items=[JobOut.of(job) for job in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=READ_PROBLEMS)
def get_job(
    job_id: JobId, store: StoreDep, settings: SettingsDep, watch: FinishWatchDep, wait: Wait = 0
) -> Response:
    """One job; with `wait`, answer once it is finished or `wait` seconds have passed."""
    job = watch.wait(store.get(job_id), min(wait, settings.max_wait_seconds))
    return job_response(job, store.position(job))


@router.get("/{job_id}/result", responses=ACTION_PROBLEMS)
def get_result(job_id: JobId, store: StoreDep) -> ResultOut:
    """The outcome of a finished job; 409 while it is not finished."""
    job = store.get(job_id)
    if not job.status.finished:
        raise ProblemError(
            NOT_FINISHED,
            f"job {job_id} is {job.status}; its result exists once it has finished "
            f"(wait with GET {job_path(job_id)}?wait=30)",
            job_status=job.status.value,
        )
    return ResultOut(
        job_id=job.id,
        status=job.status,
        result=job.result,
        error=JobOut.of(job).error,
        finished_at=job.finished_at,
    )


@router.post("/{job_id}/cancel", responses=ACTION_PROBLEMS)
def cancel_job(job_id: JobId, store: StoreDep) -> JobOut:
    """Cancel a waiting or running job (a running one stops at its worker's next heartbeat)."""
    job = store.cancel(job_id)
    log.info("cancelled on request", extra=_tag(job))
    return job_out(store, job)


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, responses=ACTION_PROBLEMS)
def retry_job(job_id: JobId, store: StoreDep, response: Response) -> JobOut:
    """Queue a failed or cancelled job again, with a fresh set of attempts."""
    job = store.retry(job_id)
    log.info("queued again on request", extra=_tag(job))
    response.headers["Location"] = job_path(job.id)
    return job_out(store, job)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=ACTION_PROBLEMS)
def delete_job(job_id: JobId, store: StoreDep) -> Response:
    """Delete a finished job, its timeline and the bytes of its files no other job names."""
    removed = store.delete(job_id)
    store.forget_files(a.sha256 for a in removed)
    log.info("deleted with %d artifacts", len(removed), extra={"job_id": str(job_id)})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _waited(
    store: JobStore, watch: FinishWatch, job: Job, seconds: float
) -> tuple[Job, int | None]:
    """The job once it has finished or `seconds` have passed, and its position then."""
    job = watch.wait(job, seconds)
    return job, store.position(job)


def _tag(job: Job) -> dict[str, str]:
    """Logging extra that ties a line to its job."""
    return {"job_id": str(job.id)}
