"""Rows that go with a state change: timeline entries and artifacts, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, insert

from docqueue.models import JSON, Artifact
from docqueue.store.tables import artifacts, job_events

#: Built once: a statement made per call costs more to build and look up than to run.
INSERT_EVENT = insert(job_events)
INSERT_ARTIFACT = insert(artifacts)


def add_event(conn: Connection, job_id: UUID, type_: str, at: datetime, data: JSON) -> None:
    """Append one entry to a job's timeline."""
    conn.execute(INSERT_EVENT, {"job_id": job_id, "type": type_, "at": at, "data": data})


def add_events(conn: Connection, entries: Sequence[tuple[UUID, str, JSON]], at: datetime) -> None:
    """Append several timeline entries with one statement."""
    if entries:
        conn.execute(
            INSERT_EVENT, [{"job_id": j, "type": t, "at": at, "data": d} for j, t, d in entries]
        )


def add_artifacts(
    conn: Connection, files: Sequence[tuple[UUID, Sequence[Artifact]]], now: datetime
) -> None:
    """Rows for the files jobs read or wrote, (job id, its files) each, in one statement."""
    rows = [row for job_id, items in files for row in artifact_rows(job_id, items, now)]
    if rows:
        conn.execute(INSERT_ARTIFACT, rows)


def artifact_rows(job_id: UUID, items: Sequence[Artifact], now: datetime) -> list[dict[str, Any]]:
    """The `artifacts` rows of a job's files."""
    return [
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
    ]
