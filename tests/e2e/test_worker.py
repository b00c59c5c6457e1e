"""Real worker processes on a real store: competition, crashes, kills, timeouts, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from docqueue.dispatch.child import available_cores
from docqueue.models import JobState, NewJob
from docqueue.settings import Settings
from docqueue.store import JobStore
from tests.e2e.workers import kill_tree, lines, start_worker, wait_for


def _drain(settings: Settings) -> None:
    """Run a worker of 2 children until the queue is empty."""
    worker = start_worker(settings, "--concurrency", "2", "--burst")
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)


def finished(store: JobStore, n: int) -> bool:
    """True once `n` jobs are finished."""
    stats = store.stats()
    return sum(stats.total(s) for s in JobState if s.finished) >= n


@pytest.mark.slow
def test_four_workers_drain_10000_jobs_exactly_once(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """4 competing workers: every job succeeds, each run exactly once, none claimed twice."""
    done = tmp_path / "done.log"
    n = 10_000
    for _ in range(n // 1000):
        store.enqueue_many([NewJob("record", {"path": str(done)}) for _ in range(1000)])
    workers = [start_worker(settings, "--concurrency", "2", "--burst") for _ in range(4)]
    try:
        for worker in workers:
            assert worker.wait(timeout=240) == 0
    finally:
        for worker in workers:
            kill_tree(worker)
    runs = Counter(fields[0] for fields in lines(done))
    assert len(runs) == n and set(runs.values()) == {1}
    stats = store.stats()
    assert stats.total(JobState.SUCCEEDED) == n
    pids = {fields[2] for fields in lines(done)}
    assert len(pids) >= 4, "the work was shared between the workers' children"


def test_killed_child_costs_one_attempt(store: JobStore, settings: Settings) -> None:
    """A child killed with SIGKILL mid-job: the job fails that attempt, is retried, succeeds."""
    job, _ = store.enqueue(NewJob("crash", {"kill_on": [1]}))
    other, _ = store.enqueue(NewJob("noop"))
    worker = start_worker(settings, "--concurrency", "1", "--burst")
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)
    final = store.get(job.id)
    assert final.status == JobState.SUCCEEDED and final.attempt == 2
    assert final.result == {"survived_attempt": 2}
    retry = next(e for e in store.events(job.id) if e.type == "retry_scheduled")
    assert retry.data["error"] == {
        "type": "WorkerDied",
        "message": "worker process died: signal 9 (SIGKILL)",
    }
    assert store.get(other.id).status == JobState.SUCCEEDED


def test_segfault_costs_one_attempt(store: JobStore, settings: Settings) -> None:
    """A segfault in a processor fails that attempt with the signal named; the retry succeeds."""
    job, _ = store.enqueue(NewJob("crash", {"kill_on": [1], "how": "segfault"}))
    worker = start_worker(settings, "--concurrency", "1", "--burst")
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)
    assert store.get(job.id).status == JobState.SUCCEEDED
    retry = next(e for e in store.events(job.id) if e.type == "retry_scheduled")
    assert retry.data["error"]["message"] == "worker process died: signal 11 (SIGSEGV)"


def test_child_killed_from_outside(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    """kill -9 of a busy child from another process: retried once and recorded once."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    job, _ = store.enqueue(
        NewJob("record", {"path": str(done), "started": str(started), "sleep": 2})
    )
    worker = start_worker(settings, "--concurrency", "1")
    try:
        wait_for(lambda: len(lines(started)) == 1, 30, "the job to start")
        os.kill(int(lines(started)[0][2]), signal.SIGKILL)
        wait_for(lambda: store.get(job.id).status == JobState.SUCCEEDED, 30, "the retry")
    finally:
        kill_tree(worker)
    assert [fields[:2] for fields in lines(done)] == [[str(job.id), "2"]]


