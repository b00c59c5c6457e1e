"""Stored bytes and the rows that name them: a commit never names bytes that are gone.

Storage keeps the same bytes once, so one file can be named by many jobs, and its bytes may go
only when the last row naming them does. Two things happen at once on a busy service: a job
deleted (or pruned) takes its files' bytes with it, and another job whose upload or output is
the same bytes finds them already stored, keeps no copy of its own, and commits a row naming
them. Both sides take the bytes' lock in their transaction:

- a commit that names bytes holds a shared lock on them and checks that they are still stored;
- a removal holds an exclusive lock, checks that no row names the bytes, and removes them.

Whichever commits first, the other sees it: a removal finds the new row and keeps the bytes, or
the commit finds them gone (then a job's success becomes a retry and a submission is refused,
so that nothing is recorded that cannot be read). On SQLite the write transaction holds the
database's one write lock, which already orders the two; PostgreSQL takes an advisory lock per
file.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Protocol

from sqlalchemy import Connection, select, text

from docqueue.store.tables import artifacts

log = logging.getLogger("docqueue.store")
#: How many files one removal transaction handles.
REMOVE_BATCH = 100

_LOCK = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")
_LOCK_SHARED = text(
    "SELECT pg_advisory_xact_lock_shared(k) FROM unnest(CAST(:keys AS bigint[])) AS k"
)


class StoredFiles(Protocol):
    """The part of storage the store needs (docqueue.storage.Storage is one)."""

    def missing(self, sha256s: Collection[str]) -> set[str]:
        """Which of `sha256s` are not stored."""
        ...

    def delete(self, sha256: str) -> bool:
        """Remove the bytes; False when they were not there."""
        ...

    def stored_at(self, sha256: str) -> float | None:
        """When the bytes were last stored (a Unix time); None when absent or not told."""
        ...


def lock_files(conn: Connection, sha256s: Collection[str], *, exclusive: bool) -> None:
    """Lock the files `sha256s` until the transaction ends: shared to name them, exclusive to
    remove them. The keys are taken in one order, so two transactions never wait on each other
    in a circle."""
    if conn.dialect.name != "postgresql" or not sha256s:
        return  # SQLite: the write transaction already holds the database's only write lock
    keys = sorted({_lock_key(sha256) for sha256 in sha256s})
    conn.execute(_LOCK if exclusive else _LOCK_SHARED, {"keys": keys})


def gone_from(conn: Connection, files: StoredFiles | None, sha256s: Collection[str]) -> set[str]:
    """Which of the files a commit is about to name are no longer stored; the rest stay stored
    until the transaction ends. A store made without `files` checks nothing.

    Storage that cannot answer just now counts as holding them: they were stored moments ago,
    and the check only guards against a rare race, while failing here would fail the commit
    of every job meanwhile (and a worker's commit is not one to lose).
    """
    if files is None or not sha256s:
        return set()
    lock_files(conn, sha256s, exclusive=False)
    try:
        return files.missing(sha256s)
    except Exception as exc:
        log.warning("could not check that %d stored files are still there: %s", len(sha256s), exc)
        return set()


def named(conn: Connection, sha256s: Collection[str]) -> set[str]:
    """Which of `sha256s` some stored job names."""
    query = select(artifacts.c.sha256).where(artifacts.c.sha256.in_(list(sha256s))).distinct()
    return set(conn.execute(query).scalars())


def _lock_key(sha256: str) -> int:
    """The advisory lock key of a file: the first 64 bits of its address, as a signed bigint."""
    return int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
