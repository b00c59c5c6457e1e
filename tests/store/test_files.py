"""Stored bytes shared by jobs: a deleted job's files go only when no job names them, and no
commit names bytes that a concurrent delete removed (real files, SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import Engine, update

from docqueue.dispatch.housekeeping import Housekeeping
from docqueue.errors import FileRemoved
from docqueue.models import (
    Artifact,
    Completion,
    JobState,
    NewJob,
    RetryPolicy,
    Succeeded,
    utcnow,
)
from docqueue.storage import Storage
from docqueue.store import JobStore
from docqueue.store.engine import write_transaction
from docqueue.store.files import gone_from
from docqueue.store.tables import jobs
from docqueue.store.writes import add_artifacts

OUTPUT = b"the same output, made by two jobs"


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """A storage folder of the test's own."""
    return Storage((tmp_path / "files").as_uri())


@pytest.fixture
def files_store(engine: Engine, storage: Storage) -> JobStore:
    """A store that checks and removes the files of `storage`."""
    return JobStore(engine, files=storage, retry_policy=RetryPolicy(base_delay=0.0, max_delay=0.0))


def output(storage: Storage, data: bytes = OUTPUT) -> Artifact:
    """Store `data` as a job would store an output (kept once when already there)."""
    blob = storage.put_bytes(data)
    return Artifact(blob.sha256, blob.size, "text/plain", "out.txt", "output")


def finished_with(store: JobStore, artifact: Artifact) -> UUID:
    """Run a fresh job to success naming `artifact`; its id."""
    job, _ = store.enqueue(NewJob("noop"))
    (claimed,) = store.claim("w", ["default"], 1, lease_seconds=30)
    assert claimed.id == job.id
    done = Completion(job.id, claimed.attempt, Succeeded({}, (artifact,)))
    assert store.complete([done]) == [JobState.SUCCEEDED]
    return job.id


def test_a_delete_keeps_bytes_another_job_names(files_store: JobStore, storage: Storage) -> None:
    """Two jobs made the same output: deleting one leaves the other's file readable."""
    first = output(storage)
    done = finished_with(files_store, first)
    finished_with(files_store, output(storage))
    removed = files_store.delete(done)
    assert files_store.forget_files(a.sha256 for a in removed) == 0
    assert storage.exists(first.sha256)


def test_a_success_naming_bytes_a_delete_removed_runs_again(
    files_store: JobStore, storage: Storage
) -> None:
    """Job B's output is the bytes job A already stored, so B keeps no copy; A is deleted
    before B records its success. B must not succeed naming bytes that are gone: it is queued
    to run again, without the attempt counting (it did not fail), and its next run stores the
    output anew."""
    first = output(storage)
    a_job = finished_with(files_store, first)
    b_job, _ = files_store.enqueue(NewJob("noop"))
    (b_claim,) = files_store.claim("w", ["default"], 1, lease_seconds=30)
    b_output = output(storage)  # found already stored: B relies on A's bytes
    removed = files_store.delete(a_job)
    assert files_store.forget_files(a.sha256 for a in removed) == 1
    assert not storage.exists(first.sha256)

    done = Completion(b_job.id, b_claim.attempt, Succeeded({}, (b_output,)))
    assert files_store.complete([done]) == [JobState.QUEUED]
    error = files_store.get(b_job.id).error
    assert error is not None and error["type"] == "OutputRemoved"
    assert "'out.txt'" in error["message"]
    assert files_store.artifacts(b_job.id) == []
    assert files_store.events(b_job.id)[-1].type == "released"

    (again,) = files_store.claim("w", ["default"], 1, lease_seconds=30)
    assert again.attempt == b_claim.attempt, "the run whose output was removed did not count"
    redone = Completion(b_job.id, again.attempt, Succeeded({}, (output(storage),)))
    assert files_store.complete([redone]) == [JobState.SUCCEEDED]
    assert storage.exists(first.sha256)


def test_a_submission_naming_bytes_a_delete_removed_is_refused(
    files_store: JobStore, storage: Storage
) -> None:
    """An upload found already stored, whose last job is deleted before the new job is made:
    the submission is refused whole (the client sends the file again), nothing half made."""
    upload = output(storage, b"%PDF-1.7 the same upload")
    made, _ = files_store.enqueue(NewJob("noop", input_artifacts=(upload,)))
    files_store.cancel(made.id)
    again = output(storage, b"%PDF-1.7 the same upload")
    removed = files_store.delete(made.id)
    assert files_store.forget_files(a.sha256 for a in removed) == 1

    with pytest.raises(FileRemoved, match="upload the file again"):
        files_store.enqueue(NewJob("noop", input_artifacts=(again,)))
    assert files_store.list_jobs().items == []


