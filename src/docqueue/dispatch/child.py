"""The worker child process: loads resources once, then runs the jobs its supervisor hands it."""

from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import SynchronizedArray
from uuid import UUID

from docqueue.heap import retain_freed_memory, startup_objects_frozen
from docqueue.logs import configure_logging
from docqueue.models import Artifact, ErrorInfo, Failed, Job, Outcome
from docqueue.processors import builtin_registry
from docqueue.runner import Runner
from docqueue.settings import Settings
from docqueue.storage import BackgroundPublisher, Storage

#: Least seconds between two progress reports of one job, so chatty processors stay cheap.
PROGRESS_INTERVAL = 0.25

Task = tuple[Job, list[Artifact]]
#: Variables the math libraries (torch, numpy) read their thread count from.
MATH_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def fair_share(cores: int, running: int) -> int:
    """Threads for one job's math while `running` jobs run at once: the cores shared out."""
    return max(1, cores // max(1, running))


def math_threads(concurrency: int) -> dict[str, str]:
    """The thread-count variables of one of `concurrency` children: the cores shared out."""
    threads = str(fair_share(available_cores(), concurrency))
    return dict.fromkeys(MATH_THREAD_VARIABLES, threads)


def child_main(
    conn: Connection,
    slot: SynchronizedArray[float],
    running: ctypes.c_int,
    settings: Settings,
) -> None:
    """Serve chunks of jobs from `conn` until it closes or says None.

    `slot` tells the supervisor which job of the chunk runs and since when (index, wall time),
    without a message per job: that is what its timeouts and crash accounting read. Its third
    value is the supervisor's: the index of a job to stop (cancelled, or its lease lost), so
    that a cancellation stops that job and none of those after it. Its fourth is the
    supervisor's too: how many jobs from the chunk's end to hand back (`_hand_back`), when
    another child has run out of work. `running` is the number of the supervisor's children
    that hold jobs: a job's math takes the cores the others leave.
    """
    # The supervisor decides when children stop; Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Math libraries (torch, numpy) start a thread per core in every child: share the cores out.
    for variable, threads in math_threads(settings.concurrency).items():
        os.environ.setdefault(variable, threads)
    configure_logging(settings)
    retain_freed_memory()
    storage = Storage(settings.resolved_storage_url)
    # Outputs are made durable on a thread while the next job of the chunk runs; the chunk's
    # outcomes go back once they all are.
    publisher = BackgroundPublisher(storage)
    cores = available_cores()
    runner = Runner(
        builtin_registry(settings.imports),
        storage,
        publisher=publisher,
        cpu_threads=lambda: fair_share(cores, running.value),
    )
    runner.resources.warm_up()
    try:
        # A job's collections then walk only what jobs made, not the libraries loaded so far.
        with startup_objects_frozen():
            while (chunk := _next_chunk(conn)) is not None:
                outcomes = _run_chunk(conn, slot, runner, chunk)
                settled = [
                    (job_id, attempt, publisher.settle(job_id, outcome))
                    for job_id, attempt, outcome in outcomes
                ]
                conn.send(("done", settled))
    finally:
        publisher.close()


def _run_chunk(
    conn: Connection, slot: SynchronizedArray[float], runner: Runner, chunk: list[Task]
) -> list[tuple[UUID, int, Outcome]]:
    """Run the jobs of a chunk one after the other, but those handed back; their outcomes."""
    outcomes = []
    index = 0
    while index < len(chunk := _hand_back(conn, slot, chunk, index)):
        slot[0], slot[1] = index, time.time()
        outcomes.append(run_task(conn, runner, chunk[index], partial(_stopped, slot, index)))
        index += 1
    return outcomes


def _next_chunk(conn: Connection) -> list[Task] | None:
    """The next chunk of jobs; None when the supervisor says so or has gone."""
    try:
        chunk: list[Task] | None = conn.recv()
    except EOFError:
        return None
    return chunk


def _hand_back(
    conn: Connection, slot: SynchronizedArray[float], chunk: list[Task], start: int
) -> list[Task]:
    """The chunk, less the jobs at its end the supervisor asked back, before the job at `start`
    begins: none of those it gives is started, and it tells the supervisor where the chunk
    now ends. Another child that ran out of work then takes them, rather than waiting idle
    while this one runs them all (the last chunks of a batch would otherwise end far apart)."""
    with slot.get_lock():
        wanted = int(slot[3])
        slot[3] = 0
    if wanted <= 0 or start == len(chunk):
        return chunk
    end = max(start, len(chunk) - wanted)
    conn.send(("handed back", end))
    return chunk[:end]


def _stopped(slot: SynchronizedArray[float], index: int) -> bool:
    """True when the supervisor asked the child to stop the job at `index` of its chunk."""
    return int(slot[2]) == index


def run_task(
    conn: Connection, runner: Runner, task: Task, is_cancelled: Callable[[], bool]
) -> tuple[UUID, int, Outcome]:
    """Run one job, sending its progress back; return its outcome."""
    job, inputs = task
    # A job shorter than the interval reports nothing: its completion says it all, and every
    # report is a write to the store.
    last_report = time.monotonic()

    def progress(fraction: float, message: str | None) -> None:
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            conn.send(("progress", job.id, job.attempt, fraction, message))

    try:
        outcome: Outcome = runner.execute(job, inputs, progress=progress, is_cancelled=is_cancelled)
    except SystemExit as exc:
        # exit() in a processor fails its job, not the child and the jobs of its chunk. (Here
        # no signal handler raises SystemExit: SIGTERM kills outright, SIGINT is ignored. In a
        # Celery pool process one does, to stop it, so the runner itself lets it through.)
        message = f"the processor called exit({exc.code!r})"
        outcome = Failed(ErrorInfo("SystemExit", message, traceback.format_exc()))
    return job.id, job.attempt, outcome
