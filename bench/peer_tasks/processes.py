"""The benchmark's child processes: each in a session of its own, stopped by process group."""

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Grace given to a process between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0
#: Held during a peer run: two runs at once would flush each other's Redis db and schema.
LOCK_FILE = Path(tempfile.gettempdir()) / "docqueue-bench-peers.lock"


class LockTimeoutError(RuntimeError):
    """Another peer benchmark held the lock until the deadline."""


@contextlib.contextmanager
def exclusive(deadline: float) -> Iterator[None]:
    """Hold the benchmark lock, waiting for another run until the deadline."""
    with LOCK_FILE.open("a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise LockTimeoutError(
                        f"another peer benchmark held {LOCK_FILE} until the time limit"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(
    argv: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path
) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own, so its whole group can be stopped."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send a signal to the process group we started, if any of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Ask each started process to stop, wait a grace period, then SIGKILL its whole group."""
    for process in processes:
        # SIGTERM to the leader only: it stops its own children, as on a normal shutdown.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        signal_group(process, signal.SIGCONT)  # in case the producer left it paused
    grace_ends = time.time() + STOP_GRACE_S
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, grace_ends - time.time()))
    for process in processes:
        signal_group(process, signal.SIGKILL)
        process.wait()


def tail(path: Path, lines: int = 2) -> str:
    """The last lines of a log file, on one line, for a result's note."""
    if not path.exists():
        return ""
    text = " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return text[-400:]
