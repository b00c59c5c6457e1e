"""Huey on SQLite (`SqliteHuey`); a job is deleted when dequeued, so delivery is at-most-once."""

import os
import tempfile
from pathlib import Path

from huey import SqliteHuey

from peer_tasks import probe

DEFAULT_FILE = Path(tempfile.gettempdir()) / "docqueue-bench-huey.db"

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_FILE", str(DEFAULT_FILE)))


@huey.task()
def noop(phase: str, enqueued_at: float) -> None:
    """Do nothing but note the start."""
    probe.record(phase, enqueued_at)


def enqueue(phase: str, enqueued_at: float) -> None:
    """Enqueue one no-op task (calling a Huey task enqueues it)."""
    noop(phase, enqueued_at)
