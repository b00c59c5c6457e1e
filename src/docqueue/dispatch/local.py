"""The local worker: a supervisor that claims jobs from the store and runs them in child processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any
from uuid import UUID, uuid4

from docqueue.dispatch.child import Task, child_main
from docqueue.models import Completion, ErrorInfo, Failed, Job
from docqueue.processors import Registry, builtin_registry
from docqueue.settings import Settings
from docqueue.store import JobStore, WorkerRegistry
from docqueue.store.engine import Listener

log = logging.getLogger("docqueue.worker")
#: Seconds a child gets to stop on its own after its job was cancelled, before it is killed.
CANCEL_GRACE = 5.0
#: Seconds between idle polls on PostgreSQL, where NOTIFY wakes workers and polls are a fallback.
NOTIFY_FALLBACK_POLL = 1.0
#: Seconds between prunes of finished jobs past the retention time.
PRUNE_INTERVAL = 600.0


@dataclass
class Child:
    """One child process and the job it runs, if any."""

    process: BaseProcess
    conn: Connection
    cancel: Event
    job: Job | None = None
    deadline: float = 0.0
    kill_at: float | None = None
    jobs_run: int = 0


@dataclass
class Timers:
    """When the supervisor next does each periodic thing (monotonic seconds)."""

    poll: float = 0.0
    heartbeat: float = 0.0
    reap: float = 0.0
    prune: float = 0.0
    stop_by: float | None = None
    last_claim_full: bool = False
    idle_since: float = field(default_factory=time.monotonic)


class Supervisor:
    """Claims jobs, hands them to N children, enforces timeouts and leases, stops gracefully."""

    def __init__(self, settings: Settings, *, burst: bool = False, prefetch: int = 0) -> None:
        self.settings = settings
        self.burst = burst
        self.prefetch = prefetch
        self.store = JobStore.from_settings(settings)
        self.workers = WorkerRegistry(self.store.engine)
        self.registry: Registry = builtin_registry(settings.imports)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"
        self.mp = multiprocessing.get_context("forkserver")
        self.mp.set_forkserver_preload(["docqueue.dispatch.child"])
        self.children: list[Child] = []
        self.buffer: deque[Task] = deque()
        self.completions: list[Completion] = []
        self.progress: list[tuple[UUID, int, float, str | None]] = []
        self.timers = Timers()
        self.stopping = False
        self.listener = Listener(self.store.engine) if self.store.is_postgres else None

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
        try:
            while self._step():
                pass
        finally:
            self._shutdown()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """First call: stop claiming and let running jobs finish; second call: stop now."""
        now = time.monotonic()
        if self.stopping:
            self.timers.stop_by = now
            return
        self.stopping = True
        self.timers.stop_by = now + self.settings.shutdown_grace
        log.info(
            "worker %s stopping; running jobs get %ss", self.worker_id, self.settings.shutdown_grace
        )

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully; a second one stops it at once."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _step(self) -> bool:
        """One turn of the loop; False when the worker should exit."""
        self._flush_progress()
        self._exchange()
        self._assign()
        busy = [c for c in self.children if c.job is not None]
        if self.stopping and (not busy or time.monotonic() >= (self.timers.stop_by or 0)):
            return False
        if not self.stopping and self.burst and not busy and self._drained():
            return False
        self._wait(busy)
        self._enforce_deadlines()
        self._maintain()
        return True

    def _drained(self) -> bool:
        """True when nothing is buffered and the store has no due job for this worker."""
        if self.buffer or self.timers.last_claim_full:
            return False
        return not self.store.has_due(self.settings.queues)

    def _shutdown(self) -> None:
        """Release what is not finished, stop the children, say goodbye in the store."""
        self.stopping = True
        self._flush_progress()
        self._exchange()
        held = [(job.id, job.attempt) for job, _ in self.buffer]
        held += [(c.job.id, c.job.attempt) for c in self.children if c.job is not None]
        for child in self.children:
            if child.job is not None:
                child.process.kill()
        if held:
            released = self.store.release(held)
            log.info("released %d unfinished jobs back to the queue", released)
        for child in self.children:
            self._stop_child(child)
        self.workers.stop(self.worker_id)
        if self.listener is not None:
            self.listener.close()
        log.info("worker %s stopped", self.worker_id)

    # -- children ----------------------------------------------------------------------------

    def _spawn(self) -> Child:
        """Start a child process."""
        parent_conn, child_conn = self.mp.Pipe()
        cancel = self.mp.Event()
        process = self.mp.Process(
            target=child_main, args=(child_conn, cancel, self.settings), daemon=True
        )
        process.start()
        child_conn.close()
        return Child(process=process, conn=parent_conn, cancel=cancel)

    def _stop_child(self, child: Child) -> None:
        """Ask a child to exit, and make sure it does."""
        with suppress(OSError):
            child.conn.send(None)
        child.process.join(timeout=5)
        if child.process.is_alive():
            child.process.kill()
            child.process.join()
        child.conn.close()

    def _replace(self, child: Child) -> None:
        """Put a fresh child in the place of `child`."""
        self.children[self.children.index(child)] = self._spawn()

    # -- claiming ----------------------------------------------------------------------------

    def _exchange(self) -> None:
        """Record finished jobs and claim the next ones in one transaction (group commit)."""
        want = 0 if self.stopping else self._want()
        if not self.completions and want and not self._claim_due():
            want = 0
        if not self.completions and not want:
            return
        states, jobs = self.store.complete_and_claim(
            self.completions,
            self.worker_id,
            self.settings.queues,
            want,
            lease_seconds=self.settings.lease_seconds,
            queue_limits=self.settings.queue_limits,
        )
        for completion, state in zip(self.completions, states, strict=True):
            if state is None:
                log.info(
                    "job %s: attempt %s no longer held; outcome dropped",
                    completion.job_id,
                    completion.attempt,
                )
        self.completions = []
        if want:
            self.timers.last_claim_full = len(jobs) == want
            self.timers.poll = time.monotonic() + self._idle_poll()
            with_files = [j.id for j in jobs if self._takes_file(j.operation)]
            inputs = self.store.inputs(with_files)
            self.buffer.extend((job, inputs.get(job.id, [])) for job in jobs)

    def _want(self) -> int:
        """How many jobs to claim: one per idle child, plus the prefetch, less what is buffered."""
        idle = sum(1 for c in self.children if c.job is None)
        return max(0, idle + self.prefetch - len(self.buffer))

    def _claim_due(self) -> bool:
        """True when a claim may find work: right after a full claim, or a due poll that finds some."""
        if self.timers.last_claim_full:
            return True
        now = time.monotonic()
        if now < self.timers.poll:
            return False
        self.timers.poll = now + self._idle_poll()
        return self.store.has_due(self.settings.queues)

    def _takes_file(self, operation: str) -> bool:
        """True when the operation's processor reads input files."""
        processor = self.registry.processors.get(operation)
        return processor is None or processor.takes_file

    def _idle_poll(self) -> float:
        """Seconds between polls while there is room for work."""
        if self.listener is not None:
            return max(self.settings.poll_interval, NOTIFY_FALLBACK_POLL)
        return self.settings.poll_interval

    def _assign(self) -> None:
        """Hand buffered jobs to idle children."""
        for child in self.children:
            if not self.buffer:
                return
            if child.job is None:
                job, inputs = self.buffer.popleft()
                child.cancel.clear()
                child.job = job
                child.deadline = time.monotonic() + self._timeout(job)
                child.kill_at = None
                child.conn.send((job, inputs))

    def _timeout(self, job: Job) -> float:
        """The job's own timeout, else its processor's, else the setting."""
        processor = self.registry.processors.get(job.operation)
        return job.timeout or (processor and processor.timeout) or self.settings.job_timeout

    # -- waiting and results -----------------------------------------------------------------

    def _wait(self, busy: list[Child]) -> None:
        """Sleep until a child reports, a child dies, a job is queued, or a timer is due."""
        now = time.monotonic()
        wake = [self.timers.heartbeat, self.timers.reap]
        wake += [c.deadline for c in busy] + [c.kill_at for c in busy if c.kill_at is not None]
        if self.stopping:
            wake.append(self.timers.stop_by or now)
        elif any(c.job is None for c in self.children):
            wake.append(self.timers.poll)
        timeout = max(0.0, min(wake) - now)
        objects: list[Any] = [c.conn for c in busy] + [c.process.sentinel for c in self.children]
        if self.listener is not None and not self.stopping:
            objects.append(self.listener)
        for ready in wait(objects, timeout):
            if isinstance(ready, Listener):
                if ready.drain() & set(self.settings.queues):
                    self.timers.poll = 0.0
                continue
            for child in list(self.children):
                if ready is child.conn:
                    self._receive(child)
                elif ready == child.process.sentinel:
                    self._buried(child)

    def _receive(self, child: Child) -> None:
        """Take every message a child has sent."""
        while child.conn.poll():
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                return  # the child died; its sentinel tells the rest
            if message[0] == "progress":
                self.progress.append(message[1:])
            elif message[0] == "done":
                _, job_id, attempt, outcome = message
                self.completions.append(Completion(job_id, attempt, outcome))
                child.job = None
                child.jobs_run += 1
                limit = self.settings.max_jobs_per_child
                if limit and child.jobs_run >= limit and not self.stopping:
                    self._stop_child(child)
                    self._replace(child)
                return

    def _buried(self, child: Child) -> None:
        """A child exited on its own: its job (if any) failed this attempt; replace the child."""
        if child not in self.children or child.process.is_alive():
            return
        self._receive(child)  # it may have reported before dying
        child.process.join()
        code = child.process.exitcode or 0
        if child.job is not None:
            how = (
                f"signal {-code} ({signal.Signals(-code).name})"
                if code < 0
                else f"exit code {code}"
            )
            log.warning("child %s running job %s died: %s", child.process.pid, child.job.id, how)
            self._fail(child, "WorkerDied", f"worker process died: {how}")
        child.conn.close()
        if not self.stopping:
            self._replace(child)
        else:
            self.children.remove(child)

    def _fail(self, child: Child, kind: str, message: str) -> None:
        """Record a failed attempt for the child's job."""
        assert child.job is not None
        error = ErrorInfo(kind, message)
        self.completions.append(Completion(child.job.id, child.job.attempt, Failed(error)))
        child.job = None

    def _enforce_deadlines(self) -> None:
        """Kill children past their job's timeout, or past the grace after a cancellation."""
        now = time.monotonic()
        for child in list(self.children):
            if child.job is None:
                continue
            if child.kill_at is not None and now >= child.kill_at:
                child.job = None  # cancelled or lost: nothing to record
            elif now >= child.deadline:
                seconds = self._timeout(child.job)
                self._fail(
                    child, "JobTimeout", f"job ran past its {seconds:g}s timeout and was killed"
                )
            else:
                continue
            child.process.kill()
            child.process.join()
            child.conn.close()
            self._replace(child)

    def _flush_progress(self) -> None:
        """Write the progress reports gathered since the last flush, in one transaction."""
        if self.progress:
            self.store.report_progress(self.progress)
            self.progress = []

    # -- periodic duties ---------------------------------------------------------------------

    def _maintain(self) -> None:
        """Renew leases, take back expired ones, prune old jobs, when each is due."""
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
        if now >= self.timers.prune and self.settings.retention_days:
            self.timers.prune = now + PRUNE_INTERVAL
            self.store.prune(timedelta(days=self.settings.retention_days))

    def _heartbeat(self) -> None:
        """Renew leases; cancel the children whose jobs were cancelled or taken back."""
        self.workers.beat(self.worker_id)
        busy = {c.job.id: c for c in self.children if c.job is not None}
        held = [(c.job.id, c.job.attempt) for c in busy.values() if c.job is not None]
        held += [(job.id, job.attempt) for job, _ in self.buffer]
        lost = set(
            self.store.heartbeat(self.worker_id, held, lease_seconds=self.settings.lease_seconds)
        )
        if not lost:
            return
        self.buffer = deque(task for task in self.buffer if task[0].id not in lost)
        for job_id in lost & busy.keys():
            child = busy[job_id]
            log.info("job %s was cancelled or taken back; stopping it", job_id)
            child.cancel.set()
            child.kill_at = time.monotonic() + CANCEL_GRACE
