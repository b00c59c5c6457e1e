"""The runner on a real store: claim one given job id, run it here, keep its lease, record it."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from docqueue.models import JobState, NewJob, utcnow
from docqueue.processors import builtin_registry
from docqueue.runner import Runner, run_job_id
from docqueue.storage import Storage
from docqueue.store import JobStore


def make_runner(tmp_path: Path) -> Runner:
    """A runner with the built-in processors and a storage folder."""
    return Runner(builtin_registry(), Storage((tmp_path / "files").as_uri()))


def test_delivered_id_runs_once(store: JobStore, tmp_path: Path) -> None:
    """A delivered id is claimed, run and recorded; a second delivery of it does nothing."""
    runner = make_runner(tmp_path)
    job, _ = store.enqueue(NewJob("noop", {"echo": "hi"}))
    assert run_job_id(store, runner, job.id, "celery-1", lease_seconds=30) == JobState.SUCCEEDED
    assert store.get(job.id).result == {"echo": "hi"}
    assert run_job_id(store, runner, job.id, "celery-2", lease_seconds=30) is None
    assert [e.type for e in store.events(job.id)].count("running") == 1


def test_delivered_id_of_a_job_not_due_is_ignored(store: JobStore, tmp_path: Path) -> None:
    """The store decides: a message that arrives early for a delayed job is only a hint."""
    later = utcnow() + timedelta(minutes=5)
    job, _ = store.enqueue(NewJob("noop", run_at=later))
    assert run_job_id(store, make_runner(tmp_path), job.id, "w", lease_seconds=30) is None
    assert store.get(job.id).status == JobState.SCHEDULED


def test_failures_become_outcomes(store: JobStore, tmp_path: Path) -> None:
    """A retryable failure is scheduled again, an input error fails at once; nothing is raised."""
    runner = make_runner(tmp_path)
    retryable, _ = store.enqueue(NewJob("noop", {"fail": "retryable"}))
    broken, _ = store.enqueue(NewJob("noop", {"fail": "input"}))
    assert run_job_id(store, runner, retryable.id, "w", lease_seconds=30) == JobState.SCHEDULED
    assert run_job_id(store, runner, broken.id, "w", lease_seconds=30) == JobState.FAILED
    error = store.get(broken.id).error
    assert error is not None and error["type"] == "InputError" and "params.fail" in error["message"]


def test_lease_is_renewed_while_the_job_runs(store: JobStore, tmp_path: Path) -> None:
    """A job longer than its lease keeps it by heartbeat while a reaper runs beside it."""
    job, _ = store.enqueue(NewJob("noop", {"sleep_ms": 1500}))
    done = threading.Event()
    reaped: list[int] = []

    def reaper() -> None:  # what every worker runs: without renewals it would take the job
        while not done.wait(0.1):
            reaped.append(store.reap_expired())

    thread = threading.Thread(target=reaper)
    thread.start()
    try:
        state = run_job_id(store, make_runner(tmp_path), job.id, "w", lease_seconds=0.6)
    finally:
        done.set()
        thread.join()
    assert len(reaped) >= 10 and sum(reaped) == 0
    assert state == JobState.SUCCEEDED
    assert "retry_scheduled" not in [e.type for e in store.events(job.id)]


def test_pruned_jobs_take_only_their_own_files(settings: object, tmp_path: Path) -> None:
    """Bytes shared by two jobs stay until the last job naming them is pruned."""
    from docqueue.service import DocumentQueueService

    service = DocumentQueueService(settings)  # type: ignore[arg-type]
    old = service.enqueue(b"shared bytes", "noop")
    service.enqueue(b"shared bytes", "noop")
    sha = service.store.inputs([old.id])[old.id][0].sha256
    assert service.process_document_queue(limit=10).completed == 2
    with service.store.engine.begin() as conn:  # age the first job past retention
        from sqlalchemy import update

        from docqueue.store.tables import jobs

        conn.execute(
            update(jobs)
            .where(jobs.c.id == old.id)
            .values(finished_at=utcnow() - timedelta(days=30))
        )
    removed = service.store.prune(timedelta(days=7))
    assert [a.sha256 for a in removed] == [sha]
    assert service.store.forget_files(a.sha256 for a in removed) == 0
    assert service.storage.exists(sha)
    removed = service.store.prune(timedelta(days=-1))
    assert service.store.forget_files(a.sha256 for a in removed) == 1
    assert not service.storage.exists(sha)
