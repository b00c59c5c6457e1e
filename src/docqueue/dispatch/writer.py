"""The supervisor's group commits, on a thread of their own.

A commit that records outcomes and claims the next jobs spends most of its time waiting for the
store (round trips, the disk). Run on the supervisor's loop, that wait would leave the children
without work; on this thread the loop goes on handing out buffered jobs meanwhile. One commit
is in flight at a time, so outcomes are still written in the order they came.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

from docqueue.models import Artifact, Completion, Job, JobState
from docqueue.settings import Settings
from docqueue.store import JobStore


@dataclass
class Written:
    """What one commit did: the state each outcome left its job in, and the jobs claimed."""

    completions: list[Completion]
    states: list[JobState | None]
    jobs: list[Job]
    inputs: dict[UUID, list[Artifact]]
    wanted: int


class StoreWriter:
    """Runs `complete_and_claim` on a background thread and wakes the supervisor when done."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        worker_id: str,
        takes_file: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.takes_file = takes_file
        self.settings = settings
        self.worker_id = worker_id
        #: Becomes readable when a commit has finished; the supervisor waits on it.
        self.wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="docqueue-store-writer")
        self._inflight: Future[Written] | None = None
        self._completions: list[Completion] = []

    @property
    def busy(self) -> bool:
        """True while a commit is in flight (finished but not yet collected counts as busy)."""
        return self._inflight is not None

    def start(self, completions: list[Completion], want: int) -> None:
        """Record `completions` and claim up to `want` jobs, in the background."""
        assert self._inflight is None, "one commit at a time"
        self._completions = completions
        self._inflight = self._thread.submit(self._commit, completions, want)
        # Signalled once the future is done, not from inside `_commit`: a supervisor woken
        # before the result is set would find the commit unfinished and, the eventfd still
        # readable, wake again and again until the thread got the interpreter lock back.
        self._inflight.add_done_callback(self._signal)

    def _commit(self, completions: list[Completion], want: int) -> Written:
        """On the writer's thread: one transaction, then the input files of the jobs claimed."""
        states, jobs = self.store.complete_and_claim(
            completions,
            self.worker_id,
            self.settings.queues,
            want,
            lease_seconds=self.settings.lease_seconds,
            queue_limits=self.settings.queue_limits,
        )
        inputs = self.store.inputs([job.id for job in jobs if self.takes_file(job.operation)])
        return Written(completions, states, jobs, inputs, want)

    def _signal(self, _done: Future[Written]) -> None:
        """Wake the supervisor: the commit has finished, with its result or its error."""
        os.eventfd_write(self.wakeup, 1)

    def collect(self, *, block: bool = False) -> Written | None:
        """The finished commit, once; None while it runs (or when none was started).

        Raises the store's error when the commit failed; its completions are then handed back
        by `take_back`, so that nothing is lost.
        """
        # The signal comes from the future's done callback, which runs just after the future
        # says it is done: read it first, so that one seen now is never left readable (a wait
        # on a readable eventfd would return at once, again and again).
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.wakeup)
        inflight = self._inflight
        if inflight is None or not (block or inflight.done()):
            return None
        self._inflight = None
        written = inflight.result()
        self._completions = []
        return written

    def take_back(self) -> list[Completion]:
        """The completions of the last commit that failed, to be written again."""
        completions, self._completions = self._completions, []
        return completions

    def close(self) -> None:
        """Wait for a commit in flight, then stop the thread."""
        self._thread.shutdown(wait=True)
        os.close(self.wakeup)
