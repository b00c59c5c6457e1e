"""JobRequests: the changes clients and operators ask for: submit, cancel, retry, delete, prune."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from docqueue.errors import Conflict, NotFound, QueueFull
from docqueue.models import JSON, Artifact, Job, JobState, NewJob, utcnow
from docqueue.store.engine import NOTIFY_CHANNEL, write_transaction
from docqueue.store.group import GroupCommit
from docqueue.store.reader import JobReader
from docqueue.store.rows import job_from_row
from docqueue.store.tables import FINISHED, WAITING, artifacts, job_events, jobs, status_in
from docqueue.store.writes import add_artifacts, add_event

QUEUED, SCHEDULED, RUNNING = JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.RUNNING.value
#: Built once, as the statements of every submission are (see writes.py).
INSERT_JOB = insert(jobs).returning(*jobs.c)


class JobRequests(JobReader):
    """State changes that clients and operators ask for, apart from the workers' own."""

    def __init__(self, engine: Engine, *, default_max_attempts: int, max_queued: int) -> None:
        super().__init__(engine)
        self.default_max_attempts = default_max_attempts
        self.max_queued = max_queued
        self._grouped = GroupCommit(self._insert)

    def enqueue(self, new: NewJob, *, now: datetime | None = None) -> tuple[Job, bool]:
        """Store a new job; with a known idempotency key, return the existing job and False.

        Jobs enqueued at the same moment by other threads share its transaction (group.py).
        """
        return self._grouped((new, now or utcnow()))

    def enqueue_many(
        self, news: Sequence[NewJob], *, now: datetime | None = None
    ) -> list[tuple[Job, bool]]:
        """Store several jobs in one transaction: all of them or none."""
        now = now or utcnow()
        return self._insert([(new, now) for new in news])

    def _insert(self, news: Sequence[tuple[NewJob, datetime]]) -> list[tuple[Job, bool]]:
        """Insert in one transaction the jobs that have no twin under their idempotency key."""
        try:
            return self._insert_once(news)
        except IntegrityError:
            # Another client inserted the same idempotency key at the same moment: its job wins.
            return self._insert_once(news)

    def _insert_once(self, news: Sequence[tuple[NewJob, datetime]]) -> list[tuple[Job, bool]]:
        """One try of `_insert`."""
        out: list[tuple[Job, bool]] = []
        with write_transaction(self.engine) as conn:
            for new, now in news:
                existing = self._by_idempotency_key(conn, new.idempotency_key)
                if existing is not None:
                    out.append((existing, False))
                    continue
                self._check_room(conn, new.queue)
                out.append((self._insert_one(conn, new, now), True))
            queues = {job.queue for job, created in out if created and job.status == QUEUED}
            if self.is_postgres:
                for queue in queues:
                    conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, queue)))
        return out

    def _insert_one(self, conn: Connection, new: NewJob, now: datetime) -> Job:
        """One INSERT of the job, its queued event and its input artifacts."""
        run_at = new.run_at or now
        status = SCHEDULED if run_at > now else QUEUED
        values = {
            "id": uuid7(),
            "operation": new.operation,
            "queue": new.queue,
            "params": new.params,
            "status": status,
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
        row = conn.execute(INSERT_JOB, values).one()
        job = job_from_row(row)
        data: JSON = {"queue": job.queue, "priority": job.priority}
        if status == SCHEDULED:
            data["run_at"] = run_at.isoformat()
        add_event(conn, job.id, status, now, data)
        add_artifacts(conn, job.id, new.input_artifacts, now)
        return job

    def _by_idempotency_key(self, conn: Connection, key: str | None) -> Job | None:
        """The job stored under `key`, if any."""
        if key is None:
            return None
        row = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).first()
        return job_from_row(row) if row else None

    def _check_room(self, conn: Connection, queue: str) -> None:
        """Refuse a job when its queue already holds `max_queued` waiting ones."""
        if not self.max_queued:
            return
        waiting = (
            select(jobs.c.id)
            .where(jobs.c.queue == queue, status_in(*WAITING))
            .limit(self.max_queued)
            .subquery()
        )
        if conn.execute(select(func.count()).select_from(waiting)).scalar_one() >= self.max_queued:
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
        """Queue a failed or cancelled job again, with a fresh set of attempts."""
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
                    attempt=0,
                    run_at=now,
                    finished_at=None,
                    started_at=None,
                    worker_id=None,
                    progress=None,
                    progress_message=None,
                    result=None,
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
            status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
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

    def _delete(self, conn: Connection, ids: list[UUID]) -> list[Artifact]:
        """Delete jobs, their events and their artifact rows."""
        if not ids:
            return []
        gone = self.artifacts_of(conn, ids)
        conn.execute(delete(job_events).where(job_events.c.job_id.in_(ids)))
        conn.execute(delete(artifacts).where(artifacts.c.job_id.in_(ids)))
        conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
        return gone
