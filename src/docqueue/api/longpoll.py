"""Long-polls (`?wait=N`) and event streams of every request of the API, answered by one reader
of the store each.

A request waiting for its job to finish used to read the job again after pauses growing to
half a second: each waiter cost queries of its own, and a job finishing just after a read was
answered up to a pause late. Here the waiters register the job they wait for, and one thread
asks the store which of all the watched jobs have finished (one query, however many wait),
at most every `INTERVAL`, and wakes those waiters at once. The thread runs only while somebody
waits. Server-sent event streams are served the same way by `EventFeed`. On SQLite both readers
wait for a commit (`CommitWatch`) rather than polling, so a finished job is answered as soon as
its commit lands, and they skip their query while nothing was committed since their last one
(`SqliteChanges`), unless a new waiter came meanwhile: its job may have finished before it
registered. While commits keep coming and bring the waiters nothing (a busy worker, jobs far
from done), the reads slow down to one every `SLOWEST`, until a read finds something or a
new waiter comes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar
from uuid import UUID

from anyio import to_thread

from docqueue.models import Job, JobEvent
from docqueue.store import CommitWatch, JobStore, SqliteChanges, watch

log = logging.getLogger("docqueue.api")
#: What a reader's waiters want read in a round.
Wanted = TypeVar("Wanted", list[UUID], dict[UUID, int])


class _Reader(Generic[Wanted]):
    """One thread that reads the store for everybody waiting in this process, at most every
    `INTERVAL`, started by the first to register and ended when nobody waits. On SQLite it
    waits for a commit between rounds, and a round skips its read while nothing was committed
    since the last one, unless somebody registered meanwhile.

    Subclasses say what the waiters want read (`_wanted`, called with the lock held; empty when
    nobody waits) and read it (`_read`).
    """

    #: Least seconds between two reads of the store while anybody waits, where commits wake
    #: the reader (SQLite's watch).
    INTERVAL: float
    #: Seconds between two reads where nothing wakes it (PostgreSQL): it polls.
    POLL: float
    #: Longest wait for a commit before a round looks anyway (a commit is seen by its watch at
    #: once; this only bounds a wait the watch could not end, for a log file made meanwhile).
    IDLE = 1.0
    #: Reads in a row that find nothing for anybody, after which the pause between reads
    #: doubles, up to SLOWEST. While a worker commits many times a second and the awaited jobs
    #: are not near their end, each commit would otherwise cost a read (up to 1/INTERVAL a
    #: second: on a 2-core machine, a few percent of a core taken from the workers). A new
    #: waiter, or a read that finds something, brings the pause back to INTERVAL (or POLL).
    PATIENCE = 10
    #: Longest pause between two reads while anybody waits: the most a waiter's answer can lag
    #: its commit once reads have slowed down.
    SLOWEST: float
    #: Who reads, for the thread's name and the log.
    NAME: str

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._running = False
        #: Somebody registered since the last read: read even if nothing was committed.
        self._fresh = False
        #: Set by `_registered`: ends the reader's pause between reads.
        self._nudge = threading.Event()
        #: The running thread's watch, which `_registered` wakes.
        self._commits: CommitWatch | None = None

    def _registered(self) -> None:
        """After a waiter registered (the lock held): read next round, run the thread."""
        self._fresh = True
        if not self._running:
            self._running = True
            threading.Thread(target=self._rounds, name=f"docqueue-{self.NAME}", daemon=True).start()
            return
        self._nudge.set()
        if self._commits is not None:
            self._commits.wake()

    def _rounds(self) -> None:
        """Until nobody waits: after each commit (or every POLL without a watch), and at most
        every INTERVAL (more slowly after PATIENCE reads that found nothing), read for all the
        waiters at once."""
        engine = self.store.engine
        with watch(SqliteChanges, engine) as changes, watch(CommitWatch, engine) as commits:
            with self._lock:
                self._commits = commits
            last_read = 0.0
            idle_reads = 0
            while True:
                gap = self.INTERVAL if commits is not None else self.POLL
                doublings = min(max(0, idle_reads - self.PATIENCE), 10)
                pause = max(gap, min(gap * 2**doublings, self.SLOWEST))
                # A new waiter cuts a slow pause short: its job may have finished already.
                if self._nudge.wait(max(0.0, last_read + pause - time.monotonic())):
                    self._nudge.clear()
                    time.sleep(max(0.0, last_read + gap - time.monotonic()))
                if commits is not None and not self._fresh:
                    # Until a commit; while one seen written may land, a short pause.
                    commits.wait(commits.landing_pause() or self.IDLE)
                with self._lock:
                    wanted = self._wanted()
                    fresh, self._fresh = self._fresh, False
                    if not wanted:
                        self._running = False
                        self._commits = None
                        return
                if not _changed(changes) and not fresh:
                    continue
                last_read = time.monotonic()
                try:
                    found = self._read(wanted)
                except Exception:  # the waiters wait for the next round; the reader goes on
                    log.warning(
                        "the %s reader could not read the job store", self.NAME, exc_info=True
                    )
                    self._fresh = True  # read again next round, changed or not
                    found = False
                idle_reads = 0 if found or fresh else idle_reads + 1

    def _wanted(self) -> Wanted:
        """What the waiters want read (called with the lock held); empty when nobody waits."""
        raise NotImplementedError

    def _read(self, wanted: Wanted) -> bool:
        """Read `wanted` from the store and hand it to the waiters; True when anybody got
        something."""
        raise NotImplementedError


class FinishWatch(_Reader[list[UUID]]):
    """Waits for jobs to finish, for any number of threads at once, with one query per round."""

    INTERVAL = 0.01
    POLL = 0.025
    SLOWEST = 0.1
    NAME = "long-poll"

    def __init__(self, store: JobStore) -> None:
        super().__init__(store)
        self._waiters: dict[UUID, list[threading.Event]] = {}

    def wait(self, job: Job, seconds: float) -> Job:
        """`job` once it has finished, or as it stands after `seconds` (also when the store
        cannot be read meanwhile)."""
        if job.status.finished or seconds <= 0:
            return job
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job.id, []).append(event)
            self._registered()
        try:
            event.wait(seconds)
        finally:
            with self._lock:
                events = self._waiters[job.id]
                events.remove(event)
                if not events:
                    del self._waiters[job.id]
        return self.store.get(job.id)

    def _wanted(self) -> list[UUID]:
        """The watched jobs."""
        return list(self._waiters)

    def _read(self, wanted: list[UUID]) -> bool:
        """Wake the waiters of the jobs that are done."""
        done = self.store.settled(wanted)
        with self._lock:
            for job_id in done:
                for event in self._waiters.get(job_id, ()):
                    event.set()
        return bool(done)


@dataclass
class _Follower:
    """One event stream: the last event it has, and what the reader found for it since."""

    after: int
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[JobEvent] = field(default_factory=list)
    finished: bool = False


class EventFeed(_Reader[dict[UUID, int]]):
    """Live job timelines for any number of event streams, with one read of the store per round.

    A stream first reads the timeline so far on its own, then registers; a thread asks the store
    (at most every `INTERVAL`) for the newer events of all the followed jobs and whether each finished,
    and wakes the streams that have something new. The thread runs only while a stream follows.
    """

    INTERVAL = 0.05
    POLL = 0.25
    SLOWEST = 0.25
    NAME = "events"

    def __init__(self, store: JobStore) -> None:
        super().__init__(store)
        self._followers: dict[UUID, list[_Follower]] = {}

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
            self._registered()

    def _remove(self, job_id: UUID, follower: _Follower) -> None:
        """Forget a stream that ended or whose client left."""
        with self._lock:
            followers = self._followers.get(job_id, [])
            if follower in followers:
                followers.remove(follower)
            if not followers:
                self._followers.pop(job_id, None)

    def _wanted(self) -> dict[UUID, int]:
        """Each followed job, with the last event all its streams have."""
        return {
            job_id: min(f.after for f in followers) for job_id, followers in self._followers.items()
        }

    def _read(self, wanted: dict[UUID, int]) -> bool:
        """Hand each stream its job's new events, and whether it finished."""
        finished, newer = self.store.timelines(wanted)
        offered = False
        with self._lock:
            for job_id, followers in self._followers.items():
                for follower in followers:
                    offered |= self._offer(follower, newer.get(job_id, []), job_id in finished)
        return offered

    @staticmethod
    def _offer(follower: _Follower, events: list[JobEvent], finished: bool) -> bool:
        """Hand a stream the events it has not had yet (called with the lock held); True when
        there were any, or its job finished."""
        fresh = [event for event in events if event.id > follower.after]
        if not fresh and not finished:
            return False
        if fresh:
            follower.events += fresh
            follower.after = fresh[-1].id
        follower.finished = finished
        try:
            follower.loop.call_soon_threadsafe(follower.wake.set)
        except RuntimeError:  # its event loop has closed: nobody reads this stream any more
            follower.finished = True
        return True


def _changed(changes: SqliteChanges | None) -> bool:
    """True when the store may hold something new: always, without a watch (PostgreSQL)."""
    return changes is None or changes.changed()
