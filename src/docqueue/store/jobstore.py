"""JobStore: the only writer of job state. Every transition is one conditional UPDATE."""

from __future__ import annotations

import json
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
    func,
    literal,
    select,
    update,
)

from docqueue.models import (
    JSON,
    Artifact,
    Cancelled,
    Completion,
    ErrorInfo,
    Failed,
    Job,
    JobState,
    RetryPolicy,
    Succeeded,
    utcnow,
)
from docqueue.settings import Settings
from docqueue.store import pgbatch
from docqueue.store.engine import make_engine, write_transaction
from docqueue.store.files import StoredFiles, gone_from
from docqueue.store.requests import JobRequests
from docqueue.store.rows import job_from_row
from docqueue.store.tables import WAITING, jobs, status_in
from docqueue.store.writes import add_artifacts, add_event, add_events

QUEUED, SCHEDULED, RUNNING = JobState.QUEUED.value, JobState.SCHEDULED.value, JobState.RUNNING.value
Held = tuple[UUID, int]


#: Success of one held attempt on SQLite, run as an executemany over a batch of completions.
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


def _claim_order(rows: Sequence[Any]) -> list[Job]:
    """Leased rows as jobs, highest priority first, then oldest."""
    return sorted((job_from_row(row) for row in rows), key=lambda j: (-j.priority, j.run_at))


def _artifacts(completion: Completion) -> tuple[Artifact, ...]:
    """The output artifacts of a successful completion."""
    assert isinstance(completion.outcome, Succeeded)
    return completion.outcome.artifacts


def _lost_outputs(completion: Completion, gone: set[str]) -> list[str]:
    """The names of the outputs of a successful completion that are among the removed `gone`."""
    outcome = completion.outcome
    if not isinstance(outcome, Succeeded):
        return []
    return [a.name for a in outcome.artifacts if a.sha256 in gone]


