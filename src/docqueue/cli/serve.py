"""`docqueue serve`: the HTTP API and a worker pool in one command, on the embedded defaults."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn

from docqueue.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("docqueue.serve")
#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


class WorkerProcess:
    """A `docqueue worker` child of the server, restarted if it dies while the server runs."""

    def __init__(self, settings: Settings, args: list[str]) -> None:
        self.settings = settings
        self.args = args
        self.stopping = threading.Event()
        self.process = self._start()
        self.watchdog = threading.Thread(target=self._watch, name="worker-watchdog", daemon=True)
        self.watchdog.start()

    def _start(self) -> subprocess.Popen[bytes]:
        """Start the worker with the same settings (environment and flags).

        It gets a process group of its own, so that Ctrl-C in a terminal reaches only the server,
        which then stops the worker with one SIGTERM (a second signal would mean "stop now");
        and it is told to stop if the server dies without doing so.
        """
        return subprocess.Popen(
            [sys.executable, "-m", "docqueue", "worker", *self.args],
            process_group=0,
            preexec_fn=_stop_with_parent,
        )

    def _watch(self) -> None:
        """Restart the worker when it exits on its own."""
        while not self.stopping.wait(1.0):
            code = self.process.poll()
            if code is not None and not self.stopping.is_set():
                log.error("worker process exited with %s; starting a new one", code)
                self.process = self._start()

    def stop(self) -> None:
        """Stop it gracefully (SIGTERM), within its grace period."""
        self.stopping.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.settings.shutdown_grace + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stop_with_parent() -> None:
    """In the worker, before it runs: ask Linux for SIGTERM when the server process dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def api_process_app() -> FastAPI:
    """The app of one of several API processes of `docqueue serve` (uvicorn starts them)."""
    from docqueue.api.app import app_from_environment

    _stop_with_parent()
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the server died before prctl
        raise SystemExit("the docqueue serve process that started this one is gone")
    return app_from_environment()


def _share_metrics(settings: Settings) -> Path:
    """Let the API processes count requests and jobs in files of a folder they share
    (prometheus-client's multiprocess mode), so that /metrics counts for all of them, whichever
    one answers the scrape. The folder, one per server process, is removed when it stops."""
    folder = (settings.home / "metrics" / str(os.getpid())).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into a normal exit, so the worker pool is stopped on the way out."""
    raise SystemExit(0)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="Worker child processes.")
    ] = None,
    workers: Annotated[bool, typer.Option(help="Run the worker pool in this command.")] = True,
    api_processes: Annotated[
        int | None, typer.Option(help="Processes answering HTTP (sharing the port).")
    ] = None,
) -> None:
    """Run the HTTP API, the web UI and a worker pool; Ctrl-C stops them gracefully."""
    from docqueue.api.app import create_app
    from docqueue.cli import load_settings
    from docqueue.logs import configure_logging
    from docqueue.store import JobStore, upgrade

    settings = load_settings(concurrency=concurrency, api_processes=api_processes)
    configure_logging(settings)
    store = JobStore.from_settings(settings)
    upgrade(store.engine)
    store.engine.dispose()
    pool = None
    if workers:
        pool = WorkerProcess(settings, ["--concurrency", str(settings.concurrency)])
    # uvicorn restores this handler and raises SIGTERM again once it has shut down: without it
    # the process would die there, before the `finally` that stops the worker pool.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The API logs every request itself, with the job id; uvicorn's access log would repeat it.
    options: dict[str, Any] = {"host": host, "port": port, "log_config": None, "access_log": False}
    metrics = None
    try:
        if settings.api_processes == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            # Each process builds its app from the same environment and docqueue.toml.
            metrics = _share_metrics(settings)
            target = f"{__name__}:api_process_app"
            uvicorn.run(target, factory=True, workers=settings.api_processes, **options)
    finally:
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)
        if pool is not None:
            pool.stop()
