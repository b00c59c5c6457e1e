"""Idle polls on SQLite: a worker waiting for work, and the API waiting for jobs to finish, ask
the store only after something was committed (PRAGMA data_version), not on every tick."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event

from docqueue.api.longpoll import EventFeed, FinishWatch
from docqueue.dispatch.local import Supervisor
from docqueue.models import Completion, Job, JobEvent, JobState, NewJob, Succeeded, utcnow
from docqueue.store import CommitWatch, JobStore, upgrade
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
        supervisor.lookout.next_look = 0.0  # the poll interval has passed
        return supervisor.lookout.look()

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
        supervisor.lookout.due = 0.0  # the recheck for jobs that come due by the clock
        assert not poll()
        assert len(queries) == before + (2 if sqlite else 3)
    finally:
        supervisor.close()
        other.engine.dispose()


def long_poll(store: JobStore) -> tuple[Job, list[str], list[JobState], threading.Thread]:
    """A queued job and a thread that long-polls it for 30 s: the job, the reads of the
    finished jobs that the store gets from then on, a list that gets the job's status once
    the wait ends, and the thread (started)."""
    job, _ = store.enqueue(NewJob("noop"))
    watch = FinishWatch(store)
    reads = statements(store, "status NOT IN")
    answer: list[JobState] = []
    waiter = threading.Thread(target=lambda: answer.append(watch.wait(job, 30).status))
    waiter.start()
    return job, reads, answer, waiter


def test_a_long_poll_reads_the_store_only_when_something_was_committed(store: JobStore) -> None:
    """A waiter on a job nobody touches: on SQLite the store is read once (for the new waiter),
    not every round; the commit that finishes the job wakes it."""
    job, reads, answer, waiter = long_poll(store)
    threading.Event().wait(12 * FinishWatch.INTERVAL)
    idle_reads = len(reads)
    finish(store, job)
    waiter.join(10)
    assert answer == [JobState.SUCCEEDED]
    if store.is_postgres:
        assert idle_reads >= 5, "without a watch every round reads"
    else:
        assert idle_reads == 1


def test_a_long_poll_reads_less_often_while_commits_bring_its_waiter_nothing(
    store: JobStore,
) -> None:
    """A waiter on a job nobody touches while other jobs are committed every few milliseconds
    for 1.5 s (a busy worker): after PATIENCE reads that find nothing, the reader slows down
    to a read every SLOWEST at most, where it would read every INTERVAL (or POLL) throughout;
    the commit that finishes the job still wakes its waiter."""
    job, reads, answer, waiter = long_poll(store)
    wait_for_read(reads, 0)
    ends = time.monotonic() + 1.5
    while time.monotonic() < ends:
        store.enqueue(NewJob("noop", priority=0))
        time.sleep(0.005)
    busy_reads = len(reads)
    finish(store, job)
    waiter.join(10)
    assert answer == [JobState.SUCCEEDED]
    assert busy_reads <= FinishWatch.PATIENCE + 1.5 / FinishWatch.SLOWEST + 5
    # Every INTERVAL (10 ms) or POLL (25 ms) it would read 60 times or more.
    assert busy_reads < 1.5 / max(FinishWatch.INTERVAL, FinishWatch.POLL) / 2


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


def test_a_commit_watch_wakes_on_a_commit_from_another_process(tmp_path: Path) -> None:
    """A commit made by another process (a real child, as the API is to the worker) ends a
    wait at once, long before its timeout; `wake()` ends one from another thread; and with
    nothing committed the wait runs out. PostgreSQL and in-memory SQLite have no watch."""
    url = f"sqlite:///{tmp_path / 'docqueue.db'}"
    store = JobStore.from_url(url)
    upgrade(store.engine)
    store.enqueue(NewJob("noop"))  # the log file exists from here on
    watch = CommitWatch.of(store.engine)
    assert watch is not None
    try:
        watch.drain()
        assert not watch.wait(0.05), "nothing was committed"
        script = (
            "from docqueue.store import JobStore; from docqueue.models import NewJob; "
            f"JobStore.from_url({url!r}).enqueue(NewJob('noop'))"
        )
        child = subprocess.Popen([sys.executable, "-c", script])
        try:
            assert watch.wait(60), "the other process's commit woke the watch"
        finally:
            child.wait(60)
        waker = threading.Timer(0.05, watch.wake)
        waker.start()
        assert watch.wait(60), "wake() ended the wait"
        waker.join()
    finally:
        watch.close()
        store.engine.dispose()
    assert CommitWatch.of(make_engine("sqlite:///:memory:")) is None


def test_an_idle_worker_is_woken_by_a_commit_instead_of_its_poll(
    database_url: str, tmp_path: Path
) -> None:
    """With its next poll a minute away, an idle supervisor waits on the store's commits: a
    submission from another connection ends its wait, and it finds the job while the commit
    lands. PostgreSQL wakes it by NOTIFY instead (tested with the worker)."""
    supervisor = Supervisor(quick_settings(database_url, tmp_path))
    other = JobStore.from_url(database_url)
    try:
        if database_url.startswith("postgresql"):
            assert supervisor.lookout.commits is None
            return
        supervisor.children = [supervisor._spawn()]  # one idle child: room for work
        lookout, timers = supervisor.lookout, supervisor.timers
        lookout.look()
        lookout.next_look = lookout.due = timers.heartbeat = timers.reap = time.monotonic() + 60
        supervisor._wait([])  # nothing to do for a minute: the wait runs out (half a second)
        assert lookout.next_look > time.monotonic(), "nothing woke it"
        other.enqueue(NewJob("noop"))
        deadline = time.monotonic() + 10
        while lookout.next_look != 0.0:  # each wait lasts half a second at most
            assert time.monotonic() < deadline, "the commit did not wake the worker"
            supervisor._wait([])
        deadline = time.monotonic() + 30
        while not lookout.look():
            assert time.monotonic() < deadline, "the woken worker did not find the job"
            time.sleep(0.001)
    finally:
        for child in supervisor.children:
            child.kill()
        supervisor.close()
        other.engine.dispose()


def test_a_long_poll_is_answered_by_the_commit_that_finishes_its_job(store: JobStore) -> None:
    """On SQLite the reader waits for commits, not for its next round: with rounds a minute
    apart, the commit that finishes the job still answers its waiter."""

    class SlowRounds(FinishWatch):
        IDLE = 60.0

    job, _ = store.enqueue(NewJob("noop"))
    watch = SlowRounds(store)
    answer: list[JobState] = []
    waiter = threading.Thread(target=lambda: answer.append(watch.wait(job, 120).status))
    waiter.start()
    deadline = time.monotonic() + 10
    while watch._commits is None and not store.is_postgres:  # its reader has started
        assert time.monotonic() < deadline, "the reader made no watch"
        time.sleep(0.01)
    time.sleep(0.1)  # the waiter's own first read is done
    commits = watch._commits
    if store.is_postgres:  # no watch: rounds every POLL
        assert commits is None
    else:
        assert commits is not None and commits.watching(), "the reader waits on a watch"
    finish(store, job)
    waiter.join(30)
    assert answer == [JobState.SUCCEEDED], "the finishing commit did not wake the reader"


def test_an_idle_worker_wakes_when_a_scheduled_job_comes_due(
    database_url: str, tmp_path: Path
) -> None:
    """With nothing due, the worker asks when the next waiting job may run and polls then, not
    at a fixed interval: a job scheduled half a second ahead is found once it is due."""
    supervisor = Supervisor(quick_settings(database_url, tmp_path))
    other = JobStore.from_url(database_url)
    try:
        run_at = utcnow() + timedelta(seconds=0.5)
        other.enqueue(NewJob("noop", run_at=run_at))
        supervisor.lookout.next_look = 0.0
        assert not supervisor.lookout.look()
        wake_in = supervisor.lookout.next_look - time.monotonic()
        assert 0.0 < wake_in <= 0.5, f"the next poll is at the job's run_at, not in {wake_in:.3f}s"
        time.sleep(max(0.0, (run_at - utcnow()).total_seconds()) + 0.05)
        supervisor.lookout.next_look = 0.0
        assert supervisor.lookout.look(), "the scheduled job is due"
    finally:
        supervisor.close()
        other.engine.dispose()


def test_news_heard_while_a_claim_runs_outlives_its_result(
    database_url: str, tmp_path: Path
) -> None:
    """A job queued while a claim is in flight (announced by NOTIFY on PostgreSQL, by the
    commit watch on SQLite) is looked for right after that claim comes back short, not at the
    next poll a second later."""
    from multiprocessing.connection import wait

    supervisor = Supervisor(quick_settings(database_url, tmp_path))
    other = JobStore.from_url(database_url)
    lookout = supervisor.lookout
    try:
        lookout.look()  # the first look, which also makes SQLite's log to watch
        lookout.sources(True)  # what the supervisor waits on (the watch attaches here)
        lookout.claiming()  # a claim starts, and reads the queue before the job below
        other.enqueue(NewJob("noop"))
        deadline = time.monotonic() + 10
        heard = False
        while not heard:
            assert time.monotonic() < deadline, "nothing announced the job"
            heard = any(lookout.heard(ready) for ready in wait(lookout.sources(True), 0.5))
        lookout.claimed(0, 5)  # the claim came back short: it read the queue too early
        assert lookout.look(), "the job announced during the claim waits for the next poll"
    finally:
        supervisor.close()
        other.engine.dispose()
