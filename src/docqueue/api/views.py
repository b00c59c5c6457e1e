"""How one job is shown: with its place in the queue."""

from __future__ import annotations

from docqueue.api.schemas import JobOut
from docqueue.models import WAITING_STATES, Job
from docqueue.store import JobStore


def job_out(store: JobStore, job: Job) -> JobOut:
    """The API view of `job`, with its position when it waits in its queue."""
    position = store.position(job) if job.status in WAITING_STATES else None
    return JobOut.of(job, position)
