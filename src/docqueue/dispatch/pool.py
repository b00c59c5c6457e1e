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
    """A child process, its pipe, and the jobs handed to it that it has not reported yet."""

    process: BaseProcess
    conn: Connection
    #: [index of the running job in `tasks`, wall time it started], written by the child; the
    #: index of the job to stop (-1: none) and how many jobs to hand back from the end of
    #: `tasks` (0: none), written by the supervisor.
    slot: SynchronizedArray[float]
    tasks: list[Task] = field(default_factory=list)
    assigned_at: float = 0.0
    kill_at: float | None = None
    jobs_run: int = 0
    #: Jobs asked back and not yet handed back (the child answers before its next job).
    asked_back: int = 0

    @classmethod
    def spawn(cls, mp: ForkServerContext, settings: Settings, running: ctypes.c_int) -> ChildHandle:
        """Start a child process; `running` counts the children that hold jobs."""
        parent_conn, child_conn = mp.Pipe()
        slot = mp.Array("d", [0.0, 0.0, -1.0, 0.0])
        args = (child_conn, slot, running, settings)
        process = mp.Process(target=child_main, args=args, daemon=True)
        process.start()
        child_conn.close()
        return cls(process=process, conn=parent_conn, slot=slot)

    @property
    def busy(self) -> bool:
        """True while it holds jobs."""
        return bool(self.tasks)

    def assign(self, tasks: list[Task]) -> None:
        """Hand it a chunk of jobs to run one after the other."""
        with self.slot.get_lock():
            self.slot[0], self.slot[1], self.slot[2], self.slot[3] = 0, time.time(), -1, 0
        self.tasks = tasks
        self.assigned_at = time.monotonic()
        self.kill_at = None
        self.asked_back = 0
        self.conn.send(tasks)

    def unstarted(self) -> int:
        """How many of its jobs it has not started and may still hand back."""
        if not self.tasks or self.asked_back:
            return 0
        index, _ = self.position()
        return len(self.tasks) - index - 1

    def ask_back(self, count: int) -> None:
        """Ask it to hand back `count` jobs from the end of its chunk, before its next job."""
        with self.slot.get_lock():
            self.slot[3] = count
        self.asked_back = count

    def handed_back(self, end: int) -> list[Task]:
        """It handed back its jobs from `end` on: those jobs, no longer its own."""
        returned, self.tasks = self.tasks[end:], self.tasks[:end]
        self.asked_back = 0
        return returned

    def position(self) -> tuple[int, float]:
        """Index of the running job and the wall time it started."""
        with self.slot.get_lock():
            index, started = int(self.slot[0]), self.slot[1]
        return min(index, len(self.tasks) - 1), started

    def split(self) -> tuple[list[Job], Job | None, list[Job]]:
        """The jobs it ran (unreported), the one it runs, and the ones it has not started."""
        if not self.tasks:
            return [], None, []
        index, _ = self.position()
        jobs = [job for job, _ in self.tasks]
        return jobs[:index], jobs[index], jobs[index + 1 :]

    def current(self) -> Job | None:
        """The job it runs now."""
        return self.split()[1]

    def stop_job(self, job: Job, grace: float) -> None:
        """Ask it to stop `job`, one of its chunk, and to be killed if it still runs that job
        `grace` seconds from now."""
        index = next(n for n, (held, _) in enumerate(self.tasks) if held.id == job.id)
        with self.slot.get_lock():
            self.slot[2] = index
        self.kill_at = time.monotonic() + grace

    def runs_stopped_job(self) -> bool:
        """True while the job it was asked to stop is still the one it runs."""
        with self.slot.get_lock():
            return int(self.slot[2]) >= 0 and int(self.slot[0]) == int(self.slot[2])

    def held(self) -> list[tuple[Job, bool]]:
        """Every job it holds, each with whether it is the one running."""
        before, running, after = self.split()
        return [(job, job is running) for job in (*before, *([running] if running else []), *after)]

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
