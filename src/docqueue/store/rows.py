"""Turning table rows into the data objects of docqueue.models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from docqueue.models import Artifact, Job, JobEvent, JobState, WorkerInfo


def job_from_row(row: Row[Any]) -> Job:
    """A `Job` from a full row of `jobs`."""
    m = row._mapping
    return Job(
        id=m["id"],
        operation=m["operation"],
        queue=m["queue"],
        params=m["params"],
        status=JobState(m["status"]),
        priority=m["priority"],
        attempt=m["attempt"],
        max_attempts=m["max_attempts"],
        timeout=m["timeout"],
        run_at=m["run_at"],
        created_at=m["created_at"],
        lease_expires_at=m["lease_expires_at"],
        worker_id=m["worker_id"],
        idempotency_key=m["idempotency_key"],
        batch_id=m["batch_id"],
        owner=m["owner"],
        progress=m["progress"],
        progress_message=m["progress_message"],
        result=m["result"],
        error=m["error"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


def event_from_row(row: Row[Any]) -> JobEvent:
    """A `JobEvent` from a row of `job_events`."""
    m = row._mapping
    return JobEvent(id=m["id"], job_id=m["job_id"], type=m["type"], at=m["at"], data=m["data"])


def artifact_from_row(row: Row[Any]) -> Artifact:
    """An `Artifact` from a row of `artifacts`."""
    m = row._mapping
    return Artifact(
        sha256=m["sha256"],
        size=m["size"],
        media_type=m["media_type"],
        name=m["name"],
        role=m["role"],
        job_id=m["job_id"],
    )


def worker_from_row(row: Row[Any]) -> WorkerInfo:
    """A `WorkerInfo` from a row of `workers`."""
    m = row._mapping
    return WorkerInfo(
        id=m["id"],
        host=m["host"],
        pid=m["pid"],
        queues=list(m["queues"]),
        concurrency=m["concurrency"],
        started_at=m["started_at"],
        last_heartbeat_at=m["last_heartbeat_at"],
        stopped_at=m["stopped_at"],
    )
