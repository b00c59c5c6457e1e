"""The supervisor's bookkeeping: each child and the chunk of jobs it holds, timers, pending writes."""

from __future__ import annotations

import ctypes
import time
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import SynchronizedArray
from uuid import UUID

from docqueue.dispatch.child import Task, child_main
from docqueue.models import Completion, Job
from docqueue.settings import Settings


@dataclass
class ChildHandle:
    """A child process, its pipe, and the jobs handed to it that it has not reported yet.

    A child reports a chunk twice: "ran" once its last job has run (it is then ready for the
    next chunk), and "done" with the outcomes once their outputs are durable. In between, it
    runs the next chunk while its publisher thread syncs the last one's outputs.
    """

    process: BaseProcess
    conn: Connection
    #: [sequence number of the job it runs (its jobs count from 0 since it started), the wall
    #: time that job started (0.0 while it runs none)], written by the child; and the sequence
    #: number of the job to stop (-1: none), written by the supervisor.
    slot: SynchronizedArray[float]
    #: The jobs handed to it and not reported yet, oldest first: those of chunks it has run
    #: whose outputs are still being made durable, then those of the chunk it runs.
    tasks: list[Task] = field(default_factory=list)
    #: True while it waits for a chunk: it has run every job handed to it.
    ready: bool = True
    #: The sizes of the chunks in `tasks`, oldest first.
    chunks: list[int] = field(default_factory=list)
    #: When the chunk it runs was handed to it, and when it last said "ran" (monotonic).
    assigned_at: float = 0.0
    ran_at: float = 0.0
    kill_at: float | None = None
    #: Jobs it has reported; the sequence number of `tasks[0]`.
    jobs_run: int = 0

    @classmethod
    def spawn(cls, mp: ForkServerContext, settings: Settings, running: ctypes.c_int) -> ChildHandle:
        """Start a child process; `running` counts the children that hold jobs."""
        parent_conn, child_conn = mp.Pipe()
        slot = mp.Array("d", [0.0, 0.0, -1.0])
        args = (child_conn, slot, running, settings)
        process = mp.Process(target=child_main, args=args, daemon=True)
        process.start()
        child_conn.close()
        return cls(process=process, conn=parent_conn, slot=slot)

    @property
    def busy(self) -> bool:
        """True while it holds jobs: running them, or making their outputs durable."""
        return bool(self.tasks)

    @property
    def takes_chunk(self) -> bool:
        """True when it may be handed a chunk: it waits for one, and at most one chunk of its
        own is still making its outputs durable (so a stalled disk holds back two chunks, not
        every job the worker claims)."""
        return self.ready and len(self.chunks) <= 1

    def assign(self, tasks: list[Task]) -> None:
        """Hand it a chunk of jobs to run one after the other; it must take one."""
        assert self.takes_chunk, "a child runs one chunk at a time, one more publishing"
        self.tasks += tasks
        self.chunks.append(len(tasks))
        self.ready = False
        self.assigned_at = time.monotonic()
        self.kill_at = None
        self.conn.send(tasks)

    def ran(self) -> float:
        """It has run its chunk and waits for the next: the mean seconds one of its jobs took."""
        self.ready = True
        self.kill_at = None  # a job it was asked to stop has ended with the chunk
        self.ran_at = time.monotonic()
        return (self.ran_at - self.assigned_at) / max(1, self.chunks[-1])

    def reported(self, count: int) -> None:
        """Its oldest chunk, of `count` jobs, is reported (their outcomes are in hand)."""
        del self.tasks[:count]
        del self.chunks[0]
        self.jobs_run += count

    def running(self) -> tuple[Job, float] | None:
        """The job it runs now and the wall time that job started; None between jobs."""
        with self.slot.get_lock():
            number, started = int(self.slot[0]), self.slot[1]
        index = number - self.jobs_run
        if not started or not 0 <= index < len(self.tasks):
            return None
        return self.tasks[index][0], started

    def current(self) -> Job | None:
        """The job it runs now."""
        running = self.running()
        return running[0] if running else None

    def blamed(self) -> Job | None:
        """The job its death is charged to: the one it runs, else (between jobs, when it may
        have died storing outputs or reading a chunk) the oldest it holds."""
        return self.current() or (self.tasks[0][0] if self.tasks else None)

    def stop_job(self, job: Job, grace: float) -> None:
        """Ask it to stop `job`, one of the jobs it holds, and to be killed if it still runs
        that job `grace` seconds from now."""
        index = next(n for n, (held, _) in enumerate(self.tasks) if held.id == job.id)
        with self.slot.get_lock():
            self.slot[2] = self.jobs_run + index
        self.kill_at = time.monotonic() + grace

    def runs_stopped_job(self) -> bool:
        """True while the job it was asked to stop is still the one it runs."""
        with self.slot.get_lock():
            number, started, stop = self.slot[0], self.slot[1], self.slot[2]
        return stop >= 0 and bool(started) and number == stop

    def stop(self) -> None:
        """Ask it to exit, and make sure it does."""
        with suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=5)
        self.kill()

    def kill(self) -> None:
        """SIGKILL it (if alive) and reap it."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


@dataclass
class Timers:
    """When the supervisor next does each periodic thing (monotonic seconds)."""

    heartbeat: float = 0.0
    reap: float = 0.0
    flush_by: float = 0.0
    stop_by: float | None = None


@dataclass
class Pending:
    """What the supervisor has to write: outcomes, progress, jobs to give back."""

    completions: list[Completion] = field(default_factory=list)
    progress: list[tuple[UUID, int, float, str | None]] = field(default_factory=list)
    release: list[tuple[UUID, int]] = field(default_factory=list)
