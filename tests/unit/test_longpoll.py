"""FinishWatch and EventFeed: many long-polls and event streams, one reader of a real store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sized
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event

from docqueue.api.longpoll import EventFeed, FinishWatch
from docqueue.errors import NotFound
from docqueue.models import Completion, Job, JobEvent, JobState, NewJob, Succeeded
from docqueue.store import JobStore


def ids_per_read(store: JobStore, marks: tuple[str, ...], others: int) -> list[int]:
    """A list that gets, for every statement run on `store` that holds all of `marks`, how many
    job ids it asked about (its parameters less the `others`)."""
    reads: list[int] = []

    def count(
        _conn: object, _cursor: object, statement: str, parameters: Sized, *_: object
    ) -> None:
        if all(mark in statement for mark in marks):
            reads.append(len(parameters) - others)

    event.listen(store.engine, "before_cursor_execute", count)
    return reads


def test_waiters_wake_when_their_jobs_finish_and_the_reads_do_not_grow_with_them(
    store: JobStore,
) -> None:
    """30 threads wait on 30 jobs; the worker finishes them all; every waiter gets its job back
    succeeded, long before its 30 s, and the store was read in rounds, not per waiter."""
    made = [store.enqueue(NewJob("noop", {"n": n}))[0] for n in range(30)]
    watch = FinishWatch(store)
    # The statuses are 3 more parameters.
    rounds = ids_per_read(store, ("jobs.id IN", "status NOT IN"), 3)
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


def test_event_streams_get_every_event_and_the_reads_do_not_grow_with_them(
    store: JobStore,
) -> None:
    """20 streams follow 20 jobs while a worker claims, reports progress and finishes them:
    each stream gets its job's whole timeline in order and ends; the store was read in rounds
    that ask about several jobs, not per stream."""
    made = [store.enqueue(NewJob("noop", {"n": n}))[0] for n in range(20)]
    feed = EventFeed(store)
    # The least event id seen is 1 more parameter.
    rounds = ids_per_read(store, ("job_events.job_id IN",), 1)

    async def follow(job: Job) -> list[JobEvent]:
        return [e async for e in feed.follow(job)]

    async def main() -> list[list[JobEvent]]:
        streams = [asyncio.ensure_future(follow(job)) for job in made]
        await asyncio.sleep(2 * EventFeed.INTERVAL)  # every stream has read what there is
        claimed = await asyncio.to_thread(store.claim, "w1", ["default"], 20, lease_seconds=30)
        progress = [(job.id, job.attempt, 0.5, "half") for job in claimed]
        await asyncio.to_thread(store.report_progress, progress)
        await asyncio.sleep(2 * EventFeed.INTERVAL)
        done = [Completion(job.id, job.attempt, Succeeded()) for job in claimed]
        await asyncio.to_thread(store.complete, done)
        return await asyncio.wait_for(asyncio.gather(*streams), 30)

    timelines = asyncio.run(main())
    for job, timeline in zip(made, timelines, strict=True):
        assert timeline == store.events(job.id)
        assert timeline[-1].type == "succeeded" and "progress" in [e.type for e in timeline]
    assert rounds and max(rounds) > 1, "one read asks about several streams' jobs"
    assert len(rounds) < 20 * 3


def test_an_event_stream_resumes_after_an_id_and_ends_when_its_job_is_gone(
    store: JobStore,
) -> None:
    """A stream that names the last event it has gets only newer ones; a stream on a job
    deleted while it is followed ends."""
    feed = EventFeed(store)
    job, _ = store.enqueue(NewJob("noop"))
    store.cancel(job.id)
    everything = store.events(job.id)

    async def follow(after: int) -> list[JobEvent]:
        return [e async for e in feed.follow(store.get(job.id), after)]

    assert asyncio.run(follow(everything[0].id)) == everything[1:]
    other, _ = store.enqueue(NewJob("noop"))

    async def follow_then_delete() -> list[JobEvent]:
        stream = asyncio.ensure_future(follow_other())
        await asyncio.sleep(2 * EventFeed.INTERVAL)
        await asyncio.to_thread(store.cancel, other.id)
        await asyncio.to_thread(store.delete, other.id)
        return await asyncio.wait_for(stream, 30)

    async def follow_other() -> list[JobEvent]:
        return [e async for e in feed.follow(other)]

    events = asyncio.run(follow_then_delete())
    assert events[0].type == "queued"
