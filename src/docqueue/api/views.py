"""How one job is shown: with its place in the queue."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Response, status

from docqueue.api.schemas import JobOut
from docqueue.models import Job
from docqueue.store import JobStore


def job_out(store: JobStore, job: Job) -> JobOut:
    """The API view of `job`, with its position when it waits in its queue."""
    return JobOut.of(job, store.position(job))


def job_response(
    job: Job,
    position: int | None,
    status_code: int = status.HTTP_200_OK,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The API view of `job` as JSON, serialised here: a model returned by a `def` endpoint
    is validated again on a second trip through the thread pool, which costs a busy API more
    than the serialising itself (the endpoint declares `response_model=JobOut` for its
    documentation)."""
    body = JobOut.of(job, position).model_dump_json()
    return Response(body, status_code, headers, media_type="application/json")