def test_killed_worker_jobs_are_reaped_and_finished_elsewhere(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """kill -9 of a whole worker: the reaper returns its jobs and another worker finishes them."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    params = {"path": str(done), "started": str(started), "sleep": 1.5}
    ids = [store.enqueue(NewJob("record", params))[0].id for _ in range(2)]
    first = start_worker(settings, "--concurrency", "2")
    try:
        wait_for(lambda: len(lines(started)) == 2, 30, "both jobs to start")
    finally:
        kill_tree(first)
    second = start_worker(settings, "--concurrency", "2")
    try:
        wait_for(lambda: finished(store, 2), 60, "the second worker to finish the jobs")
    finally:
        kill_tree(second)
    for job_id in ids:
        job = store.get(job_id)
        assert job.status == JobState.SUCCEEDED and job.attempt == 2
        assert any(
            e.data.get("error", {}).get("type") == "LeaseExpired" for e in store.events(job_id)
        )
    assert sorted(f[0] for f in lines(done)) == sorted(str(i) for i in ids)


def test_resources_load_once_per_process(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """20 jobs on 2 children load the resource twice: once per process, never per job."""
    loads = tmp_path / "loads.log"
    ids = [store.enqueue(NewJob("counted"))[0].id for _ in range(20)]
    worker = start_worker(settings, "--concurrency", "2", "--burst", LOADS_FILE=str(loads))
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)
    loaded_in = [fields[0] for fields in lines(loads)]
    assert len(loaded_in) == len(set(loaded_in)) <= 2
    ran_in = {str(store.get(i).result["pid"]) for i in ids}  # type: ignore[index]
    assert ran_in <= set(loaded_in)


def test_a_job_running_alone_gets_every_core(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """The children share the cores: a job's math (an embedding) may use every core while it
    runs alone, and its share once a second job runs beside it."""
    cores = available_cores()
    if cores < 2:
        pytest.skip("one core: alone or not, a job gets one thread")
    together = {"together": 2, "folder": str(tmp_path), "expect": cores // 2}
    alone, _ = store.enqueue(NewJob("threads"))
    _drain(settings)
    pair = [store.enqueue(NewJob("threads", together))[0] for _ in range(2)]
    _drain(settings)
    assert store.get(alone.id).result == {"threads": cores}
    assert [store.get(job.id).result for job in pair] == [{"threads": cores // 2}] * 2


def test_timeout_kills_the_child_and_fails_the_job(store: JobStore, settings: Settings) -> None:
    """A job past its timeout is killed; out of attempts it fails with a clear error."""
    job, _ = store.enqueue(NewJob("hang", timeout=1, max_attempts=1))
    after, _ = store.enqueue(NewJob("noop"))
    worker = start_worker(settings, "--concurrency", "1", "--burst")
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)
    final = store.get(job.id)
    assert final.status == JobState.FAILED
    assert final.error == {
        "type": "JobTimeout",
        "message": "job ran past its 1s timeout and was killed",
        "traceback": None,
    }
    assert store.get(after.id).status == JobState.SUCCEEDED


def test_children_are_recycled(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    """With max 3 jobs per child, 9 jobs run in 3 different child processes."""
    done = tmp_path / "done.log"
    store.enqueue_many([NewJob("record", {"path": str(done)}) for _ in range(9)])
    worker = start_worker(
        settings, "--concurrency", "1", "--burst", DOCQUEUE_MAX_JOBS_PER_CHILD="3"
    )
    try:
        assert worker.wait(timeout=60) == 0
    finally:
        kill_tree(worker)
    assert sorted(Counter(f[2] for f in lines(done)).values()) == [3, 3, 3]


def test_sigterm_lets_running_jobs_finish(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM stops claiming; the running job finishes within the grace; the rest stay queued."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    running, _ = store.enqueue(
        NewJob("record", {"path": str(done), "started": str(started), "sleep": 1})
    )
    waiting, _ = store.enqueue(NewJob("noop", priority=0))
    worker = start_worker(settings, "--concurrency", "1")
    try:
        wait_for(lambda: len(lines(started)) == 1, 30, "the job to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        kill_tree(worker)
    assert store.get(running.id).status == JobState.SUCCEEDED
    assert store.get(waiting.id).status == JobState.QUEUED


def test_sigterm_past_grace_releases_the_job(
    store: JobStore, settings: Settings, tmp_path: Path
) -> None:
    """A job still running when the grace ends goes back to the queue, its attempt uncounted."""
    started = tmp_path / "started.log"
    job, _ = store.enqueue(NewJob("hang", {"started": str(started)}))
    worker = start_worker(settings, "--concurrency", "1", DOCQUEUE_SHUTDOWN_GRACE="0.5")
    try:
        wait_for(lambda: store.get(job.id).status == JobState.RUNNING, 30, "the job to start")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        kill_tree(worker)
    back = store.get(job.id)
    assert back.status == JobState.QUEUED and back.attempt == 0
    assert [e.type for e in store.events(job.id)][-1] == "released"


def test_cancel_running_job(store: JobStore, settings: Settings, tmp_path: Path) -> None:
    """Cancelling a running job stops it; the worker goes on with the next job."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    long, _ = store.enqueue(
        NewJob("record", {"path": str(done), "started": str(started), "sleep": 60})
    )
    worker = start_worker(settings, "--concurrency", "1")
    try:
        wait_for(lambda: len(lines(started)) == 1, 30, "the job to start")
        store.cancel(long.id)
        after, _ = store.enqueue(NewJob("noop"))
        wait_for(lambda: store.get(after.id).status == JobState.SUCCEEDED, 30, "the next job")
    finally:
        kill_tree(worker)
    assert store.get(long.id).status == JobState.CANCELLED
    assert lines(done) == []


def test_burst_exits_on_empty_queue(settings: Settings) -> None:
    """`worker --burst` with nothing to do exits at once with status 0."""
    worker = start_worker(settings, "--burst")
    try:
        assert worker.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        kill_tree(worker)
        raise


def test_worker_rides_out_lost_database_connections(postgres_database: str, tmp_path: Path) -> None:
    """Every connection of the worker is killed by the server mid-run: it reconnects and goes on."""
    from sqlalchemy import text

    settings = Settings(
        home=tmp_path / "home",
        database_url=postgres_database,
        lease_seconds=3.0,
        retry_base_delay=0.0,
        poll_interval=0.01,
    )
    store = JobStore.from_settings(settings)
    with store.engine.begin() as conn:
        conn.execute(text("TRUNCATE job_events, artifacts, workers, jobs CASCADE"))
    first = [store.enqueue(NewJob("noop", {"sleep_ms": 100}))[0].id for _ in range(10)]
    worker = start_worker(settings, "--concurrency", "1")
    try:
        wait_for(lambda: finished(store, 2), 30, "the first jobs")
        with store.engine.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 2  # the worker's pool connection and its LISTEN connection
        later = [store.enqueue(NewJob("noop"))[0].id for _ in range(5)]
        wait_for(lambda: finished(store, 15), 60, "every job after the connections were killed")
        assert worker.poll() is None, "the worker kept running"
    finally:
        kill_tree(worker)
    for job_id in first + later:
        assert store.get(job_id).status == JobState.SUCCEEDED
