"""How one job is shown: with its place in the queue, after an optional long-poll."""

from __future__ import annotations

import time

from docqueue.api.schemas import JobOut
from docqueue.models import WAITING_STATES, Job
from docqueue.store import JobStore

#: First and longest pause between store reads while a long-poll waits.
FIRST_PAUSE, LONGEST_PAUSE = 0.05, 0.5


def job_out(store: JobStore, job: Job) -> JobOut:
    """The API view of `job`, with its position when it waits in its queue."""
    position = store.position(job) if job.status in WAITING_STATES else None
    return JobOut.of(job, position)


def wait_until_finished(store: JobStore, job: Job, seconds: float) -> Job:
    """`job` once it is finished, or as it stands after `seconds`."""
    deadline = time.monotonic() + seconds
    pause = FIRST_PAUSE
    while not job.status.finished and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, LONGEST_PAUSE)
        job = store.get(job.id)
    return job
