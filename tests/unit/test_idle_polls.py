"""Idle polls on SQLite: a worker waiting for work, and the API waiting for jobs to finish, ask
the store only after something was committed (PRAGMA data_version), not on every tick."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from sqlalchemy import event

from docqueue.api.longpoll import EventFeed, FinishWatch
from docqueue.dispatch.local import Supervisor
from docqueue.models import Completion, Job, JobEvent, JobState, NewJob, Succeeded
from docqueue.store import JobStore
from docqueue.store.engine import SqliteChanges, make_engine
from tests.conftest import quick_settings


def statements(store: JobStore, mark: str) -> list[str]:
    """A list that gets every statement run on `store` that holds `mark`."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if mark in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    return seen


def test_changes_are_the_commits_of_other_connections(database_url: str) -> None:
    """The first look says changed; then only a commit elsewhere does, once. PostgreSQL and an
    in-memory SQLite have nothing to watch."""
    store = JobStore.from_url(database_url)
    changes = SqliteChanges.of(store.engine)
    try:
        if database_url.startswith("postgresql"):
            assert changes is None
            return
        assert changes is not None
        assert changes.changed()
        assert not changes.changed()
        store.enqueue(NewJob("noop"))
        assert changes.changed()
        assert not changes.changed()
    finally:
        if changes is not None:
            changes.close()
        store.engine.dispose()
    assert SqliteChanges.of(make_engine("sqlite:///:memory:")) is None


def test_an_idle_worker_asks_the_store_after_a_commit_or_when_a_scheduled_job_may_be_due(
    database_url: str, tmp_path: Path
) -> None:
    """On SQLite a poll with nothing committed since the last one does not query; a submission
    (from another connection) and the recheck time for scheduled jobs each make it query. On
    PostgreSQL every due poll queries (NOTIFY wakes it, polls are the fallback)."""
    supervisor = Supervisor(quick_settings(database_url, tmp_path))
    other = JobStore.from_url(database_url)
    queries = statements(supervisor.store, "run_at <=")

    def poll() -> bool:
        supervisor.timers.poll = 0.0  # the poll interval has passed
        return supervisor._claim_due()

    sqlite = not database_url.startswith("postgresql")
    try:
        assert not poll()
        assert len(queries) == 1
        assert not poll()
        assert len(queries) == (1 if sqlite else 2), "nothing committed: no query on SQLite"
        other.enqueue(NewJob("noop"))
        assert poll(), "a job was queued: the poll finds it"
        [job] = other.claim("w1", ["default"], 1, lease_seconds=30)
        other.complete([Completion(job.id, job.attempt, Succeeded())])
        before = len(queries)
        assert not poll()
        assert len(queries) == before + 1, "a commit: the poll asks"
        assert not poll()
        assert len(queries) == before + (1 if sqlite else 2)
        supervisor.timers.due = 0.0  # the recheck for jobs that come due by the clock
        assert not poll()
        assert len(queries) == before + (2 if sqlite else 3)
    finally:
        supervisor.close()
        other.engine.dispose()


def test_a_long_poll_reads_the_store_only_when_something_was_committed(store: JobStore) -> None:
    """A waiter on a job nobody touches: on SQLite the store is read once (for the new waiter),
    not every round; the commit that finishes the job wakes it."""
    job, _ = store.enqueue(NewJob("noop"))
    watch = FinishWatch(store)
    reads = statements(store, "status NOT IN")
    answer: list[JobState] = []
    waiter = threading.Thread(target=lambda: answer.append(watch.wait(job, 30).status))
    waiter.start()
    threading.Event().wait(12 * FinishWatch.INTERVAL)
    idle_reads = len(reads)
    [claimed] = store.claim("w1", ["default"], 1, lease_seconds=30)
    store.complete([Completion(claimed.id, claimed.attempt, Succeeded())])
    waiter.join(10)
    assert answer == [JobState.SUCCEEDED]
    if store.is_postgres:
        assert idle_reads >= 5, "without a watch every round reads"
    else:
        assert idle_reads == 1


def wait_for_read(reads: list[str], after: int) -> None:
    """Until the store was read more than `after` times (a reader's round went by)."""
    deadline = time.monotonic() + 10
    while len(reads) <= after:
        assert time.monotonic() < deadline, "the reader did not read the store"
        time.sleep(0.01)


def finish(store: JobStore, job: Job) -> None:
    """Run `job` to success, as a worker would."""
    claimed = store.claim_job(job.id, "w1", lease_seconds=30)
    assert claimed is not None
    store.complete([Completion(job.id, claimed.attempt, Succeeded())])


def test_a_waiter_that_comes_after_its_job_finished_is_answered(store: JobStore) -> None:
    """A request reads its job (queued); the job finishes; the reader, running for another
    waiter, sees that commit; only then does the request wait: it is answered at once, not
    after its 30 s, though nothing was committed since the reader last looked."""
    watch = FinishWatch(store)
    kept, _ = store.enqueue(NewJob("noop", {"n": 1}))
    late, _ = store.enqueue(NewJob("noop", {"n": 2}))  # as the request read it: queued
    reads = statements(store, "status NOT IN")
    keeper = threading.Thread(target=watch.wait, args=(kept, 30))
    keeper.start()
    wait_for_read(reads, 0)
    finish(store, late)
    wait_for_read(reads, len(reads))
    started = time.monotonic()
    assert watch.wait(late, 30).status == JobState.SUCCEEDED
    assert time.monotonic() - started < 10, "answered by the reader, not by the timeout"
    finish(store, kept)
    keeper.join(10)
    assert not keeper.is_alive()


def test_a_stream_that_comes_after_its_job_finished_ends(store: JobStore) -> None:
    """The same for event streams: a stream opened on a job read as queued, which finished
    before the stream registered, gets the job's last events and ends (without the new
    stream's own read it would wait for a commit that never comes)."""
    feed = EventFeed(store)
    kept, _ = store.enqueue(NewJob("noop", {"n": 1}))
    late, _ = store.enqueue(NewJob("noop", {"n": 2}))
    reads = statements(store, "job_events.job_id IN")

    async def follow(job: Job) -> list[JobEvent]:
        return [e async for e in feed.follow(job)]

    async def main() -> list[JobEvent]:
        keeper = asyncio.ensure_future(follow(kept))
        await asyncio.to_thread(wait_for_read, reads, 0)
        await asyncio.to_thread(finish, store, late)
        await asyncio.to_thread(wait_for_read, reads, len(reads))
        # `late` as read before it finished; its first events come from the stream's own read.
        events = await asyncio.wait_for(follow(late), 10)
        await asyncio.to_thread(finish, store, kept)
        await asyncio.wait_for(keeper, 10)
        return events

    events = asyncio.run(main())
    assert events == store.events(late.id)
    assert events[-1].type == "succeeded"
