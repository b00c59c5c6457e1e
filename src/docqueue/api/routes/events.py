"""`/v1/jobs/{id}/events`: a job's timeline as server-sent events, live until the job finishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated

import anyio
from anyio import to_thread
from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from docqueue.api.deps import JobId, StoreDep
from docqueue.api.problems import problem_responses
from docqueue.api.schemas import EventOut
from docqueue.errors import NotFound
from docqueue.models import Job
from docqueue.store import JobStore

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["events"])

#: Seconds between reads of the timeline while the job runs.
POLL_INTERVAL = 0.25


async def existing_job(job_id: JobId, store: StoreDep) -> Job:
    """The job, or 404 before the stream starts (a stream's status is sent with its first byte)."""
    return await to_thread.run_sync(store.get, job_id)


@router.get("/events", response_class=EventSourceResponse, responses=problem_responses(404, 422))
async def job_events(
    job: Annotated[Job, Depends(existing_job)],
    store: StoreDep,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event id (sent by browsers).")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every event of the job's timeline, then each new one as it happens; ends when it finishes.

    Each event has `id:` (its id, for `Last-Event-ID`), `event:` (its type: queued, running,
    progress, retry_scheduled, succeeded, failed, cancelled...) and JSON `data`.
    """
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    async for event in _timeline(store, job, after):
        yield ServerSentEvent(
            id=str(event.id), event=event.type, data=event.model_dump(mode="json")
        )


async def _timeline(store: JobStore, job: Job, after: int) -> AsyncIterator[EventOut]:
    """Events after `after`, polled until the job is finished and its last event sent."""
    while True:
        # Status first, then events: a finished status read before the events guarantees that
        # the events read after it include the one that finished the job.
        try:
            status = (await to_thread.run_sync(store.get, job.id)).status
        except NotFound:
            return  # deleted or pruned while watched
        for event in await to_thread.run_sync(partial(store.events, job.id, after=after)):
            after = event.id
            yield EventOut.of(event)
        if status.finished:
            return
        await anyio.sleep(POLL_INTERVAL)
