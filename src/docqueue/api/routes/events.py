"""`/v1/jobs/{id}/events`: a job's timeline as server-sent events, live until the job finishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from docqueue.api.deps import EventFeedDep, JobId, StoreDep
from docqueue.api.problems import problem_responses
from docqueue.api.schemas import EventOut
from docqueue.models import Job

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["events"])


async def existing_job(job_id: JobId, store: StoreDep) -> Job:
    """The job, or 404 before the stream starts (a stream's status is sent with its first byte)."""
    return await to_thread.run_sync(store.get, job_id)


@router.get("/events", response_class=EventSourceResponse, responses=problem_responses(404, 422))
async def job_events(
    job: Annotated[Job, Depends(existing_job)],
    feed: EventFeedDep,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event id (sent by browsers).")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of the job's timeline, then each new one as it happens; ends when it finishes.

    Each event has `id:` (its id, for `Last-Event-ID`), `event:` (its type: queued, running,
    progress, retry_scheduled, succeeded, failed, cancelled...) and JSON `data`.
    """
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    async for event in feed.follow(job, after):
        out = EventOut.of(event)
        yield ServerSentEvent(id=str(out.id), event=out.type, data=out.model_dump(mode="json"))
