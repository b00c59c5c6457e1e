"""Processors the end-to-end tests load into real workers with `--import tests.e2e.processors`."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from docqueue.models import JSON
from docqueue.processors import Context, Registry


def _append(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND), so concurrent processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def record(ctx: Context) -> JSON:
    """Write `job attempt pid` to params.path when done; sleep first if asked."""
    started = ctx.params.get("started")
    if started:
        _append(started, f"{ctx.job_id} {ctx.attempt} {os.getpid()}")
    deadline = time.monotonic() + ctx.params.get("sleep", 0)
    while time.monotonic() < deadline:
        if ctx.is_cancelled():
            return {"stopped": True}
        time.sleep(0.02)
    _append(ctx.params["path"], f"{ctx.job_id} {ctx.attempt} {os.getpid()}")
    return {"pid": os.getpid()}


def crash(ctx: Context) -> JSON:
    """Die on the attempts listed in params.kill_on: SIGKILL, or a real segfault if asked."""
    if ctx.attempt in ctx.params.get("kill_on", [1]):
        if ctx.params.get("how") == "segfault":
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        os.kill(os.getpid(), signal.SIGKILL)
    return {"survived_attempt": ctx.attempt}


def hang(ctx: Context) -> JSON:
    """Never return, and ignore cancellation: only a kill stops it."""
    while True:
        time.sleep(1)


def load_counter() -> Path:
    """A resource whose every load appends this process id to the file named by $LOADS_FILE."""
    path = os.environ["LOADS_FILE"]
    _append(path, str(os.getpid()))
    time.sleep(0.2)  # loading a model takes time; a per-job load would show in the job count
    return Path(path)


def use_counter(ctx: Context) -> JSON:
    """Use the counted resource and say which process ran."""
    ctx.resources.get("counter")
    return {"pid": os.getpid()}


def threads(ctx: Context) -> JSON:
    """The threads the job's math may use: at once, or while params.together jobs run at
    once (waiting up to 10 s for the share to be params.expect); none of them ends before all
    have looked."""
    together = ctx.params.get("together", 1)
    if together == 1:
        return {"threads": ctx.cpu_threads()}
    folder = Path(ctx.params["folder"])
    _append(str(folder / "started"), str(ctx.job_id))
    started, looked = folder / "started", folder / "looked"
    _until(lambda: _count(started) >= together and ctx.cpu_threads() == ctx.params["expect"])
    seen = ctx.cpu_threads()
    _append(str(looked), str(ctx.job_id))
    _until(lambda: _count(looked) >= together)
    return {"threads": seen}


def _count(path: Path) -> int:
    """Lines in the file at `path` (0 before it is made)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def _until(ready: Callable[[], bool]) -> None:
    """Wait until `ready()`, for 10 s at most."""
    deadline = time.monotonic() + 10
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.005)


def exits(ctx: Context) -> JSON:
    """Call exit(), as careless code does."""
    raise SystemExit(3)


def register(registry: Registry) -> None:
    """Add the test processors."""
    registry.resource("counter")(load_counter)
    registry.processor("record")(record)
    registry.processor("crash")(crash)
    registry.processor("hang")(hang)
    registry.processor("exits")(exits)
    registry.processor("threads")(threads)
    registry.processor("counted", resources=("counter",))(use_counter)
