"""The worker child process: loads resources once, then runs the jobs its supervisor hands it."""

from __future__ import annotations

import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from docqueue.logs import configure_logging
from docqueue.models import Artifact, Job
from docqueue.processors import builtin_registry
from docqueue.runner import Runner
from docqueue.settings import Settings
from docqueue.storage import Storage

#: Least seconds between two progress reports of one job, so chatty processors stay cheap.
PROGRESS_INTERVAL = 0.25

Task = tuple[Job, list[Artifact]]


def child_main(conn: Connection, cancel: Event, settings: Settings) -> None:
    """Serve jobs from `conn` until it closes or says None."""
    # The supervisor decides when children stop; Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    configure_logging(settings)
    runner = Runner(builtin_registry(settings.imports), Storage(settings.resolved_storage_url))
    runner.resources.warm_up()
    while True:
        try:
            task: Task | None = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        run_task(conn, cancel, runner, task)


def run_task(conn: Connection, cancel: Event, runner: Runner, task: Task) -> None:
    """Run one job and send its progress and outcome back."""
    job, inputs = task
    last_report = 0.0

    def progress(fraction: float, message: str | None) -> None:
        nonlocal last_report
        now = time.monotonic()
        if fraction >= 1.0 or now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            conn.send(("progress", job.id, job.attempt, fraction, message))

    outcome = runner.execute(job, inputs, progress=progress, is_cancelled=cancel.is_set)
    conn.send(("done", job.id, job.attempt, outcome))
