"""The worker's batch transitions on PostgreSQL, each one statement and one round trip.

A worker records a batch of successes and leases its next jobs many times a second. Each of
these statements changes the jobs and writes their timeline entries together (a data-modifying
CTE), and takes its lists as arrays, so its SQL text never changes with the batch size: the
server plans it once per connection and the client never compiles it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

from docqueue.store.tables import jobs

#: Successes of held attempts: the fence (same attempt, still running) is part of the UPDATE,
#: which PostgreSQL re-checks on a row that another transaction changed meanwhile. The ids are
#: also given as an array (`= ANY`), as in LEASE, so the plan can look them up by primary key
#: rather than only join them to every running job.
SUCCEED = text("""
WITH done AS (
    UPDATE jobs
    SET status = 'succeeded', result = CAST(d.result AS json), progress = 1.0,
        lease_expires_at = NULL, finished_at = :now
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:results AS text[]))
        AS d (id, attempt, result)
    WHERE jobs.id = ANY(CAST(:ids AS uuid[])) AND jobs.id = d.id AND jobs.attempt = d.attempt
        AND jobs.status = 'running'
    RETURNING jobs.id, jobs.attempt
), timeline AS (
    INSERT INTO job_events (job_id, type, at, data)
    SELECT id, 'succeeded', :now, json_build_object('attempt', attempt) FROM done
)
SELECT id, attempt FROM done
""")

#: Jobs picked by id (already locked by the caller, or given by a dispatcher that delivers ids).
BY_ID = "CAST(:ids AS uuid[])"
#: The head of one queue, read from ix_jobs_claim; rows other claimers hold are skipped.
HEAD = """ARRAY(
    SELECT id FROM jobs
    WHERE status IN ('queued', 'scheduled') AND queue = :queue AND run_at <= :now
    ORDER BY priority DESC, run_at, id
    LIMIT :room
    FOR UPDATE SKIP LOCKED
)"""
#: Move the picked waiting jobs to running under a lease, counting the attempt. The ids come
#: as an array so that the rows are found through the primary key whatever the plan expects
#: (a join to the picked rows may be planned as a scan of every waiting job).
LEASE = """
WITH claimed AS (
    UPDATE jobs
    SET status = 'running', attempt = jobs.attempt + 1, worker_id = :worker_id,
        lease_expires_at = :lease_expires_at, started_at = :now, progress = NULL,
        progress_message = NULL
    WHERE {picked}
    RETURNING jobs.*
), timeline AS (
    INSERT INTO job_events (job_id, type, at, data)
    SELECT id, 'running', :now,
        json_build_object('worker_id', CAST(:worker_id AS text), 'attempt', attempt)
    FROM claimed
)
SELECT * FROM claimed
"""
#: Ids given from outside are checked to be claimable here.
LEASE_BY_ID = text(
    LEASE.format(
        picked=f"jobs.id = ANY({BY_ID}) AND jobs.status IN ('queued', 'scheduled') "
        "AND jobs.run_at <= :now"
    )
).columns(*jobs.c)
#: The head's rows are locked, and were checked, by the same statement: the id alone finds
#: them. Repeating the status and run_at conditions here would let the planner read the rows
#: through ix_jobs_claim instead of the primary key, a scan of every due job when the table's
#: statistics are behind (right after a burst of submissions: 25 ms for 256 of 20,000 jobs).
LEASE_HEAD = text(LEASE.format(picked=f"jobs.id = ANY({HEAD})")).columns(*jobs.c)


def succeed(
    conn: Connection, wins: Sequence[tuple[UUID, int, str]], now: datetime
) -> set[tuple[UUID, int]]:
    """Mark (job id, attempt, result as JSON text) succeeded; the pairs that still held their job."""
    rows = conn.execute(
        SUCCEED,
        {
            "ids": [job_id for job_id, _, _ in wins],
            "attempts": [attempt for _, attempt, _ in wins],
            "results": [result for _, _, result in wins],
            "now": now,
        },
    )
    return {(row.id, row.attempt) for row in rows}


def lease(
    conn: Connection,
    worker_id: str,
    lease_seconds: float,
    now: datetime,
    *,
    ids: Sequence[UUID] = (),
    queue: str | None = None,
    room: int = 0,
) -> list[Row[Any]]:
    """Lease the given `ids`, or the first `room` claimable jobs of `queue`."""
    params: dict[str, Any] = {
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "now": now,
    }
    if queue is None:
        return list(conn.execute(LEASE_BY_ID, {**params, "ids": list(ids)}))
    return list(conn.execute(LEASE_HEAD, {**params, "queue": queue, "room": room}))
