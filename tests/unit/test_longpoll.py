"""FinishWatch: many long-polls answered by one reader of a real store."""

from __future__ import annotations

import threading
from collections.abc import Sized
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event

from docqueue.api.longpoll import FinishWatch
from docqueue.errors import NotFound
from docqueue.models import Completion, JobState, NewJob, Succeeded
from docqueue.store import JobStore


def test_waiters_wake_when_their_jobs_finish_and_the_reads_do_not_grow_with_them(
    store: JobStore,
) -> None:
    """30 threads wait on 30 jobs; the worker finishes them all; every waiter gets its job back
    succeeded, long before its 30 s, and the store was read in rounds, not per waiter."""
    made = [store.enqueue(NewJob("noop", {"n": n}))[0] for n in range(30)]
    watch = FinishWatch(store)
    #: Ids asked about in each read of the watcher (the statuses are 3 more parameters).
    rounds: list[int] = []

    def count(
        _conn: object, _cursor: object, statement: str, parameters: Sized, *_: object
    ) -> None:
        if "jobs.id IN" in statement and "status NOT IN" in statement:
            rounds.append(len(parameters) - 3)

    event.listen(store.engine, "before_cursor_execute", count)
    waiting = threading.Barrier(31)

    def wait(n: int) -> tuple[int, JobState]:
        waiting.wait()
        job = watch.wait(made[n], 30)
        return job.params["n"], job.status

    with ThreadPoolExecutor(30) as pool:
        answers = pool.map(wait, range(30))
        waiting.wait()
        claimed = store.claim("w1", ["default"], 30, lease_seconds=30)
        store.complete([Completion(job.id, job.attempt, Succeeded()) for job in claimed])
        assert sorted(answers) == [(n, JobState.SUCCEEDED) for n in range(30)]
    assert rounds and max(rounds) > 1, "one read asks about several waiters' jobs"
    assert len(rounds) < 30 * 5


def test_a_wait_ends_with_the_job_as_it_stands(store: JobStore) -> None:
    """Nothing finishes the job: after the wait it comes back still queued; a finished job
    comes back at once; a job deleted meanwhile is not found."""
    watch = FinishWatch(store)
    job, _ = store.enqueue(NewJob("noop"))
    assert watch.wait(job, 0.1).status == JobState.QUEUED
    [claimed] = store.claim("w1", ["default"], 1, lease_seconds=30)
    store.complete([Completion(claimed.id, claimed.attempt, Succeeded())])
    done = store.get(job.id)
    assert watch.wait(done, 30) is done
    other, _ = store.enqueue(NewJob("noop"))
    store.cancel(other.id)
    store.delete(other.id)
    with pytest.raises(NotFound):
        watch.wait(other, 30)
