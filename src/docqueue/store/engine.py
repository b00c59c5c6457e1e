"""Engines for the two databases: SQLite in WAL mode with immediate write transactions, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

try:
    import fcntl
except ImportError:  # Windows: SQLite's busy handler alone orders the writers
    fcntl = None  # type: ignore[assignment]

#: The channel that tells idle PostgreSQL workers a job was queued; the payload is the queue.
NOTIFY_CHANNEL = "docqueue_jobs"


def normalise_url(url: str) -> str:
    """Give a bare `postgresql://` URL the psycopg 3 driver that docqueue ships with."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **options: Any) -> Engine:
    """An engine for `url`, set up for docqueue's access pattern."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **options)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60}, **options)
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """WAL lets readers go on while one writer writes; FULL sync keeps every commit on disk."""
    dbapi_connection.isolation_level = None  # docqueue emits BEGIN itself, see _sqlite_begin
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    """Writers take the write lock at BEGIN: an upgrade from a read lock could fail without waiting."""
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: BEGIN IMMEDIATE on SQLite, a plain one on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as connection, connection.begin():
            yield connection
        return
    with _writer_turn(engine.url.database), engine.connect() as connection:
        connection = connection.execution_options(sqlite_begin="IMMEDIATE")
        with connection.begin():
            yield connection


#: Per SQLite file in this process: the lock of its threads and the open lock file.
_writer_locks: dict[str, tuple[threading.RLock, int]] = {}
_writer_locks_guard = threading.Lock()


@contextmanager
def _writer_turn(database: str | None) -> Iterator[None]:
    """Wait for this process's, then this machine's, turn to write to the SQLite file.

    SQLite hands its write lock over through a busy handler that sleeps 1, 2, 5, 10, 15 ms and
    more between tries, so writers of several threads and processes lose whole milliseconds
    waiting for a lock that is long free, and the unlucky ones lose hundreds. docqueue's
    writers queue instead on a lock of their own: a thread lock within the process and an
    flock on `<database>-writer.lock` between processes, which the kernel hands to the next
    waiter the moment it is released (and releases when a process dies). Writers that are not
    docqueue still meet the busy handler, as before.
    """
    if fcntl is None or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    threads, fd = _writer_lock(database)
    with threads:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _writer_lock(database: str) -> tuple[threading.RLock, int]:
    """The thread lock and lock file of `database` in this process, made on first use."""
    with _writer_locks_guard:
        if database not in _writer_locks:
            fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # Reentrant, as SQLite's lock is for one connection: a transaction opened within
            # another on the same thread fails on SQLite's busy timeout instead of hanging here.
            _writer_locks[database] = (threading.RLock(), fd)
        return _writer_locks[database]


def _forget_writer_locks() -> None:
    """In a forked child: the parent's lock file descriptions are shared with it, so an flock
    there would not exclude the parent; open new ones on first use."""
    global _writer_locks_guard
    for _, fd in _writer_locks.values():
        os.close(fd)
    _writer_locks.clear()
    _writer_locks_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer_locks)


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only snapshot."""
    with engine.connect() as connection, connection.begin():
        yield connection


class SqliteChanges:
    """Tells, in microseconds, whether anything was committed to a SQLite file since the last look.

    `PRAGMA data_version` on a connection of its own changes whenever another connection
    commits. A poller that asks it first runs its query through the engine (a quarter of a
    millisecond of Python) only when something changed: an idle worker polls 50 times a second,
    and those queries alone kept it at 6% of a core.
    """

    def __init__(self, database: str) -> None:
        self._conn = sqlite3.connect(database, isolation_level=None)
        self._version: int | None = None

    @classmethod
    def of(cls, engine: Engine) -> SqliteChanges | None:
        """A watch on the engine's SQLite file; None on PostgreSQL, for an in-memory one, or
        when it cannot be opened (then every look asks the store, as without a watch)."""
        database = _sqlite_file(engine)
        if database is None or not Path(database).is_file():
            return None
        try:
            return cls(database)
        except sqlite3.Error:  # no file handle to spare, say: look through the engine instead
            return None

    def changed(self) -> bool:
        """True when a commit happened since the last call (and on the first call, or when the
        file cannot be read: the caller then asks the store, as it would without a watch)."""
        try:
            version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._version = None
            return True
        changed = version != self._version
        self._version = version
        return changed

    def close(self) -> None:
        """Close its connection."""
        self._conn.close()


#: How long a commit may take to become visible after its log was written: the log is synced,
#: then the commit is published in the shared-memory index, which inotify does not see.
COMMIT_LANDING = 0.25
#: The first pause between two looks while a commit lands (each next one is twice as long).
LANDING_STEP = 0.002


