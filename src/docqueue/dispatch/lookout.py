"""When a worker with room for work looks in the store for due jobs.

Right after a claim that took all it asked for (more is likely waiting), and otherwise only when
something may have changed: a commit (SQLite under Linux: a watch on the write-ahead log), a
notification (PostgreSQL: NOTIFY), or the moment the next scheduled job comes due (its run_at: a
job for later, a retry's backoff). A slow poll is the safety net; where nothing wakes the worker
(SQLite elsewhere) it polls every `poll_interval`, and asks the store only when another
connection has committed since (PRAGMA data_version) or a scheduled job may have come due.
"""

from __future__ import annotations

import time
from typing import Any

from docqueue.models import utcnow
from docqueue.settings import Settings
from docqueue.store import JobStore
from docqueue.store.engine import CommitWatch, Listener, SqliteChanges

#: Seconds between idle polls on PostgreSQL, where NOTIFY wakes workers and polls are a fallback.
NOTIFY_FALLBACK_POLL = 1.0
#: Seconds between polls of an idle worker that commits wake (SQLite's watch): a safety net.
WATCHED_POLL = 1.0
#: On SQLite, after a look that found work, the next one asks the store this soon at the latest
#: even if nothing was committed.
DUE_RECHECK = 0.2
#: Longest an idle worker trusts that no scheduled job comes due (clocks can be changed).
DUE_HORIZON = 60.0


class Lookout:
    """Decides when the supervisor asks the store for due jobs, and what it waits on for that."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.queues = settings.queues
        self.poll_interval = settings.poll_interval
        self.listener = Listener(store.engine) if store.is_postgres else None
        self.changes = SqliteChanges.of(store.engine)
        #: On SQLite, wakes an idle supervisor when anything is committed (a job queued, say).
        self.commits = CommitWatch.of(store.engine)
        #: When to look next (monotonic seconds).
        self.next_look = 0.0
        #: On SQLite: when a look asks the store even if nothing was committed (a scheduled job
        #: comes due then).
        self.due = 0.0
        #: The last claim took all it asked for, or PostgreSQL said a job was queued: look now.
        self.urgent = False

    def sources(self, room: bool) -> list[Any]:
        """What to wait on for news of work: NOTIFY's connection, and the commit watch while a
        child could take a job (a busy worker is not woken by every commit)."""
        sources: list[Any] = []
        if self.listener is not None and self.listener.connected():
            sources.append(self.listener)
        if self.commits is not None and room and self.commits.watching():
            sources.append(self.commits)
        return sources

    def heard(self, ready: object) -> bool:
        """Take in a source that became readable; False when `ready` is not one of them."""
        if isinstance(ready, Listener):
            if ready.drain() & {"*", *self.queues}:
                self.urgent = True
            return True
        if isinstance(ready, CommitWatch):
            ready.drain()
            self.next_look = 0.0  # something is being committed: look now, and while it lands
            return True
        return False

    def look(self) -> bool:
        """True when a claim may find work: right after a full claim or a notification, or
        when a due look finds some."""
        if self.urgent:
            self.urgent = False
            return True
        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + self.interval()
        # Nothing committed since the last look (read before the query, so that a commit
        # during it is seen next time) and nothing scheduled can have come due yet.
        if self.changes is not None and not self.changes.changed() and now < self.due:
            found = False
        else:
            found = self.store.has_due(self.queues)
            self.due = now + (DUE_RECHECK if found else self._until_due())
        if not found:
            # Look when the next scheduled job comes due; sooner if a commit seen written may
            # land now (SQLite's watch).
            self.next_look = min(self.next_look, self.due)
            pause = self.commits.landing_pause() if self.commits is not None else None
            if pause is not None:
                self.next_look = now + pause
        return found

    def claiming(self) -> None:
        """A claim starts: what it finds answers the news heard so far."""
        self.urgent = False

    def claimed(self, got: int, wanted: int) -> None:
        """After a claim: a full one means more may wait, as does a notification heard while
        it ran; else look at the usual time (not later than already planned: a commit seen
        meanwhile wants a look now)."""
        self.urgent = self.urgent or got == wanted
        self.next_look = min(self.next_look, time.monotonic() + self.interval())

    def failed(self) -> None:
        """A claim could not be written: look again as soon as the store answers."""
        self.urgent = True

    def interval(self) -> float:
        """Seconds between looks with room for work: where a commit or a notification wakes
        the worker, looks only catch what nothing announced."""
        if self.listener is not None:
            return max(self.poll_interval, NOTIFY_FALLBACK_POLL)
        if self.commits is not None and self.commits.watching():
            return max(self.poll_interval, WATCHED_POLL)
        return self.poll_interval

    def close(self) -> None:
        """Close the connections and watches."""
        for held in (self.listener, self.changes, self.commits):
            if held is not None:
                held.close()

    def _until_due(self) -> float:
        """Seconds until the first waiting job comes due by the clock, at most DUE_HORIZON (a
        new job wakes the worker anyway)."""
        due = self.store.next_due(self.queues)
        if due is None:
            return DUE_HORIZON
        return min(max((due - utcnow()).total_seconds(), 0.0), DUE_HORIZON)
