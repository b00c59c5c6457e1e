"""Keeping the garbage collector's pauses short in long-running processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """Leave what exists now (modules, the app, engines) out of collections until the end.

    A full collection walks every object a process holds: with FastAPI, Pydantic and SQLAlchemy
    loaded that takes 40-50 ms, in which the process answers nothing; and when it falls inside a
    write transaction on SQLite, every writer on the machine waits as long. Objects made at
    start-up live as long as the server or worker, so walking them finds nothing: frozen, they
    are skipped, and a collection walks only what requests and jobs have made since. At the end
    they are handed back to the collector (a process may start a server more than once).
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