class CommitWatch:
    """Wakes a waiter when anything is committed to a SQLite file, by any process.

    Commits to a database in WAL mode are writes to its `-wal` file, which inotify (Linux)
    reports at once. An idle worker and the API's readers wait on this instead of polling the
    store 40-50 times a second: they start a job or answer a waiter the moment its commit lands,
    and cost nothing meanwhile. The write comes a little before the commit can be read (its
    log is synced, then published in the `-shm` index), so after a wake the waiter looks again
    (`SqliteChanges`) for COMMIT_LANDING, after pauses doubling from LANDING_STEP.
    `wake()` ends a wait from another thread. Where inotify is not there (not Linux) `of`
    gives None, and waiters poll as before.
    """

    def __init__(self, database: str) -> None:
        from inotify_simple import INotify, flags

        self._log = f"{database}-wal"
        self._gone = flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF
        self._mask = flags.MODIFY | flags.DELETE_SELF | flags.MOVE_SELF
        self._inotify = INotify(nonblocking=True)
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watching = False
        self._watch()
        #: Until when a commit whose log was seen written may still land, and the pause
        #: before the next look meanwhile.
        self._landing_until = 0.0
        self._landing_step = LANDING_STEP

    @classmethod
    def of(cls, engine: Engine) -> CommitWatch | None:
        """A watch on the engine's SQLite file; None on PostgreSQL (it has LISTEN), for an
        in-memory database, or where inotify is not available."""
        database = _sqlite_file(engine)
        if database is None or not sys.platform.startswith("linux"):
            return None
        try:
            return cls(str(Path(database).resolve()))
        except (ImportError, OSError):
            return None

    def fileno(self) -> int:
        """The descriptor that is readable once something was committed."""
        return int(self._inotify.fileno())

    def watching(self) -> bool:
        """True when commits will wake a wait on `fileno()`. The log file is made by the first
        connection that reads the database: until then nothing can be watched (and a waiter
        polls); each call tries again."""
        return self._watch()

    def wait(self, timeout: float) -> bool:
        """Until a commit, a `wake()`, or `timeout` seconds; True when woken before the timeout.
        Commits made before the call and not yet drained end it at once."""
        if not self._watch():  # no log file yet: nothing to watch but the clock and wake()
            ready, _, _ = select.select([self._wake_read], [], [], min(timeout, 0.1))
        else:
            ready, _, _ = select.select([self.fileno(), self._wake_read], [], [], timeout)
        self.drain()
        return bool(ready)

    def drain(self) -> None:
        """Forget the commits and wake-ups seen so far; a commit seen starts its landing."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 512):
                pass
        changes = self._inotify.read(timeout=0)
        for change in changes:
            if change.mask & self._gone:  # the log was removed: watch the next one
                self._watching = False
        if changes:
            self._landing_until = time.monotonic() + COMMIT_LANDING
            self._landing_step = LANDING_STEP

    def landing_pause(self) -> float | None:
        """While a commit seen written may still land: the pause before the next look (twice
        the last one, from LANDING_STEP); None when no commit is landing."""
        if time.monotonic() >= self._landing_until:
            return None
        pause = self._landing_step
        self._landing_step *= 2
        return pause

    def wake(self) -> None:
        """End a wait now (from any thread)."""
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake_write, b"!")

    def close(self) -> None:
        """Stop watching."""
        self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _watch(self) -> bool:
        """Watch the log file if it is not watched yet; False while it does not exist."""
        if not self._watching:
            try:
                self._inotify.add_watch(self._log, self._mask)
                self._watching = True
            except OSError:  # not made yet: the first connection in WAL mode makes it
                pass
        return self._watching


Watch = TypeVar("Watch", SqliteChanges, CommitWatch)


@contextmanager
def watch(kind: type[Watch], engine: Engine) -> Iterator[Watch | None]:
    """A watch of `kind` (SqliteChanges, CommitWatch) on the engine's SQLite file for the
    length of the block; None where there is none (then waiters ask the store, or poll)."""
    found = kind.of(engine)
    try:
        yield found
    finally:
        if found is not None:
            found.close()


def _sqlite_file(engine: Engine) -> str | None:
    """The path of the engine's SQLite database file; None on PostgreSQL, and for an in-memory
    database or one named by a URI."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else database


class Listener:
    """A PostgreSQL connection that LISTENs for queued jobs, to wake an idle worker at once.

    It reconnects by itself after the server restarts; while it cannot, workers fall back on
    polling, so a lost notification only delays a job.
    """

    #: Seconds between attempts to reconnect.
    RETRY = 1.0

    def __init__(self, engine: Engine) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: Any = None
        self._next_try = 0.0
        self.connected()

    def connected(self) -> bool:
        """True when listening; tries to reconnect (at most once a second) when not."""
        if self._conn is not None and not self._conn.closed:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.RETRY
        import psycopg

        try:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error:
            self._conn = None
            return False
        return True

    def fileno(self) -> int:
        """The socket to wait on."""
        return int(self._conn.fileno())

    def drain(self) -> set[str]:
        """Queues named by notifications that arrived ("*" if the connection broke); never blocks."""
        import psycopg

        try:
            return {n.payload for n in self._conn.notifies(timeout=0)}
        except psycopg.Error:
            self.close()
            return {"*"}  # something may have been queued while nobody listened

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
