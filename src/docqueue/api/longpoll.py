"""Long-polls (`?wait=N`) and event streams of every request of the API, answered by one reader
of the store each.

A request waiting for its job to finish used to read the job again after pauses growing to
half a second: each waiter cost queries of its own, and a job finishing just after a read was
answered up to a pause late. Here the waiters register the job they wait for, and one thread
asks the store every `INTERVAL` which of all the watched jobs have finished (one query, however
many wait) and wakes those waiters at once. The thread runs only while somebody waits.
Server-sent event streams are served the same way by `EventFeed`. On SQLite both readers skip
their query while nothing was committed since their last one (`SqliteChanges`), unless a new
waiter came meanwhile: its job may have finished before it registered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from uuid import UUID

from anyio import to_thread

from docqueue.models import Job, JobEvent
from docqueue.store import JobStore, SqliteChanges, watch_changes

log = logging.getLogger("docqueue.api")


class FinishWatch:
    """Waits for jobs to finish, for any number of threads at once, with one query per round."""

    #: Seconds between two reads of the store while anyone waits.
    INTERVAL = 0.025

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._waiters: dict[UUID, list[threading.Event]] = {}
        self._running = False
        #: A waiter came since the last read: read even if nothing was committed.
        self._fresh = False

    def wait(self, job: Job, seconds: float) -> Job:
        """`job` once it has finished, or as it stands after `seconds`."""
        if job.status.finished or seconds <= 0:
            return job
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job.id, []).append(event)
            self._fresh = True
            if not self._running:
                self._running = True
                threading.Thread(target=self._watch, name="docqueue-long-poll", daemon=True).start()
        try:
            event.wait(seconds)
        finally:
            with self._lock:
                events = self._waiters[job.id]
                events.remove(event)
                if not events:
                    del self._waiters[job.id]
        return self.store.get(job.id)

    def _watch(self) -> None:
        """Until nobody waits: every INTERVAL, wake the waiters of the jobs that are done."""
        with watch_changes(self.store.engine) as changes:
            while True:
                time.sleep(self.INTERVAL)
                with self._lock:
                    watched = list(self._waiters)
                    fresh, self._fresh = self._fresh, False
                    if not watched:
                        self._running = False
                        return
                if not _changed(changes) and not fresh:
                    continue
                try:
                    done = self.store.settled(watched)
                except Exception:  # the waiters time out and answer with the job as it stands
                    log.warning("long-poll could not read the job store", exc_info=True)
                    self._fresh = True  # read again next round, changed or not
                    continue
                with self._lock:
                    for job_id in done:
                        for event in self._waiters.get(job_id, ()):
                            event.set()


@dataclass
class _Follower:
    """One event stream: the last event it has, and what the reader found for it since."""

    after: int
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[JobEvent] = field(default_factory=list)
    finished: bool = False


class EventFeed:
    """Live job timelines for any number of event streams, with one read of the store per round.

    A stream first reads the timeline so far on its own, then registers; a thread asks the store
    every `INTERVAL` for the newer events of all the followed jobs and whether each finished,
    and wakes the streams that have something new. The thread runs only while a stream follows.
    """

    #: Seconds between two reads of the store while any stream follows a job.
    INTERVAL = 0.25

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._followers: dict[UUID, list[_Follower]] = {}
        self._running = False
        #: A stream came since the last read: read even if nothing was committed.
        self._fresh = False

    async def follow(self, job: Job, after: int = 0) -> AsyncIterator[JobEvent]:
        """The events of `job` (as just read from the store) after event id `after`, then each
        new one; ends once it finished, or is deleted."""
        # Its status was read before these events: when it says finished, the events read
        # after it include the one that finished the job.
        for event in await to_thread.run_sync(partial(self.store.events, job.id, after=after)):
            after = event.id
            yield event
        if job.status.finished:
            return
        follower = _Follower(after, asyncio.get_running_loop())
        self._add(job.id, follower)
        try:
            while True:
                await follower.wake.wait()
                follower.wake.clear()
                with self._lock:
                    events, follower.events = follower.events, []
                    finished = follower.finished
                for event in events:
                    yield event
                if finished:
                    return
        finally:
            self._remove(job.id, follower)

    def _add(self, job_id: UUID, follower: _Follower) -> None:
        """Register a stream, and start the reader if it is not running."""
        with self._lock:
            self._followers.setdefault(job_id, []).append(follower)
            self._fresh = True
            if not self._running:
                self._running = True
                threading.Thread(target=self._read, name="docqueue-events", daemon=True).start()

    def _remove(self, job_id: UUID, follower: _Follower) -> None:
        """Forget a stream that ended or whose client left."""
        with self._lock:
            followers = self._followers.get(job_id, [])
            if follower in followers:
                followers.remove(follower)
            if not followers:
                self._followers.pop(job_id, None)

    def _read(self) -> None:
        """Until no stream follows: every INTERVAL, hand each stream its job's new events."""
        with watch_changes(self.store.engine) as changes:
            while True:
                time.sleep(self.INTERVAL)
                with self._lock:
                    seen = {
                        job_id: min(f.after for f in followers)
                        for job_id, followers in self._followers.items()
                    }
                    fresh, self._fresh = self._fresh, False
                    if not seen:
                        self._running = False
                        return
                if not _changed(changes) and not fresh:
                    continue
                try:
                    finished, newer = self.store.timelines(seen)
                    with self._lock:
                        for job_id, followers in self._followers.items():
                            for follower in followers:
                                self._offer(follower, newer.get(job_id, []), job_id in finished)
                except Exception:  # the streams wait for the next round; the reader goes on
                    log.warning("event streams could not read the job store", exc_info=True)
                    self._fresh = True  # read again next round, changed or not

    @staticmethod
    def _offer(follower: _Follower, events: list[JobEvent], finished: bool) -> None:
        """Hand a stream the events it has not had yet (called with the lock held)."""
        fresh = [event for event in events if event.id > follower.after]
        if not fresh and not finished:
            return
        if fresh:
            follower.events += fresh
            follower.after = fresh[-1].id
        follower.finished = finished
        try:
            follower.loop.call_soon_threadsafe(follower.wake.set)
        except RuntimeError:  # its event loop has closed: nobody reads this stream any more
            follower.finished = True


def _changed(changes: SqliteChanges | None) -> bool:
    """True when the store may hold something new: always, without a watch (PostgreSQL)."""
    return changes is None or changes.changed()
