"""The SQL job store: tables, the JobStore that owns every job state change, and migrations."""

from docqueue.store.engine import (
    CommitWatch,
    SqliteChanges,
    make_engine,
    watch,
)
from docqueue.store.jobstore import JobStore
from docqueue.store.migrate import upgrade
from docqueue.store.reader import JobPage
from docqueue.store.workers import WorkerRegistry

__all__ = [
    "CommitWatch",
    "JobPage",
    "JobStore",
    "SqliteChanges",
    "WorkerRegistry",
    "make_engine",
    "upgrade",
    "watch",
]