def test_a_removal_waits_for_a_commit_naming_the_bytes(
    files_store: JobStore, storage: Storage
) -> None:
    """The lock itself: while a transaction that names the bytes is open, a removal of them
    waits; once it commits, the removal finds them named and keeps them. (On PostgreSQL this
    is the advisory lock on the file; on SQLite, the database's one write lock.)"""
    shared = output(storage)
    job, _ = files_store.enqueue(NewJob("noop"))
    naming = threading.Event()
    release = threading.Event()

    def commit_naming() -> None:
        with write_transaction(files_store.engine) as conn:
            assert gone_from(conn, storage, {shared.sha256}) == set()
            naming.set()
            release.wait(10)
            add_artifacts(conn, [(job.id, [shared])], utcnow())

    committer = threading.Thread(target=commit_naming)
    committer.start()
    assert naming.wait(10)
    removed: list[int] = []
    remover = threading.Thread(
        target=lambda: removed.append(files_store.forget_files([shared.sha256]))
    )
    remover.start()
    time.sleep(0.5)
    waited = remover.is_alive()
    release.set()
    committer.join(10)
    remover.join(10)
    assert waited, "the removal went ahead while a commit naming the bytes was open"
    assert removed == [0]
    assert storage.exists(shared.sha256)


def test_files_no_job_names_are_swept_once_old(files_store: JobStore, storage: Storage) -> None:
    """Outputs of attempts that failed, uploads whose job was never made: removed by the
    worker's sweep once a day old. Recent ones, and old ones a job names, stay."""
    named = output(storage, b"named by a job")
    finished_with(files_store, named)
    orphan = output(storage, b"an output of an attempt that lost its job")
    recent = output(storage, b"an output a running job has yet to record")
    day_ago = time.time() - 2 * 24 * 3600
    for blob in (named, orphan):
        os.utime(storage.key(blob.sha256), (day_ago, day_ago))

    housekeeping = Housekeeping(files_store, storage, retention_days=None)
    folders = {blob.sha256[:2] for blob in (named, orphan, recent)}
    assert sum(housekeeping.sweep_unnamed(folder) for folder in folders) == 1
    assert not storage.exists(orphan.sha256)
    assert storage.exists(named.sha256)
    assert storage.exists(recent.sha256)


def test_the_sweep_keeps_what_a_long_running_attempt_stored(
    files_store: JobStore, storage: Storage
) -> None:
    """A job with a timeout of its own, longer than the sweep's age, stored an output early
    and runs on: outputs stored since its attempt started stay until it records them; older
    unused ones go."""
    job, _ = files_store.enqueue(NewJob("noop", timeout=7 * 24 * 3600))
    files_store.claim("w", ["default"], 1, lease_seconds=30)
    three_days_ago = utcnow() - timedelta(days=3)
    with write_transaction(files_store.engine) as conn:
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(started_at=three_days_ago))
    early = output(storage, b"stored by the running attempt two days ago")
    before = output(storage, b"stored a week ago, before the attempt started")
    for blob, days in ((early, 2), (before, 7)):
        moment = time.time() - days * 24 * 3600
        os.utime(storage.key(blob.sha256), (moment, moment))

    housekeeping = Housekeeping(files_store, storage, retention_days=None)
    assert sum(housekeeping.sweep_unnamed(b.sha256[:2]) for b in (early, before)) == 1
    assert storage.exists(early.sha256)
    assert not storage.exists(before.sha256)


def test_bytes_stored_again_count_as_fresh(storage: Storage) -> None:
    """A job that finds its output already stored refreshes its time, so the sweep leaves it
    to the job about to name it."""
    blob = output(storage)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(storage.key(blob.sha256), (day_ago, day_ago))
    output(storage)
    ((sha256, stored),) = list(storage.stored(blob.sha256[:2]))
    assert sha256 == blob.sha256
    assert stored is not None and stored > time.time() - 60


def test_the_sweep_keeps_bytes_stored_again_after_it_listed_them(
    files_store: JobStore, storage: Storage
) -> None:
    """The sweep lists old unused files, then removes each under its lock: one whose bytes a
    new job stored again in between (its upload or output found them there) is fresh by then
    and kept; one still old goes."""
    again = output(storage, b"listed as old, then stored again by a new job")
    still_old = output(storage, b"listed as old, still old")
    day_ago = time.time() - 2 * 24 * 3600
    for blob in (again, still_old):
        os.utime(storage.key(blob.sha256), (day_ago, day_ago))
    cutoff = time.time() - 24 * 3600
    listed = [again.sha256, still_old.sha256]  # what the sweep's listing found old
    output(storage, b"listed as old, then stored again by a new job")
    assert files_store.forget_files(listed, stored_before=cutoff) == 1
    assert storage.exists(again.sha256)
    assert not storage.exists(still_old.sha256)