class JobStore(JobRequests):
    """Enqueues, claims, completes, retries, cancels and prunes jobs, on SQLite or PostgreSQL."""

    def __init__(
        self,
        engine: Engine,
        *,
        retry_policy: RetryPolicy | None = None,
        default_max_attempts: int = 3,
        max_queued: int = 0,
        files: StoredFiles | None = None,
    ) -> None:
        super().__init__(
            engine, default_max_attempts=default_max_attempts, max_queued=max_queued, files=files
        )
        self.retry_policy = retry_policy or RetryPolicy()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JobStore:
        """A store on a fresh engine for `url`."""
        return cls(make_engine(url), **options)

    @classmethod
    def from_settings(cls, settings: Settings, files: StoredFiles | None = None) -> JobStore:
        """The store the settings describe, with their retry and queue-size rules; `files` is
        the storage its jobs' files are in (see JobRequests.files)."""
        return cls.from_url(
            settings.resolved_database_url,
            retry_policy=RetryPolicy(settings.retry_base_delay, settings.retry_max_delay),
            default_max_attempts=settings.max_attempts,
            max_queued=settings.max_queued,
            files=files,
        )

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
            rooms = {}
            for queue in queues:
                room = self._room(conn, queue, limit, (queue_limits or {}).get(queue))
                if room > 0:
                    rooms[queue] = room
            return states, self._claim_from(conn, rooms, limit, worker_id, lease_seconds, now)

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
            .where(status_in(*WAITING), jobs.c.queue == queue, jobs.c.run_at <= now)
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
            select(func.count()).where(status_in(RUNNING), jobs.c.queue == queue)
        ).scalar_one()
        return min(limit, queue_limit - running)

    def _claim_from(
        self,
        conn: Connection,
        rooms: dict[str, int],
        limit: int,
        worker_id: str,
        lease_seconds: float,
        now: datetime,
    ) -> list[Job]:
        """Lease up to `limit` jobs, at most `rooms[queue]` from each queue, best first."""
        if self.is_postgres and len(rooms) == 1:  # the usual case: one statement in all
            [(queue, room)] = rooms.items()
            rows = pgbatch.lease(conn, worker_id, lease_seconds, now, queue=queue, room=room)
            return _claim_order(rows)
        candidates: list[Any] = []
        for queue, room in rooms.items():
            candidates.extend(conn.execute(self._head(queue, room, now)).all())
        candidates.sort(key=lambda row: (-row.priority, row.run_at, row.id))
        ids = [row.id for row in candidates[:limit]]
        return self._lease(conn, ids, worker_id, lease_seconds, now)

    def _lease(
        self, conn: Connection, ids: list[UUID], worker_id: str, lease_seconds: float, now: datetime
    ) -> list[Job]:
        """Move the given waiting jobs to running under a lease, counting the attempt."""
        if not ids:
            return []
        if self.is_postgres:
            return _claim_order(pgbatch.lease(conn, worker_id, lease_seconds, now, ids=ids))
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
        leased = _claim_order(rows)
        add_events(
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
                    add_event(conn, job_id, "progress", now, data)

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
        recordable = []
        for c, lost in self._check_outputs(conn, completions):
            if lost:
                done[(c.job_id, c.attempt)] = self._run_again(conn, c, lost, now)
            else:
                recordable.append(c)
        wins = [c for c in recordable if isinstance(c.outcome, Succeeded)]
        if wins:
            ours = self._succeed(conn, wins, now)
            add_artifacts(conn, [(c.job_id, _artifacts(c)) for c in ours], now)
            done.update({(c.job_id, c.attempt): None for c in wins})
            done.update({(c.job_id, c.attempt): JobState.SUCCEEDED for c in ours})
        for c in recordable:
            if not isinstance(c.outcome, Succeeded):
                done[(c.job_id, c.attempt)] = self._complete_one(conn, c, now)
        return [done[(c.job_id, c.attempt)] for c in completions]

    def _check_outputs(
        self, conn: Connection, completions: Sequence[Completion]
    ) -> list[tuple[Completion, list[str]]]:
        """Each completion with the names of its outputs that were removed from storage
        meanwhile (another job with the same bytes deleted, see files.py); the outputs that
        are there stay stored until this commit names them."""
        outputs = {
            a.sha256 for c in completions if isinstance(c.outcome, Succeeded) for a in _artifacts(c)
        }
        gone = gone_from(conn, self.files, outputs)
        return [(c, _lost_outputs(c, gone) if gone else []) for c in completions]

    def _run_again(
        self, conn: Connection, c: Completion, lost: list[str], now: datetime
    ) -> JobState | None:
        """A success whose outputs are gone: back to the queue, the attempt not counted (the
        job did not fail), so that the next run makes them anew."""
        message = (
            f"output {lost[0]!r} was removed from storage before the job could record it (a "
            "job with the same bytes was deleted meanwhile); the job runs again to make it anew"
        )
        error = ErrorInfo("OutputRemoved", message).as_json()
        if not self._give_back(conn, c.job_id, c.attempt, now, error=error):
            return None
        return JobState.QUEUED

    def _succeed(
        self, conn: Connection, wins: Sequence[Completion], now: datetime
    ) -> list[Completion]:
        """Mark the successes whose attempt still holds its job, with their timeline entries;
        those are returned."""
        if self.is_postgres:
            batch = [(c.job_id, c.attempt, json.dumps(_result(c))) for c in wins]
            held = pgbatch.succeed(conn, batch, now)
            return [c for c in wins if (c.job_id, c.attempt) in held]
        # SQLite runs in-process: statements cost no round trips, so plain ones serve.
        running = conn.execute(
            select(jobs.c.id, jobs.c.attempt).where(
                jobs.c.id.in_([c.job_id for c in wins]), status_in(RUNNING)
            )
        )
        held = {(row.id, row.attempt) for row in running}
        ours = [c for c in wins if (c.job_id, c.attempt) in held]
        if ours:
            conn.execute(
                SUCCEED,
                [
                    {"b_id": c.job_id, "b_attempt": c.attempt, "b_result": _result(c), "b_now": now}
                    for c in ours
                ],
            )
            entries = [(c.job_id, JobState.SUCCEEDED.value, {"attempt": c.attempt}) for c in ours]
            add_events(conn, entries, now)
        return ours

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
            add_artifacts(conn, [(c.job_id, outcome.artifacts)], now)
        add_event(conn, c.job_id, row.status, now, {"attempt": c.attempt})
        return JobState(row.status)

    def _fail(
        self, conn: Connection, job_id: UUID, attempt: int, outcome: Failed, now: datetime
    ) -> JobState | None:
        """Schedule a retry with backoff, or fail for good when permanent or out of attempts."""
        # Backoff counts the attempts since the last manual retry, which grants a fresh set.
        base = conn.execute(select(jobs.c.attempt_base).where(jobs.c.id == job_id)).scalar()
        delay = self.retry_policy.delay(attempt - (base or 0))
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
            add_event(conn, job_id, "retry_scheduled", now, data)
        else:
            add_event(conn, job_id, JobState.FAILED.value, now, data)
        return JobState(row.status)

    def release(self, held: Iterable[Held], *, now: datetime | None = None) -> int:
        """Give running jobs back to the queue without counting the attempt (graceful stop)."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            return sum(self._give_back(conn, job_id, attempt, now) for job_id, attempt in held)

    def _give_back(
        self,
        conn: Connection,
        job_id: UUID,
        attempt: int,
        now: datetime,
        error: JSON | None = None,
    ) -> bool:
        """Queue a running attempt's job again without counting the attempt; False when the
        attempt no longer holds it. `error` says why, on the job and its `released` event."""
        values: JSON = {"error": error} if error is not None else {}
        changed = conn.execute(
            self._running(job_id, attempt).values(
                status=QUEUED,
                attempt=attempt - 1,
                worker_id=None,
                lease_expires_at=None,
                started_at=None,
                **values,
            )
        ).rowcount
        if not changed:
            return False
        data: JSON = {"attempt": attempt}
        if error is not None:
            data["error"] = {"type": error["type"], "message": error["message"]}
        add_event(conn, job_id, "released", now, data)
        return True

    def reap_expired(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Take back jobs whose worker stopped renewing the lease; each costs one attempt."""
        now = now or utcnow()
        with write_transaction(self.engine) as conn:
            expired = conn.execute(
                select(jobs.c.id, jobs.c.attempt, jobs.c.worker_id)
                .where(status_in(RUNNING), jobs.c.lease_expires_at < now)
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
