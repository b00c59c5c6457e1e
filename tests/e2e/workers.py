"""Starting real `docqueue worker` processes for tests, and waiting on the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from docqueue.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a worker process the same settings as the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        DOCQUEUE_HOME=str(settings.home),
        DOCQUEUE_DATABASE_URL=settings.resolved_database_url,
        DOCQUEUE_STORAGE_URL=settings.resolved_storage_url,
        DOCQUEUE_LEASE_SECONDS=str(settings.lease_seconds),
        DOCQUEUE_RETRY_BASE_DELAY=str(settings.retry_base_delay),
        DOCQUEUE_RETRY_MAX_DELAY=str(settings.retry_max_delay),
        DOCQUEUE_POLL_INTERVAL=str(settings.poll_interval),
        DOCQUEUE_SHUTDOWN_GRACE=str(settings.shutdown_grace),
        DOCQUEUE_MAX_JOBS_PER_CHILD=str(settings.max_jobs_per_child),
        DOCQUEUE_IMPORTS="tests.e2e.processors",
    )
    env.update(extra)
    return env


def start_worker(settings: Settings, *args: str, **env: str) -> subprocess.Popen[bytes]:
    """Start `docqueue worker` in its own process group, so a test can kill the whole tree."""
    return subprocess.Popen(
        [sys.executable, "-m", "docqueue", "worker", *args],
        cwd=ROOT,
        env=worker_env(settings, **env),
        start_new_session=True,
    )


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and every process of its group."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lines(path: Path) -> list[list[str]]:
    """The lines a test processor appended, split into fields."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
