"""JobRequests: the changes clients and operators ask for: submit, cancel, retry, delete, prune."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from docqueue.errors import Conflict, FileRemoved, IdempotencyKeyReused, NotFound, QueueFull
from docqueue.models import JSON, Artifact, Job, JobState, NewJob, utcnow
from docqueue.store.engine import NOTIFY_CHANNEL, write_transaction
from docqueue.store.files import REMOVE_BATCH, StoredFiles, gone_from, lock_files, named
from docqueue.store.group import GroupCommit
from docqueue.store.reader import JobReader
from docqueue.store.rows import job_from_row
from docqueue.store.tables import FINISHED, WAITING, artifacts, job_events, jobs, status_in
from docqueue.store.writes import INSERT_ARTIFACT, INSERT_EVENT, add_event, artifact_rows

log = logging.getLogger("docqueue.store")
QUEUED, SCHEDULED, RUNNING = JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.RUNNING.value
#: Built once, as the statements of every submission are (see writes.py).
#: The rows come back in the order of the parameters, so that each job meets its own.
INSERT_JOBS = insert(jobs).returning(*jobs.c, sort_by_parameter_order=True)


class JobRequests(JobReader):
    """State changes that clients and operators ask for, apart from the workers' own."""

    def __init__(
        self,
        engine: Engine,
        *,
        default_max_attempts: int,
        max_queued: int,
        files: StoredFiles | None = None,
    ) -> None:
        super().__init__(engine)
        self.default_max_attempts = default_max_attempts
        self.max_queued = max_queued
        #: The storage whose files jobs name: commits check that what they name is still
        #: stored, and `forget_files` removes from it (files.py). None checks nothing and
        #: removes nothing, for stores that only read or administer jobs.
        self.files = files
        self._grouped = GroupCommit(self._insert_and_place)

    def enqueue(self, new: NewJob, *, now: datetime | None = None) -> tuple[Job, bool]:
        """Store a new job; with a known idempotency key, return the existing job and False.

        Jobs enqueued at the same moment by other threads share its transaction (group.py).
        """
        job, created, _ = self._grouped((new, now or utcnow(), False))
        return job, created

    async def enqueue_async(
        self, new: NewJob, *, now: datetime | None = None
    ) -> tuple[Job, bool, int | None]:
        """`enqueue` for a caller on an event loop (the API's submissions), which goes on
        serving meanwhile; with the job's `position`, read right after the commit (None when
        it does not wait, or when that read failed: the job is stored all the same)."""
        return await self._grouped.call_async((new, now or utcnow(), True))

    def enqueue_many(
        self, news: Sequence[NewJob], *, now: datetime | None = None
    ) -> list[tuple[Job, bool]]:
        """Store several jobs in one transaction: all of them or none."""
        now = now or utcnow()
        return self._insert([(new, now) for new in news])

    def _insert_and_place(
        self, asked: Sequence[tuple[NewJob, datetime, bool]]
    ) -> list[tuple[Job, bool, int | None]]:
        """`_insert`, then the positions of the jobs whose callers asked for them (the third
        of each item). Nothing may fail once the write is committed: a group that fails is
        written again item by item. A failed read of positions leaves them unknown."""
        made = self._insert([(new, now) for new, now, _ in asked])
        placed = [job for (job, _), (_, _, place) in zip(made, asked, strict=True) if place]
        try:
            positions = self.positions(placed)
        except Exception:
            log.warning("positions of %d new jobs could not be read", len(placed), exc_info=True)
            positions = {}
        return [(job, created, positions.get(job.id)) for job, created in made]

    def _insert(self, news: Sequence[tuple[NewJob, datetime]]) -> list[tuple[Job, bool]]:
        """Insert in one transaction the jobs that have no twin under their idempotency key."""
        try:
            return self._insert_once(news)
        except IntegrityError:
            # Another client inserted the same idempotency key at the same moment: its job wins.
            return self._insert_once(news)

    def _insert_once(self, news: Sequence[tuple[NewJob, datetime]]) -> list[tuple[Job, bool]]:
        """One try of `_insert`: a few statements, however many jobs there are."""
        with write_transaction(self.engine) as conn:
            known = self._by_idempotency_keys(conn, {n.idempotency_key for n, _ in news})
            fresh = _without_twins(news, known)
            self._check_inputs(conn, fresh)
            for queue, count in Counter(new.queue for new, _ in fresh).items():
                self._check_room(conn, queue, count)
            made = iter(self._insert_fresh(conn, fresh))
            out: list[tuple[Job, bool]] = []
            jobs_by_key = {key: job for key, (job, _) in known.items()}
            for new, _ in news:
                key = new.idempotency_key
                if key is not None and key in jobs_by_key:
                    out.append((jobs_by_key[key], False))
                    continue
                job = next(made)
                if key is not None:
                    jobs_by_key[key] = job
                out.append((job, True))
            queues = {job.queue for job, created in out if created and job.status == QUEUED}
            if self.is_postgres:
                for queue in queues:
                    conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, queue)))
        return out

    def _insert_fresh(self, conn: Connection, news: list[tuple[NewJob, datetime]]) -> list[Job]:
        """The INSERTs of new jobs, their queued or scheduled events and their input artifacts:
        one statement each for all the jobs."""
        if not news:
            return []
        values = [self._row_values(new, now) for new, now in news]
        made = [job_from_row(row) for row in conn.execute(INSERT_JOBS, values)]
        events, inputs = [], []
        for job, (new, now) in zip(made, news, strict=True):
            data: JSON = {"queue": job.queue, "priority": job.priority}
            if job.status == SCHEDULED:
                data["run_at"] = job.run_at.isoformat()
            events.append({"job_id": job.id, "type": job.status.value, "at": now, "data": data})
            inputs += artifact_rows(job.id, new.input_artifacts, now)
        conn.execute(INSERT_EVENT, events)
        if inputs:
            conn.execute(INSERT_ARTIFACT, inputs)
        return made

    def _row_values(self, new: NewJob, now: datetime) -> dict[str, Any]:
        """The columns of a new job's row."""
        run_at = new.run_at or now
        return {
            "id": uuid7(),
            "operation": new.operation,
            "queue": new.queue,
            "params": new.params,
            "status": SCHEDULED if run_at > now else QUEUED,
            "priority": int(new.priority),
            "attempt": 0,
            "max_attempts": new.max_attempts or self.default_max_attempts,
            "timeout": new.timeout,
            "run_at": run_at,
            "idempotency_key": new.idempotency_key,
            "batch_id": new.batch_id,
            "owner": new.owner,
            "created_at": now,
        }

    def _by_idempotency_keys(
        self, conn: Connection, keys: set[str | None]
    ) -> dict[str, tuple[Job, tuple[Artifact, ...]]]:
        """The jobs stored under any of `keys`, with their input files, by key."""
        wanted = [key for key in keys if key is not None]
        if not wanted:
            return {}
        rows = conn.execute(select(jobs).where(jobs.c.idempotency_key.in_(wanted))).all()
        inputs: dict[UUID, list[Artifact]] = {row.id: [] for row in rows}
        if rows:
            for artifact in self.artifacts_of(conn, list(inputs)):
                if artifact.role == "input" and artifact.job_id is not None:
                    inputs[artifact.job_id].append(artifact)
        return {row.idempotency_key: (job_from_row(row), tuple(inputs[row.id])) for row in rows}

    def _check_inputs(self, conn: Connection, news: list[tuple[NewJob, datetime]]) -> None:
        """Refuse jobs whose input files were removed since they were stored (their last job
        deleted meanwhile); the others' stay stored until the jobs are committed."""
        sha256s = {a.sha256 for new, _ in news for a in new.input_artifacts}
        gone = gone_from(conn, self.files, sha256s)
        if gone:
            raise FileRemoved(
                f"stored file {min(gone)} was removed (the last job naming it was deleted) "
                "while this job was submitted; upload the file again"
            )

    def _check_room(self, conn: Connection, queue: str, adding: int) -> None:
        """Refuse `adding` jobs when their queue would hold more than `max_queued` waiting ones."""
        if not self.max_queued:
            return
        waiting = (
            select(jobs.c.id)
            .where(jobs.c.queue == queue, status_in(*WAITING))
            .limit(self.max_queued)
            .subquery()
        )
        held = conn.execute(select(func.count()).select_from(waiting)).scalar_one()
        if held + adding > self.max_queued:
            raise QueueFull(queue, self.max_queued)

    def cancel(self, job_id: UUID, *, now: datetime | None = None) -> Job:
        """Cancel a waiting or running job; a running one's worker stops it at its next heartbeat."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_([QUEUED, SCHEDULED, RUNNING]))
                .values(status=JobState.CANCELLED.value, finished_at=now, lease_expires_at=None)
                .returning(*jobs.c)
            ).first()
            if row is None:
                self._refuse(conn, job_id, "cancelled", "queued, scheduled or running")
            assert row is not None
            add_event(conn, job_id, JobState.CANCELLED.value, now, {"by": "request"})
        return job_from_row(row)

    def retry(self, job_id: UUID, *, now: datetime | None = None) -> Job:
        """Queue a failed or cancelled job again, with a fresh set of attempts.

        Attempt numbers go on from where they were (3 attempts of 3 become 3 of 6, then 6 of
        9): the number is the fence of an outcome, and a worker still running a cancelled
        attempt must not complete the attempt that the retry starts.
        """
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status.in_([JobState.FAILED.value, JobState.CANCELLED.value]),
                )
                .values(
                    status=QUEUED,
                    max_attempts=jobs.c.attempt + jobs.c.max_attempts - jobs.c.attempt_base,
                    attempt_base=jobs.c.attempt,
                    run_at=now,
                    finished_at=None,
                    started_at=None,
                    worker_id=None,
                    progress=None,
                    progress_message=None,
                    result=None,
                    error=None,
                )
                .returning(*jobs.c)
            ).first()
            if row is None:
                self._refuse(conn, job_id, "retried", "failed or cancelled")
            assert row is not None
            add_event(conn, job_id, QUEUED, now, {"by": "retry"})
            if self.is_postgres:
                conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, row.queue)))
        return job_from_row(row)

    def _refuse(self, conn: Connection, job_id: UUID, action: str, allowed: str) -> None:
        """Raise NotFound or Conflict for an action that matched no row."""
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if status is None:
            raise NotFound(f"job {job_id} does not exist (or was pruned)")
        raise Conflict(f"job {job_id} is {status}; only {allowed} jobs can be {action}")

    def delete(self, job_id: UUID) -> list[Artifact]:
        """Delete a finished job with its timeline; return its artifacts, whose bytes may now go."""
        with write_transaction(self.engine) as conn:
            # Locked until the delete: a retry committed in between must not see it go.
            status = conn.execute(
                select(jobs.c.status).where(jobs.c.id == job_id).with_for_update()
            ).scalar()
            if status is None:
                raise NotFound(f"job {job_id} does not exist (or was pruned)")
            if status not in FINISHED:
                raise Conflict(f"job {job_id} is {status}; cancel it first, then delete it")
            return self._delete(conn, [job_id])

    def prune(
        self, older_than: timedelta, *, now: datetime | None = None, batch: int = 1000
    ) -> list[Artifact]:
        """Delete jobs finished more than `older_than` ago, in batches; return their artifacts."""
        cutoff = (now or utcnow()) - older_than
        removed: list[Artifact] = []
        while True:
            with write_transaction(self.engine) as conn:
                ids = list(
                    conn.execute(
                        select(jobs.c.id)
                        .where(status_in(*FINISHED), jobs.c.finished_at < cutoff)
                        .limit(batch)
                    ).scalars()
                )
                removed.extend(self._delete(conn, ids))
            if len(ids) < batch:
                return removed

    def forget_files(self, sha256s: Iterable[str], *, stored_before: float | None = None) -> int:
        """Remove the stored bytes of the files no job names any more (after a delete or a
        prune, or of an upload whose job was not made); return how many went. With
        `stored_before` (a Unix time), only those last stored before it (the sweep of unused
        files: bytes stored again since belong to a job about to name them).

        Each is checked and removed under its exclusive lock, so a job that names the same
        bytes meanwhile either keeps them or finds them gone when it commits (files.py).
        """
        if self.files is None:
            raise RuntimeError("this store was made without files=storage; it removes no files")
        wanted = sorted(set(sha256s))
        gone = 0
        for start in range(0, len(wanted), REMOVE_BATCH):
            batch = wanted[start : start + REMOVE_BATCH]
            with write_transaction(self.engine) as conn:
                lock_files(conn, batch, exclusive=True)
                keep = named(conn, batch)
                for sha256 in batch:
                    if sha256 in keep or not _stored_before(self.files, sha256, stored_before):
                        continue
                    gone += self.files.delete(sha256)
        return gone

    def _delete(self, conn: Connection, ids: list[UUID]) -> list[Artifact]:
        """Delete jobs, their events and their artifact rows."""
        if not ids:
            return []
        gone = self.artifacts_of(conn, ids)
        conn.execute(delete(job_events).where(job_events.c.job_id.in_(ids)))
        conn.execute(delete(artifacts).where(artifacts.c.job_id.in_(ids)))
        conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        return gone


def _stored_before(files: StoredFiles, sha256: str, moment: float | None) -> bool:
    """True when the bytes were last stored before `moment` (always without one)."""
    if moment is None:
        return True
    stored = files.stored_at(sha256)
    return stored is not None and stored < moment


def _without_twins(
    news: Sequence[tuple[NewJob, datetime]], known: dict[str, tuple[Job, tuple[Artifact, ...]]]
) -> list[tuple[NewJob, datetime]]:
    """The new jobs to insert: not those whose idempotency key names a stored job, nor those
    whose key an earlier one of `news` has (a key given twice makes one job). A key that comes
    with another request than the one it was first given with is refused."""
    asked = {key: _request_of(job, inputs) for key, (job, inputs) in known.items()}
    fresh: list[tuple[NewJob, datetime]] = []
    for new, now in news:
        key, request = new.idempotency_key, _request_of(new, new.input_artifacts)
        if key is None or key not in asked:
            fresh.append((new, now))
            if key is not None:
                asked[key] = request
        elif asked[key] != request:
            raise IdempotencyKeyReused(
                f"the Idempotency-Key {key!r} names a job made from another request "
                "(operation, params, queue, priority or input file differ); send this request "
                "with a new key"
            )
    return fresh


def _request_of(job: Job | NewJob, inputs: Sequence[Artifact]) -> tuple[Any, ...]:
    """What an Idempotency-Key stands for: the same key must come with the same operation,
    params, queue, priority and input files (when it runs is left out: a retried request with
    a delay asks for the same job)."""
    return (
        job.operation,
        job.params,
        job.queue,
        int(job.priority),
        sorted(artifact.sha256 for artifact in inputs),
    )
