"""The `jobs` row of bench/ingest.py's throughput part: ingest jobs in 2 processes, no queue.

Not run on its own: bench/ingest.py starts a `JobPool` and times `JobPool.run` beside bare
extraction and the service. Each process runs the job as a worker child does (dispatch/child.py:
`Runner.execute`, outputs made durable by the background publisher while the next job runs,
freed memory retained, start-up objects left out of collections), fed one document at a time
from a multiprocessing queue, as bare extraction's Pool(2) is. There is no store, no supervisor
and no HTTP: this is what the service's pages/s would be if queueing cost nothing.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any
from uuid import UUID

from docqueue.heap import retain_freed_memory, startup_objects_frozen
from docqueue.models import Artifact, Outcome, Succeeded
from docqueue.processors import builtin_registry
from docqueue.runner import Runner
from docqueue.storage import BackgroundPublisher, Storage
from ingest_job_cost import ingest_job, store_input

#: Seconds `JobPool.run` waits for a process to report before it gives up.
ROUND_TIMEOUT = 600.0
#: What a task queue says instead of a document: the round is over, report it.
END_OF_ROUND = None
#: What a task queue says to make its process exit.
STOP = "stop"


class JobPool:
    """`processes` processes that run `ingest` jobs on inputs stored under `root`."""

    def __init__(self, root: Path, processes: int = 2) -> None:
        context = multiprocessing.get_context("spawn")
        self.storage = Storage(root.as_uri())
        self.tasks: Any = context.Queue()
        self.results: Any = context.Queue()
        # Each process takes one end-of-round mark and waits for the others to take theirs: one
        # that ran out of work first would otherwise take them all.
        self.ends = context.Barrier(processes)  # held: the processes unpickle it later
        self.processes: list[SpawnProcess] = [
            context.Process(
                target=_serve, args=(root, self.tasks, self.results, self.ends), daemon=True
            )
            for _ in range(processes)
        ]
        for process in self.processes:
            process.start()

    def store(self, datas: list[bytes]) -> list[Artifact]:
        """`datas` stored as inputs, as the service's uploads are before its queued runs start."""
        return [store_input(self.storage, data) for data in datas]

    def run(self, inputs: list[Artifact]) -> tuple[int, float]:
        """Ingest every input, each an `ingest` job, in the processes at once: the pages read
        and the seconds from the first task sent to the last job's outputs made durable."""
        started = time.perf_counter()
        for artifact in inputs:
            self.tasks.put(artifact)
        for _ in self.processes:
            self.tasks.put(END_OF_ROUND)
        pages = 0
        for _ in self.processes:
            report = self._report(started + ROUND_TIMEOUT)
            if isinstance(report, str):
                raise RuntimeError(f"an ingest job in the job pool failed: {report}")
            pages += report
        return pages, time.perf_counter() - started

    def _report(self, deadline: float) -> int | str:
        """The next report of a process; raise if one died or none reported by `deadline`."""
        while time.perf_counter() < deadline:
            try:
                report: int | str = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.pid for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"job pool processes {dead} died") from None
                continue
            return report
        raise RuntimeError(f"the job pool reported nothing in {ROUND_TIMEOUT:g} s")

    def close(self) -> None:
        """Stop the processes."""
        for _ in self.processes:
            self.tasks.put(STOP)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _serve(root: Path, tasks: Any, results: Any, ends: Any) -> None:
    """Run a job per input taken from `tasks`; at the end of a round, settle the last job, put
    the round's pages (or what failed) on `results`, and wait at `ends` for the others."""
    retain_freed_memory()
    storage = Storage(root.as_uri())
    publisher = BackgroundPublisher(storage)
    runner = Runner(builtin_registry(), storage, publisher=publisher)
    with startup_objects_frozen():
        pages = 0
        failure = ""
        previous: tuple[UUID, Outcome] | None = None
        while (task := tasks.get()) != STOP:
            if task is not END_OF_ROUND:
                job = ingest_job()
                outcome = runner.execute(job, [task])
                if isinstance(outcome, Succeeded):
                    pages += int(outcome.result["pages_read"])
            if previous is not None:
                # Once the next job has run, as a child settles its chunk: no wait for the disk.
                settled = publisher.settle(*previous)  # always: it also forgets the job
                failure = failure or _failure(settled)
                previous = None
            if task is END_OF_ROUND:
                results.put(failure or pages)
                pages, failure = 0, ""
                ends.wait()
            else:
                previous = (job.id, outcome)
    publisher.close()


def _failure(outcome: Outcome) -> str:
    """What went wrong with a job; empty when it succeeded."""
    return "" if isinstance(outcome, Succeeded) else repr(outcome)
