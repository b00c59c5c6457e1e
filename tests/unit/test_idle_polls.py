"""Idle polls on SQLite: a worker waiting for work, and the API waiting for jobs to finish, ask
the store only after something was committed (PRAGMA data_version), not on every tick."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import event

from docqueue.api.longpoll import FinishWatch
from docqueue.dispatch.local import Supervisor
from docqueue.models import Completion, JobState, NewJob, Succeeded
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
    try:
        changes = SqliteChanges.of(store.engine)
        if database_url.startswith("postgresql"):
            assert changes is None
            return
        assert changes is not None
        assert changes.changed()
        assert not changes.changed()
        store.enqueue(NewJob("noop"))
        assert changes.changed()
        assert not changes.changed()
        changes.close()
    finally:
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

    try:
        assert not poll() and len(queries) == 1
        assert not poll()
        sqlite = not database_url.startswith("postgresql")
        assert len(queries) == (1 if sqlite else 2)
        other.enqueue(NewJob("noop"))
        assert poll(), "a job was queued: the poll finds it"
        [job] = other.claim("w1", ["default"], 1, lease_seconds=30)
        other.complete([Completion(job.id, job.attempt, Succeeded())])
        before = len(queries)
        assert not poll() and len(queries) == before + 1, "a commit: the poll asks"
        assert not poll() and len(queries) == before + (1 if sqlite else 2)
        supervisor.timers.due = 0.0  # the recheck for jobs that come due by the clock
        assert not poll() and len(queries) == before + (2 if sqlite else 3)
    finally:
        if supervisor.changes is not None:
            supervisor.changes.close()
        supervisor.writer.close()
        supervisor.store.engine.dispose()
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
