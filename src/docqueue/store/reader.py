"""JobReader: the read side of the store (jobs, timelines, artifacts, counts); it writes nothing."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, SmallInteger, and_, bindparam, func, or_, select

from docqueue.errors import InputError, NotFound
from docqueue.models import Artifact, Job, JobEvent, JobState, QueueStats, utcnow
from docqueue.store.engine import read_transaction
from docqueue.store.rows import artifact_from_row, event_from_row, job_from_row
from docqueue.store.tables import (
    FINISHED,
    WAITING,
    UTCDateTime,
    artifacts,
    job_events,
    jobs,
    status_in,
)

#: Positions in a queue are counted up to this; a deeper queue reports this number.
POSITION_LIMIT = 1000


def _position_query() -> Any:
    """Waiting jobs of a queue claimed before a given one (bound: queue, priority, run_at, id,
    now), counted up to `most`; built once, since every submission asks."""
    priority, run_at = (
        bindparam("priority", type_=SmallInteger()),
        bindparam("run_at", type_=UTCDateTime()),
    )
    ahead = or_(
        jobs.c.priority > priority,
        and_(jobs.c.priority == priority, jobs.c.run_at < run_at),
        and_(jobs.c.priority == priority, jobs.c.run_at == run_at, jobs.c.id < bindparam("id")),
    )
    ahead_ids = (
        select(jobs.c.id)
        .where(
            status_in(*WAITING),
            jobs.c.queue == bindparam("queue"),
            jobs.c.run_at <= bindparam("now", type_=UTCDateTime()),
            ahead,
        )
        .limit(bindparam("most"))
        .subquery()
    )
    return select(func.count()).select_from(ahead_ids)


POSITION = _position_query()


@dataclass(frozen=True)
class JobPage:
    """One page of a job list, newest first, and the cursor of the next page (None at the end)."""

    items: list[Job]
    next_cursor: str | None


class JobReader:
    """Read-only queries over the store, each served by an index."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def get(self, job_id: UUID) -> Job:
        """The job `job_id`, or NotFound."""
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist (or was pruned)")
        return job_from_row(row)

    def list_jobs(
        self,
        *,
        status: JobState | None = None,
        operation: str | None = None,
        queue: str | None = None,
        batch_id: UUID | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered; pass `next_cursor` back for the following page."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(status_in(status.value))
        for column, value in (
            (jobs.c.operation, operation),
            (jobs.c.queue, queue),
            (jobs.c.batch_id, batch_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if cursor:
            query = query.where(jobs.c.id < _decode_cursor(cursor))
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query).all()
        items = [job_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return JobPage(items, _encode_cursor(items[-1].id) if more and items else None)

    def pending(self, queues: Sequence[str], limit: int) -> list[Job]:
        """The next due jobs of `queues` in the order a claim would take them."""
        query = (
            select(jobs)
            .where(status_in(*WAITING), jobs.c.queue.in_(queues), jobs.c.run_at <= utcnow())
            .order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id)
            .limit(limit)
        )
        with read_transaction(self.engine) as conn:
            return [job_from_row(row) for row in conn.execute(query).all()]

    def events(self, job_id: UUID, *, after: int = 0) -> list[JobEvent]:
        """The timeline of `job_id` after event id `after`, oldest first."""
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.id > after)
                .order_by(job_events.c.id)
            ).all()
        return [event_from_row(row) for row in rows]

    def artifacts(self, job_id: UUID) -> list[Artifact]:
        """The files job `job_id` read and wrote."""
        with read_transaction(self.engine) as conn:
            return self.artifacts_of(conn, [job_id])

    def artifacts_of(self, conn: Connection, ids: Sequence[UUID]) -> list[Artifact]:
        """The artifacts of several jobs, inside the caller's transaction."""
        rows = conn.execute(
            select(artifacts).where(artifacts.c.job_id.in_(ids)).order_by(artifacts.c.id)
        ).all()
        return [artifact_from_row(row) for row in rows]

    def inputs(self, job_ids: Sequence[UUID]) -> dict[UUID, list[Artifact]]:
        """The input artifacts of several jobs, by job id (one query for a whole claim)."""
        if not job_ids:
            return {}
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(artifacts)
                .where(artifacts.c.job_id.in_(job_ids), artifacts.c.role == "input")
                .order_by(artifacts.c.id)
            ).all()
        found: dict[UUID, list[Artifact]] = {}
        for row in rows:
            found.setdefault(row.job_id, []).append(artifact_from_row(row))
        return found

    def settled(self, job_ids: Sequence[UUID]) -> set[UUID]:
        """Those of `job_ids` that have finished, or are gone (deleted, pruned): one query."""
        if not job_ids:
            return set()
        with read_transaction(self.engine) as conn:
            return set(job_ids) - _unfinished(conn, job_ids)

    def timelines(self, seen: Mapping[UUID, int]) -> tuple[set[UUID], dict[UUID, list[JobEvent]]]:
        """For several jobs at once (`seen`: job id to the last event id each has seen): those
        finished or gone, and each one's newer events, oldest first; one read of the store.

        Statuses are read before events in one snapshot, so the events of a job read as
        finished include the one that finished it.
        """
        if not seen:
            return set(), {}
        ids = list(seen)
        with read_transaction(self.engine) as conn:
            open_ = _unfinished(conn, ids)
            rows = conn.execute(
                select(job_events)
                .where(job_events.c.job_id.in_(ids), job_events.c.id > min(seen.values()))
                .order_by(job_events.c.id)
            ).all()
        newer: dict[UUID, list[JobEvent]] = {}
        for row in rows:
            event = event_from_row(row)
            if event.id > seen[event.job_id]:
                newer.setdefault(event.job_id, []).append(event)
        return set(ids) - open_, newer

    def has_due(self, queues: Sequence[str], *, now: datetime | None = None) -> bool:
        """True when a claim on `queues` would find work: a cheap read that takes no write lock."""
        query = select(jobs.c.id).where(
            status_in(*WAITING), jobs.c.queue.in_(queues), jobs.c.run_at <= (now or utcnow())
        )
        with read_transaction(self.engine) as conn:
            return conn.execute(query.limit(1)).first() is not None

    def next_due(self, queues: Sequence[str]) -> datetime | None:
        """When the first waiting job of `queues` may run (its run_at); None when none waits.
        An idle worker asks once nothing is due, to wake when a scheduled job comes due."""
        query = select(func.min(jobs.c.run_at)).where(status_in(*WAITING), jobs.c.queue.in_(queues))
        with read_transaction(self.engine) as conn:
            due: datetime | None = conn.execute(query).scalar()
        return due

    def running_since(self) -> datetime | None:
        """When the oldest attempt still running started; None when none runs. Outputs stored
        since then may be an attempt's that has yet to record them."""
        query = select(func.min(jobs.c.started_at)).where(status_in(JobState.RUNNING.value))
        with read_transaction(self.engine) as conn:
            since: datetime | None = conn.execute(query).scalar()
        return since

    def position(self, job: Job, *, most: int = POSITION_LIMIT) -> int | None:
        """How many waiting jobs of its queue will be claimed before `job`, counted up to `most`.

        None when the job is not waiting. The count stops at `most` so that answering a
        submission costs the same however deep the queue is.
        """
        return self.positions([job], most=most).get(job.id)

    def positions(self, some: Sequence[Job], *, most: int = POSITION_LIMIT) -> dict[UUID, int]:
        """The `position` of each waiting one of `some`, read in one snapshot."""
        waiting = [job for job in some if job.status.value in WAITING]
        if not waiting:
            return {}
        now = utcnow()
        with read_transaction(self.engine) as conn:
            return {
                job.id: int(
                    conn.execute(
                        POSITION,
                        {
                            "queue": job.queue,
                            "priority": job.priority,
                            "run_at": job.run_at,
                            "id": job.id,
                            "now": now,
                            "most": most,
                        },
                    ).scalar_one()
                )
                for job in waiting
            }

    def stats(self, *, now: datetime | None = None) -> QueueStats:
        """Counts per queue and state, the age of the oldest queued job, jobs finished in a minute."""
        now = now or utcnow()
        with read_transaction(self.engine) as conn:
            rows = conn.execute(
                select(jobs.c.queue, jobs.c.status, func.count()).group_by(
                    jobs.c.status, jobs.c.queue
                )
            ).all()
            oldest = conn.execute(
                select(func.min(jobs.c.run_at)).where(
                    status_in(*WAITING), jobs.c.status == JobState.QUEUED.value
                )
            ).scalar()
            recent = conn.execute(
                select(func.count()).where(
                    status_in(*FINISHED),
                    jobs.c.finished_at >= now - timedelta(minutes=1),
                )
            ).scalar_one()
        counts: dict[str, dict[str, int]] = {}
        for queue, status, count in rows:
            counts.setdefault(queue, {})[status] = count
        age = (now - _aware(oldest)).total_seconds() if oldest is not None else None
        return QueueStats(counts=counts, oldest_queued_age=age, finished_last_minute=recent)


def _aware(value: Any) -> datetime:
    """SQLite's MIN() bypasses the column type and returns text or a naive value."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _encode_cursor(job_id: UUID) -> str:
    """An opaque cursor for the page after `job_id`."""
    return base64.urlsafe_b64encode(job_id.bytes).decode().rstrip("=")


def _decode_cursor(cursor: str) -> UUID:
    """The job id inside a cursor, or a clear error for a mangled one."""
    try:
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise InputError(
            f"cursor {cursor!r} is not one this server gave out; start without one"
        ) from None


#: Those of the `ids` that exist and have not finished. Built once: building the statement at
#: each call took half of the 240 us the query costs (long-poll readers run it 10 times a second).
_UNFINISHED = select(jobs.c.id).where(
    jobs.c.id.in_(bindparam("ids", expanding=True)), jobs.c.status.not_in(FINISHED)
)


def _unfinished(conn: Connection, job_ids: Sequence[UUID]) -> set[UUID]:
    """Those of `job_ids` that exist and have not finished."""
    return set(conn.execute(_UNFINISHED, {"ids": list(job_ids)}).scalars())
