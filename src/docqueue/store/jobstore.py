"""JobStore: the only writer of job state. Every transition is one conditional UPDATE."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from uuid_utils.compat import uuid7

from docqueue.errors import Conflict, NotFound, QueueFull
from docqueue.models import (
    JSON,
    Artifact,
    Cancelled,
    Completion,
    ErrorInfo,
    Failed,
    Job,
    JobState,
    NewJob,
    RetryPolicy,
    Succeeded,
    utcnow,
)
from docqueue.settings import Settings
from docqueue.store.engine import NOTIFY_CHANNEL, make_engine, write_transaction
from docqueue.store.reader import WAITING, JobReader
from docqueue.store.rows import job_from_row
from docqueue.store.tables import artifacts, job_events, jobs

QUEUED, SCHEDULED, RUNNING = JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.RUNNING.value
FINISHED = [state.value for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)]
Held = tuple[UUID, int]


#: Success of one held attempt, run as an executemany over a batch of completions.
SUCCEED = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("b_id"),
        jobs.c.attempt == bindparam("b_attempt"),
        jobs.c.status == RUNNING,
    )
    .values(
        status=JobState.SUCCEEDED.value,
        result=bindparam("b_result"),
        progress=1.0,
        lease_expires_at=None,
        finished_at=bindparam("b_now"),
    )
)


def _result(completion: Completion) -> JSON:
    """The result of a successful completion."""
    assert isinstance(completion.outcome, Succeeded)
    return completion.outcome.result


def _artifacts(completion: Completion) -> tuple[Artifact, ...]:
    """The output artifacts of a successful completion."""
    assert isinstance(completion.outcome, Succeeded)
    return completion.outcome.artifacts


class JobStore(JobReader):
    """Enqueues, claims, completes, retries, cancels and prunes jobs, on SQLite or PostgreSQL."""

    def __init__(
        self,
        engine: Engine,
        *,
        retry_policy: RetryPolicy | None = None,
        default_max_attempts: int = 3,
        max_queued: int = 0,
    ) -> None:
        super().__init__(engine)
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_max_attempts = default_max_attempts
        self.max_queued = max_queued

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JobStore:
        """A store on a fresh engine for `url`."""
        return cls(make_engine(url), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store the settings describe, with their retry and queue-size rules."""
        return cls.from_url(
            settings.resolved_database_url,
            retry_policy=RetryPolicy(settings.retry_base_delay, settings.retry_max_delay),
            default_max_attempts=settings.max_attempts,
            max_queued=settings.max_queued,
        )

    # -- enqueue -----------------------------------------------------------------------------

    def enqueue(self, new: NewJob, *, now: datetime | None = None) -> tuple[Job, bool]:
        """Store a new job; with a known idempotency key, return the existing job and False."""
        jobs_ = self.enqueue_many([new], now=now)
        return jobs_[0]

    def enqueue_many(
        self, news: Sequence[NewJob], *, now: datetime | None = None
    ) -> list[tuple[Job, bool]]:
        """Store several jobs in one transaction: all of them or none."""
        now = now or utcnow()
        try:
            return self._insert(news, now)
        except IntegrityError:
            # Another client inserted the same idempotency key at the same moment: its job wins.
            return self._insert(news, now)

    def _insert(self, news: Sequence[NewJob], now: datetime) -> list[tuple[Job, bool]]:
        """Insert the jobs that have no twin under their idempotency key."""
        out: list[tuple[Job, bool]] = []
        with write_transaction(self.engine) as conn:
            for new in news:
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
        row = conn.execute(
            insert(jobs)
            .values(
                id=uuid7(),
                operation=new.operation,
                queue=new.queue,
                params=new.params,
                status=status,
                priority=int(new.priority),
                attempt=0,
                max_attempts=new.max_attempts or self.default_max_attempts,
                timeout=new.timeout,
                run_at=run_at,
                idempotency_key=new.idempotency_key,
                batch_id=new.batch_id,
                owner=new.owner,
                created_at=now,
            )
            .returning(*jobs.c)
        ).one()
        job = job_from_row(row)
        data: JSON = {"queue": job.queue, "priority": job.priority}
        if status == SCHEDULED:
            data["run_at"] = run_at.isoformat()
        self._event(conn, job.id, status, now, data)
        self._record_artifacts(conn, job.id, new.input_artifacts, now)
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
            .where(jobs.c.queue == queue, jobs.c.status.in_(WAITING))
            .limit(self.max_queued)
            .subquery()
        )
        if conn.execute(select(func.count()).select_from(waiting)).scalar_one() >= self.max_queued:
            raise QueueFull(queue, self.max_queued)

    # -- claim -------------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        *,
        lease_seconds: float,
        queue_limits: dict[str, int] | None = None,
        now: datetime | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs from `queues`, highest priority first, then oldest."""
        return self.complete_and_claim(
            [],
            worker_id,
            queues,
            limit,
            lease_seconds=lease_seconds,
            queue_limits=queue_limits,
            now=now,
        )[1]

    def complete_and_claim(
        self,
        completions: Sequence[Completion],
        worker_id: str,
        queues: Sequence[str],
        limit: int,
        *,
        lease_seconds: float,
        queue_limits: dict[str, int] | None = None,
        now: datetime | None = None,
    ) -> tuple[list[JobState | None], list[Job]]:
        """Record outcomes and lease the next jobs in one transaction (one commit, not two)."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            states = self._complete_all(conn, completions, now)
            if limit <= 0:
                return states, []
            candidates: list[Any] = []
            for queue in queues:
                room = self._room(conn, queue, limit, (queue_limits or {}).get(queue))
                if room > 0:
                    candidates.extend(conn.execute(self._head(queue, room, now)).all())
            candidates.sort(key=lambda row: (-row.priority, row.run_at, row.id))
            ids = [row.id for row in candidates[:limit]]
            return states, self._lease(conn, ids, worker_id, lease_seconds, now)

    def claim_job(
        self, job_id: UUID, worker_id: str, *, lease_seconds: float, now: datetime | None = None
    ) -> Job | None:
        """Lease one given job if it is claimable (dispatchers that deliver ids use this)."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            leased = self._lease(conn, [job_id], worker_id, lease_seconds, now)
        return leased[0] if leased else None

    def _head(self, queue: str, room: int, now: datetime) -> Any:
        """The first `room` claimable jobs of `queue`, read from ix_jobs_claim."""
        query = (
            select(jobs.c.id, jobs.c.priority, jobs.c.run_at)
            .where(jobs.c.status.in_(WAITING), jobs.c.queue == queue, jobs.c.run_at <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(room)
        )
        return query.with_for_update(skip_locked=True) if self.is_postgres else query

    def _room(self, conn: Connection, queue: str, limit: int, queue_limit: int | None) -> int:
        """How many more jobs of `queue` may start now under its concurrency limit."""
        if queue_limit is None:
            return limit
        if self.is_postgres:
            # Serialise claimers of a limited queue so two of them cannot both see room for one.
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"docqueue:{queue}"))))
        running = conn.execute(
            select(func.count()).where(jobs.c.status == RUNNING, jobs.c.queue == queue)
        ).scalar_one()
        return min(limit, queue_limit - running)

    def _lease(
        self, conn: Connection, ids: list[UUID], worker_id: str, lease_seconds: float, now: datetime
    ) -> list[Job]:
        """Move the given queued jobs to running under a lease, counting the attempt."""
        if not ids:
            return []
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.status.in_(WAITING), jobs.c.run_at <= now)
            .values(
                status=RUNNING,
                attempt=jobs.c.attempt + 1,
                worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now,
                progress=None,
                progress_message=None,
            )
            .returning(*jobs.c)
        ).all()
        leased = sorted((job_from_row(row) for row in rows), key=lambda j: (-j.priority, j.run_at))
        self._events(
            conn,
            [(j.id, "running", {"worker_id": worker_id, "attempt": j.attempt}) for j in leased],
            now,
        )
        return leased

    # -- running jobs ------------------------------------------------------------------------

    def heartbeat(
        self,
        worker_id: str,
        held: Iterable[Held],
        *,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[UUID]:
        """Renew the leases of `held`; return the ids this worker no longer holds (cancelled, reaped)."""
        now = now or utcnow()
        held = list(held)
        if not held:
            return []
        with write_transaction(self.engine) as conn:
            kept = conn.execute(
                update(jobs)
                .where(
                    jobs.c.worker_id == worker_id,
                    jobs.c.status == RUNNING,
                    jobs.c.id.in_([job_id for job_id, _ in held]),
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(jobs.c.id, jobs.c.attempt)
            ).all()
        still = {(row.id, row.attempt) for row in kept}
        return [job_id for job_id, attempt in held if (job_id, attempt) not in still]

    def report_progress(
        self,
        updates: Sequence[tuple[UUID, int, float, str | None]],
        *,
        now: datetime | None = None,
    ) -> None:
        """Record progress of running attempts (job id, attempt, fraction, message)."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            for job_id, attempt, fraction, message in updates:
                changed = conn.execute(
                    self._running(job_id, attempt).values(
                        progress=fraction, progress_message=message
                    )
                ).rowcount
                if changed:
                    data: JSON = {"progress": fraction, "message": message}
                    self._event(conn, job_id, "progress", now, data)

    def complete(
        self, completions: Sequence[Completion], *, now: datetime | None = None
    ) -> list[JobState | None]:
        """Record outcomes in one transaction; None where the attempt no longer holds its job."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            return self._complete_all(conn, completions, now)

    def _complete_all(
        self, conn: Connection, completions: Sequence[Completion], now: datetime
    ) -> list[JobState | None]:
        """Successes in three statements for the whole batch; other outcomes one by one."""
        done: dict[Held, JobState | None] = {}
        wins = [c for c in completions if isinstance(c.outcome, Succeeded)]
        if wins:
            held = self._still_held(conn, [(c.job_id, c.attempt) for c in wins])
            ours = [c for c in wins if (c.job_id, c.attempt) in held]
            self._succeed(conn, ours, now)
            done.update({(c.job_id, c.attempt): None for c in wins})
            done.update({(c.job_id, c.attempt): JobState.SUCCEEDED for c in ours})
        for c in completions:
            if not isinstance(c.outcome, Succeeded):
                done[(c.job_id, c.attempt)] = self._complete_one(conn, c, now)
        return [done[(c.job_id, c.attempt)] for c in completions]

    def _still_held(self, conn: Connection, pairs: Sequence[Held]) -> set[Held]:
        """Which (job, attempt) pairs still run; on PostgreSQL their rows stay locked until commit."""
        query = select(jobs.c.id, jobs.c.attempt).where(
            jobs.c.id.in_([job_id for job_id, _ in pairs]), jobs.c.status == RUNNING
        )
        if self.is_postgres:
            query = query.with_for_update()
        running = {(row.id, row.attempt) for row in conn.execute(query)}
        return {pair for pair in pairs if pair in running}

    def _succeed(self, conn: Connection, wins: Sequence[Completion], now: datetime) -> None:
        """Mark held jobs succeeded with one executemany, then their artifacts and events."""
        if not wins:
            return
        conn.execute(
            SUCCEED,
            [
                {"b_id": c.job_id, "b_attempt": c.attempt, "b_result": _result(c), "b_now": now}
                for c in wins
            ],
        )
        for c in wins:
            self._record_artifacts(conn, c.job_id, _artifacts(c), now)
        entries = [(c.job_id, JobState.SUCCEEDED.value, {"attempt": c.attempt}) for c in wins]
        self._events(conn, entries, now)

    def _running(self, job_id: UUID, attempt: int) -> Any:
        """An UPDATE that only touches the job while `attempt` still runs it (the fence)."""
        return update(jobs).where(
            jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.status == RUNNING
        )

    def _complete_one(self, conn: Connection, c: Completion, now: datetime) -> JobState | None:
        """One fenced transition out of running."""
        done: JSON = {"lease_expires_at": None, "finished_at": now}
        outcome = c.outcome
        if isinstance(outcome, Succeeded):
            values: JSON = {**done, "status": JobState.SUCCEEDED.value, "result": outcome.result}
            values.update(progress=1.0)
        elif isinstance(outcome, Cancelled):
            values = {**done, "status": JobState.CANCELLED.value}
        else:
            return self._fail(conn, c.job_id, c.attempt, outcome, now)
        row = conn.execute(
            self._running(c.job_id, c.attempt).values(**values).returning(jobs.c.status)
        ).first()
        if row is None:
            return None
        if isinstance(outcome, Succeeded):
            self._record_artifacts(conn, c.job_id, outcome.artifacts, now)
        self._event(conn, c.job_id, row.status, now, {"attempt": c.attempt})
        return JobState(row.status)

    def _fail(
        self, conn: Connection, job_id: UUID, attempt: int, outcome: Failed, now: datetime
    ) -> JobState | None:
        """Schedule a retry with backoff, or fail for good when permanent or out of attempts."""
        delay = self.retry_policy.delay(attempt)
        retry = and_(jobs.c.attempt < jobs.c.max_attempts, literal(not outcome.permanent))
        row = conn.execute(
            self._running(job_id, attempt)
            .values(
                status=case((retry, SCHEDULED), else_=JobState.FAILED.value),
                run_at=case((retry, now + timedelta(seconds=delay)), else_=jobs.c.run_at),
                finished_at=case((retry, None), else_=now),
                lease_expires_at=None,
                error=outcome.error.as_json(),
            )
            .returning(jobs.c.status, jobs.c.max_attempts, jobs.c.run_at)
        ).first()
        if row is None:
            return None
        data: JSON = {"attempt": attempt, "max_attempts": row.max_attempts}
        data["error"] = {"type": outcome.error.type, "message": outcome.error.message}
        if row.status == SCHEDULED:
            data["run_at"] = row.run_at.isoformat()
            self._event(conn, job_id, "retry_scheduled", now, data)
        else:
            self._event(conn, job_id, JobState.FAILED.value, now, data)
        return JobState(row.status)

    def release(self, held: Iterable[Held], *, now: datetime | None = None) -> int:
        """Give running jobs back to the queue without counting the attempt (graceful stop)."""
        now = now or utcnow()
        released = 0
        with write_transaction(self.engine) as conn:
            for job_id, attempt in held:
                changed = conn.execute(
                    self._running(job_id, attempt).values(
                        status=QUEUED,
                        attempt=attempt - 1,
                        worker_id=None,
                        lease_expires_at=None,
                        started_at=None,
                    )
                ).rowcount
                if changed:
                    released += 1
                    self._event(conn, job_id, "released", now, {"attempt": attempt})
        return released

    def reap_expired(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Take back jobs whose worker stopped renewing the lease; each costs one attempt."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            expired = conn.execute(
                select(jobs.c.id, jobs.c.attempt, jobs.c.worker_id)
                .where(jobs.c.status == RUNNING, jobs.c.lease_expires_at < now)
                .limit(limit)
            ).all()
            for row in expired:
                error = ErrorInfo(
                    "LeaseExpired",
                    f"worker {row.worker_id} stopped renewing its lease on attempt {row.attempt} "
                    "(it crashed, was killed or lost the database)",
                )
                self._fail(conn, row.id, row.attempt, Failed(error), now)
        return len(expired)

    # -- requests from people ----------------------------------------------------------------

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
            self._event(conn, job_id, JobState.CANCELLED.value, now, {"by": "request"})
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
            self._event(conn, job_id, QUEUED, now, {"by": "retry"})
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
                        .where(jobs.c.status.in_(FINISHED), jobs.c.finished_at < cutoff)
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

    # -- events and artifacts ----------------------------------------------------------------

    def _event(self, conn: Connection, job_id: UUID, type_: str, at: datetime, data: JSON) -> None:
        """Append one entry to a job's timeline, in the caller's transaction."""
        conn.execute(insert(job_events).values(job_id=job_id, type=type_, at=at, data=data))

    def _events(
        self, conn: Connection, entries: Sequence[tuple[UUID, str, JSON]], at: datetime
    ) -> None:
        """Append several timeline entries with one statement."""
        if entries:
            conn.execute(
                insert(job_events),
                [{"job_id": j, "type": t, "at": at, "data": d} for j, t, d in entries],
            )

    def _record_artifacts(
        self, conn: Connection, job_id: UUID, items: Sequence[Artifact], now: datetime
    ) -> None:
        """Rows for the files a job read or wrote."""
        if items:
            conn.execute(
                insert(artifacts),
                [
                    {
                        "job_id": job_id,
                        "sha256": a.sha256,
                        "size": a.size,
                        "media_type": a.media_type,
                        "name": a.name,
                        "role": a.role,
                        "created_at": now,
                    }
                    for a in items
                ],
            )
