"""The store's tables, as SQLAlchemy Core objects; the migrations build exactly this schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.sql.elements import TextClause

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

#: An id column that autoincrements on both SQLite (INTEGER PRIMARY KEY) and PostgreSQL.
SerialId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps always in UTC: stored naive on SQLite, with time zone on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; SQLite compares timestamps as text, so it gets them naive."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("docqueue stores only time-zone-aware timestamps")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Hand back aware UTC timestamps whatever the database kept."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def status_in(*states: str) -> TextClause:
    """`status IN (...)` written out, never with bound values.

    SQLite uses a partial index only when a query repeats the index's condition word for word,
    so the indexes below and the queries that should use them both take their condition here.
    """
    if len(states) == 1:
        return text(f"status = '{states[0]}'")
    return text("status IN (" + ", ".join(f"'{state}'" for state in states) + ")")


#: The jobs a claim may take (scheduled ones once their time has come).
WAITING = ("queued", "scheduled")
#: The jobs that never change again on their own.
FINISHED = ("succeeded", "failed", "cancelled")


def _where(condition: TextClause | str) -> dict[str, Any]:
    """The same partial-index condition for both databases."""
    clause = condition if isinstance(condition, TextClause) else text(condition)
    return {"sqlite_where": clause, "postgresql_where": clause}


jobs = Table(
    "jobs",
    metadata,
    Column("id", Uuid(), primary_key=True),
    Column("operation", String(100), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("params", JSON(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", SmallInteger(), nullable=False),
    Column("attempt", Integer(), nullable=False),
    Column("max_attempts", Integer(), nullable=False),
    Column("timeout", Float(), nullable=True),
    Column("run_at", UTCDateTime(), nullable=False),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("worker_id", String(200), nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("batch_id", Uuid(), nullable=True),
    Column("owner", String(200), nullable=True),
    Column("progress", Float(), nullable=True),
    Column("progress_message", Text(), nullable=True),
    Column("result", JSON(), nullable=True),
    Column("error", JSON(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    # Attempts made before the last manual retry: max_attempts - attempt_base is the job's
    # budget of attempts, which each retry grants again. (Last, where ALTER TABLE put it: the
    # PostgreSQL claim reads `jobs.*` by position.)
    Column("attempt_base", Integer(), nullable=False, server_default="0"),
)
# The claim reads the head of one queue in priority order: served by this index alone,
# whose size follows the number of waiting jobs, not of jobs stored.
Index(
    "ix_jobs_claim",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.run_at,
    jobs.c.id,
    **_where(status_in(*WAITING)),
)
Index("ix_jobs_running", jobs.c.lease_expires_at, **_where(status_in("running")))
Index("ix_jobs_running_queue", jobs.c.queue, **_where(status_in("running")))
Index(
    "ix_jobs_finished",
    jobs.c.finished_at,
    **_where(status_in(*FINISHED)),
)
# Every state change rewrites a job's entry in every index (the update cannot be HOT), so the
# indexes stay partial and small: a store with a million finished jobs claims as fast as an
# empty one. Lists of finished jobs other than failed ones read the primary key backwards.
Index("ix_jobs_failed", jobs.c.id, **_where(status_in("failed")))
Index("ix_jobs_batch_id", jobs.c.batch_id, **_where("batch_id IS NOT NULL"))
Index(
    "uq_jobs_idempotency_key",
    jobs.c.idempotency_key,
    unique=True,
    **_where("idempotency_key IS NOT NULL"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("job_id", Uuid(), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("media_type", String(200), nullable=False),
    Column("name", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
Index("ix_artifacts_job_id", artifacts.c.job_id)
Index("ix_artifacts_sha256", artifacts.c.sha256)

job_events = Table(
    "job_events",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("job_id", Uuid(), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("data", JSON(), nullable=False),
)
Index("ix_job_events_job_id", job_events.c.job_id, job_events.c.id)

workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer(), nullable=False),
    Column("queues", JSON(), nullable=False),
    Column("concurrency", Integer(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_heartbeat_at", UTCDateTime(), nullable=False),
    Column("stopped_at", UTCDateTime(), nullable=True),
)
Index("ix_workers_last_heartbeat_at", workers.c.last_heartbeat_at)
