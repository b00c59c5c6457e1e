"""The local worker: a supervisor that claims jobs from the store and runs them in child processes."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from contextlib import closing
from multiprocessing.connection import wait
from types import FrameType
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy.exc import DBAPIError

from docqueue.dispatch.child import Task
from docqueue.dispatch.housekeeping import Housekeeping
from docqueue.dispatch.lookout import Lookout
from docqueue.dispatch.pool import ChildHandle, Pending, Timers
from docqueue.dispatch.writer import StoreWriter
from docqueue.heap import startup_objects_frozen
from docqueue.models import Completion, ErrorInfo, Failed, Job, Outcome
from docqueue.processors import Registry, builtin_registry
from docqueue.settings import Settings
from docqueue.storage import Storage
from docqueue.store import JobStore, WorkerRegistry

log = logging.getLogger("docqueue.worker")
#: Seconds a child gets to stop on its own after its job was cancelled, before it is killed.
CANCEL_GRACE = 5.0
#: Seconds a finished job's outcome may wait to share a commit with others (group commit).
GROUP_COMMIT_WINDOW = 0.02
#: Most short jobs handed to a child in one message.
MAX_CHUNK = 32
#: Default prefetch (settings.prefetch) by store: SQLite has one write lock for the whole
#: database, and a worker's commit of claims and outcomes holds every submission back while it
#: runs (256 claimed jobs hold it 20-40 ms on a busy machine; 64 about a quarter of that).
DEFAULT_PREFETCH = {"postgresql": 256, "sqlite": 64}
#: Longest pause between tries while the store is unreachable.
STORE_RETRY_MAX = 5.0


class Supervisor:
    """Claims jobs, hands them to N children, enforces timeouts and leases, stops gracefully."""

    def __init__(self, settings: Settings, *, burst: bool = False) -> None:
        self.settings = settings
        self.burst = burst
        self.storage = Storage(settings.resolved_storage_url)
        self.store = JobStore.from_settings(settings, files=self.storage)
        self.workers = WorkerRegistry(self.store.engine)
        self.registry: Registry = builtin_registry(settings.imports)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"
        self.mp = multiprocessing.get_context("forkserver")
        self.mp.set_forkserver_preload(["docqueue.dispatch.child"])
        self.children: list[ChildHandle] = []
        #: How many children hold jobs, for the children to share the cores out (child.py).
        #: Without a lock: only this process writes it, and a child killed while it held a
        #: lock would leave every later reader waiting for good.
        self.running = self.mp.RawValue(ctypes.c_int, 0)
        self.buffer: deque[Task] = deque()
        self.pending = Pending()
        self.timers = Timers()
        self.housekeeping = Housekeeping(self.store, self.storage, settings.retention_days)
        self.stopping = False
        self.store_failures = 0
        #: Moving average of job run time, which decides how far to claim ahead and in chunks.
        #: Until jobs have been timed they count as long ones: claimed one per free child.
        self.average_run = 2 * max(
            settings.concurrency * settings.prefetch_seconds, settings.short_job_seconds
        )
        self.lookout = Lookout(self.store, settings)
        #: Most jobs claimed ahead, however short they are.
        self.prefetch: int = (
            settings.prefetch
            if settings.prefetch is not None
            else DEFAULT_PREFETCH["postgresql" if self.store.is_postgres else "sqlite"]
        )
        self.writer = StoreWriter(self.store, settings, self.worker_id, self._takes_file)

    # -- life cycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Work until stopped by a signal (or, in burst mode, until the queues are empty)."""
        self.workers.register(
            self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.settings.queues,
            concurrency=self.settings.concurrency,
        )
        log.info("worker %s started on queues %s", self.worker_id, ",".join(self.settings.queues))
        self.children = [self._spawn() for _ in range(self.settings.concurrency)]
        with closing(self):
            try:
                with startup_objects_frozen():
                    while self._step():
                        pass
            finally:
                self._shutdown()

    def close(self) -> None:
        """Release what the supervisor holds open: the writer's thread and the connections to
        the store. `run` ends with this; the owner of a supervisor that never ran calls it."""
        self.writer.close()
        self.lookout.close()
        self.store.engine.dispose()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """First call: stop claiming and let running jobs finish; second call: stop now."""
        now = time.monotonic()
        if self.stopping:
            self.timers.stop_by = now
            return
        self.stopping = True
        self.timers.stop_by = now + self.settings.shutdown_grace
        grace = self.settings.shutdown_grace
        log.info("worker %s stopping; running jobs get %ss", self.worker_id, grace)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully; a second one stops it at once."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _step(self) -> bool:
        """One turn of the loop; False when the worker should exit."""
        try:
            self._write()
        except DBAPIError as exc:
            return self._store_down(exc)
        self._assign()
        busy = [c for c in self.children if c.busy]
        self.running.value = len(busy)
        if self.stopping and (not busy or time.monotonic() >= (self.timers.stop_by or 0)):
            return False
        if not self.stopping and self.burst and not busy and self._drained():
            return False
        self._wait(busy)
        self._enforce_deadlines()
        try:
            self._maintain()
        except DBAPIError as exc:
            return self._store_down(exc)
        return True

    def _store_down(self, exc: DBAPIError) -> bool:
        """The store failed a statement: keep what is pending, wait a little, try again.

        Children go on with their jobs meanwhile; outcomes wait in memory until the store
        answers (if this process dies first, the leases expire and the jobs run again).
        """
        self.store_failures += 1
        pause = min(STORE_RETRY_MAX, 0.1 * 2**self.store_failures)
        log.warning("the job store failed (%s); trying again in %.1fs", exc.orig or exc, pause)
        time.sleep(pause)
        return not (self.stopping and time.monotonic() >= (self.timers.stop_by or 0))

    def _drained(self) -> bool:
        """True when nothing is buffered and the store has no due job for this worker."""
        if self.buffer or self.lookout.urgent or self.pending.completions:
            return False
        if self.writer.busy:
            return False
        return not self.store.has_due(self.settings.queues)

    def _shutdown(self) -> None:
        """Give back what is not finished, stop the children, say goodbye in the store."""
        self.stopping = True
        try:
            self._collect(block=True)  # jobs it claimed are given back below
        except DBAPIError as exc:
            log.error("the last commit failed: %s", exc)
        for child in self.children:
            if child.busy:
                child.kill()
                self._give_back(child, include_running=True)
        self.pending.release += [(job.id, job.attempt) for job, _ in self.buffer]
        self.buffer.clear()
        try:
            self._write(block=True)
        except DBAPIError as exc:  # the leases will expire and the reaper will take the jobs back
            log.error("could not record the last outcomes or give jobs back: %s", exc)
        for child in self.children:
            child.stop()
        self.workers.stop(self.worker_id)
        log.info("worker %s stopped", self.worker_id)

    def _spawn(self) -> ChildHandle:
        """Start a child process."""
        return ChildHandle.spawn(self.mp, self.settings, self.running)

    def _replace(self, child: ChildHandle) -> None:
        """Put a fresh child in the place of `child` (or drop it while stopping)."""
        if self.stopping:
            self.children.remove(child)
        else:
            self.children[self.children.index(child)] = self._spawn()

    # -- claiming and writing ----------------------------------------------------------------

    def _write(self, *, block: bool = False) -> None:
        """Collect the commit in flight; write gathered progress and releases; start the next
        commit of outcomes and claims when one is due (and, with `block`, wait for it)."""
        self._collect(block=block)
        if self.pending.progress:
            # Only the latest report of each attempt is worth a write.
            latest = {(update[0], update[1]): update for update in self.pending.progress}
            self.store.report_progress(list(latest.values()))
            self.pending.progress = []
        if self.pending.release:
            released = self.store.release(self.pending.release)
            log.info("gave %d unstarted or unfinished jobs back to the queue", released)
            self.pending.release = []
        if self.writer.busy:
            return
        want = 0 if self.stopping else self._want()
        if want and not self.pending.completions and not self.lookout.look():
            want = 0
        if not want and not self._flush_due():
            return
        completions, self.pending.completions = self.pending.completions, []
        if want:
            self.lookout.claiming()
        self.writer.start(completions, want)
        if block:
            self._collect(block=True)

    def _collect(self, *, block: bool = False) -> None:
        """Take in what the last commit did: log dropped outcomes, buffer the jobs it claimed."""
        try:
            written = self.writer.collect(block=block)
        except DBAPIError:
            self.pending.completions[:0] = self.writer.take_back()
            self.lookout.failed()
            raise
        if written is None:
            return
        self.store_failures = 0
        for completion, state in zip(written.completions, written.states, strict=True):
            if state is None:
                log.info(
                    "job %s no longer held by this attempt; outcome dropped", completion.job_id
                )
        if written.wanted:
            self.lookout.claimed(len(written.jobs), written.wanted)
            self.buffer.extend((job, written.inputs.get(job.id, [])) for job in written.jobs)

    def _short_jobs(self) -> bool:
        """True while jobs take less than `short_job_seconds` on average."""
        return self.average_run < self.settings.short_job_seconds

    def _want(self) -> int:
        """How many jobs to claim: one per idle child, plus the prefetch, less what is buffered.

        Claiming ahead amortises one transaction over many jobs and lets a child that finishes
        start the next job at once, without a trip to the store. The prefetch holds about
        `prefetch_seconds` of work per child, so a job claimed ahead never waits long; jobs
        longer than that are claimed one per free child.
        """
        idle = sum(1 for c in self.children if not c.busy)
        ahead = self.settings.concurrency * self.settings.prefetch_seconds
        prefetch = min(self.prefetch, self._jobs_within(ahead))
        if len(self.buffer) >= idle and len(self.buffer) > prefetch // 2:
            return 0  # enough in hand: refill in one batch when half of it is used
        return max(0, idle + prefetch - len(self.buffer))

    def _jobs_within(self, seconds: float) -> int:
        """How many jobs of the average run time fit in `seconds` of work."""
        return int(seconds / max(self.average_run, 1e-4))

    def _flush_due(self) -> bool:
        """True when gathered outcomes should be written now rather than with the next claim."""
        if not self.pending.completions:
            return False
        if self.stopping or not any(c.busy for c in self.children):
            return True
        if not self.buffer and any(not c.busy for c in self.children):
            return True  # nothing left to hand out: the next claim is not coming soon
        return time.monotonic() >= self.timers.flush_by

    def _takes_file(self, operation: str) -> bool:
        """True when the operation's processor reads input files."""
        processor = self.registry.processors.get(operation)
        return processor is None or processor.takes_file

    def _has_room(self) -> bool:
        """True when a child could take a job now."""
        return not self.stopping and any(not c.busy for c in self.children)

    def _assign(self) -> None:
        """Hand buffered jobs to idle children: one each, or chunks of short jobs. Once stopping,
        none: jobs not started go back to the queue for other workers."""
        if self.stopping:
            return
        idle = [c for c in self.children if not c.busy]
        for waiting, child in enumerate(idle):
            if not self.buffer:
                self._ask_back(len(idle) - waiting)
                return
            size = 1
            if self._short_jobs():  # at most prefetch_seconds of work, to keep some for the rest
                most = self._jobs_within(self.settings.prefetch_seconds)
                size = max(1, min(MAX_CHUNK, most, len(self.buffer) // len(idle)))
            if self.settings.max_jobs_per_child:
                size = min(size, max(1, self.settings.max_jobs_per_child - child.jobs_run))
            child.assign([self.buffer.popleft() for _ in range(min(size, len(self.buffer)))])

    def _ask_back(self, idle: int) -> None:
        """With nothing buffered for `idle` children, ask the children with the most jobs not
        started (two or more) to hand half of them back, one child for each idle one. (One job
        would end no sooner: the idle child could start it only when its holder would.)"""
        holders = sorted(((c.unstarted(), c) for c in self.children), key=lambda h: -h[0])
        for unstarted, holder in holders[:idle]:
            if unstarted >= 2:
                holder.ask_back(unstarted // 2)

    def _timeout(self, job: Job) -> float:
        """The job's own timeout, else its processor's, else the setting."""
        processor = self.registry.processors.get(job.operation)
        return job.timeout or (processor and processor.timeout) or self.settings.job_timeout

    # -- waiting and results -----------------------------------------------------------------

    def _wait(self, busy: list[ChildHandle]) -> None:
        """Sleep until a child reports, a child dies, a job is queued, or a timer is due."""
        objects: list[Any] = [c.conn for c in busy] + [c.process.sentinel for c in self.children]
        objects.append(self.writer.wakeup)  # a commit finished: the next _step collects it
        if not self.stopping:
            objects += self.lookout.sources(self._has_room())
        for ready in wait(objects, self._sleep(busy)):
            if self.lookout.heard(ready):
                continue
            for child in list(self.children):
                if ready is child.conn:
                    self._receive(child)
                elif ready == child.process.sentinel:
                    self._buried(child)

    def _sleep(self, busy: list[ChildHandle]) -> float:
        """Seconds until the next timer that needs the loop (at most half a second)."""
        now = time.monotonic()
        wake = [self.timers.heartbeat, self.timers.reap, now + 0.5]
        wake += [c.kill_at for c in busy if c.kill_at is not None]
        if self.stopping:
            wake.append(self.timers.stop_by or now)
        if self.writer.busy:  # its wakeup ends the wait; nothing can be written before that
            return max(0.0, min(wake) - now)
        if self.pending.completions:
            wake.append(self.timers.flush_by)
        if self._has_room():
            wake.append(self.lookout.next_look)
        return max(0.0, min(wake) - now)

    def _receive(self, child: ChildHandle) -> None:
        """Take every message a child has sent."""
        while child.busy and child.conn.poll():
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                return  # the child died; its sentinel tells the rest
            if message[0] == "progress":
                self.pending.progress.append(message[1:])
            elif message[0] == "handed back":
                self.buffer.extendleft(reversed(child.handed_back(message[1])))
            else:
                self._finished(child, message[1])

    def _finished(self, child: ChildHandle, outcomes: list[tuple[UUID, int, Outcome]]) -> None:
        """A child ran its chunk: queue the outcomes for the next commit."""
        if not self.pending.completions:
            self.timers.flush_by = time.monotonic() + GROUP_COMMIT_WINDOW
        self.pending.completions += [Completion(*outcome) for outcome in outcomes]
        took = (time.monotonic() - child.assigned_at) / len(outcomes)
        self.average_run = 0.8 * self.average_run + 0.2 * took
        child.tasks = []
        child.jobs_run += len(outcomes)
        limit = self.settings.max_jobs_per_child
        if limit and child.jobs_run >= limit and not self.stopping:
            child.stop()
            self._replace(child)

    def _buried(self, child: ChildHandle) -> None:
        """A child exited on its own: its running job failed this attempt; replace the child."""
        if child not in self.children or child.process.is_alive():
            return
        self._receive(child)  # it may have reported before dying
        if child not in self.children:
            return  # that report reached its job limit: it was replaced already
        child.process.join()
        code = child.process.exitcode or 0
        running = child.current()
        if running is not None:
            how = (
                f"signal {-code} ({signal.Signals(-code).name})"
                if code < 0
                else f"exit code {code}"
            )
            log.warning("child %s running job %s died: %s", child.process.pid, running.id, how)
            self._fail(running, "WorkerDied", f"worker process died: {how}")
        self._give_back(child, include_running=False)
        child.kill()
        self._replace(child)

    def _give_back(self, child: ChildHandle, *, include_running: bool) -> None:
        """Queue a child's unreported jobs to be released (not counted as attempts)."""
        for job, running in child.held():
            if include_running or not running:
                self.pending.release.append((job.id, job.attempt))
        child.tasks = []

    def _fail(self, job: Job, kind: str, message: str) -> None:
        """Record a failed attempt, to be written at once."""
        self.pending.completions.append(
            Completion(job.id, job.attempt, Failed(ErrorInfo(kind, message)))
        )
        self.timers.flush_by = 0.0

    def _enforce_deadlines(self) -> None:
        """Kill children past their job's timeout, or past the grace after a cancellation."""
        now = time.monotonic()
        for child in list(self.children):
            running = child.current()
            if running is None:
                continue
            _, started = child.position()
            timeout = self._timeout(running)
            if child.kill_at is not None and not child.runs_stopped_job():
                child.kill_at = None  # the stopped job ended in time; the child went on
            if child.kill_at is not None and now >= child.kill_at:
                log.info(
                    "job %s did not stop within %ss of its cancellation", running.id, CANCEL_GRACE
                )
            elif time.time() - started >= timeout:
                self._fail(
                    running, "JobTimeout", f"job ran past its {timeout:g}s timeout and was killed"
                )
            else:
                continue
            child.kill()
            self._give_back(child, include_running=False)
            self._replace(child)

    # -- periodic duties ---------------------------------------------------------------------

    def _maintain(self) -> None:
        """Renew leases, take back expired ones, prune old jobs, sweep storage, when each is due."""
        now = time.monotonic()
        lease = self.settings.lease_seconds
        if now >= self.timers.heartbeat:
            self.timers.heartbeat = now + lease / 3
            self._heartbeat()
        if now >= self.timers.reap:
            self.timers.reap = now + min(lease / 2, 5.0)
            reaped = self.store.reap_expired()
            if reaped:
                log.warning("took back %d jobs whose worker stopped renewing the lease", reaped)
        self.housekeeping.run(now)

    def _heartbeat(self) -> None:
        """Renew leases; stop the children whose running job was cancelled or taken back."""
        self.workers.beat(self.worker_id)
        held = [(job.id, job.attempt) for job, _ in self.buffer]
        held += [(job.id, job.attempt) for c in self.children for job, _ in c.held()]
        lease = self.settings.lease_seconds
        lost = set(self.store.heartbeat(self.worker_id, held, lease_seconds=lease))
        if not lost:
            return
        self.buffer = deque(task for task in self.buffer if task[0].id not in lost)
        for child in self.children:
            running = child.current()
            if running is not None and running.id in lost and child.kill_at is None:
                log.info("job %s was cancelled or taken back; stopping it", running.id)
                child.stop_job(running, CANCEL_GRACE)
