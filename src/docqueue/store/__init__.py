"""The SQL job store: tables, the JobStore that owns every job state change, and migrations."""

from docqueue.store.engine import make_engine
from docqueue.store.jobstore import JobStore
from docqueue.store.migrate import upgrade
from docqueue.store.reader import JobPage
from docqueue.store.workers import WorkerRegistry

__all__ = ["JobPage", "JobStore", "WorkerRegistry", "make_engine", "upgrade"]
