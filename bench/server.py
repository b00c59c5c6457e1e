"""A real `docqueue serve` for the benchmarks, and what /proc says about its processes.

Used by bench/api_accept.py and bench/ingest.py; not a benchmark itself. The server runs on a
fresh DOCQUEUE_HOME (SQLite and files under it), in a session of its own so that a Ctrl-C in
the terminal reaches only the benchmark, which then stops the server itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: Worker children of the servers the benchmarks start (`serve --concurrency`).
CONCURRENCY = 2
#: Seconds the server gets to answer /healthz (and its worker to register) after start.
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running `docqueue serve`: its URL, its pid and its home folder."""

    url: str
    process: subprocess.Popen[bytes]
    home: Path
    log_path: Path

    @property
    def pid(self) -> int:
        """The pid of the serve process (the HTTP API runs in it)."""
        return self.process.pid

    def worker_pid(self) -> int:
        """The pid of the `docqueue worker` that serve started."""
        for pid in children(self.pid):
            if "worker" in cmdline(pid):
                return pid
        raise LookupError(f"serve (pid {self.pid}) has no worker child; see {self.log_path}")

    def cpu_by_part(self) -> dict[str, float]:
        """CPU seconds each part of the service has used so far: the API (`api_pids`), the
        worker's supervisor, and the children that run its jobs (with the forkserver that
        starts them, whose count takes in the children it has reaped)."""
        worker = descendants(self.worker_pid())
        return {
            "API": cpu_seconds(self.api_pids()),
            "supervisor": cpu_seconds(worker[:1]),
            "job children": cpu_seconds(worker[1:]),
        }

    def api_pids(self) -> list[int]:
        """The serve process and its API processes (when it runs several): all but the worker."""
        worker = set(descendants(self.worker_pid()))
        return [pid for pid in descendants(self.pid) if pid not in worker]

    def job_children(self) -> list[int]:
        """The pids of the worker's job-running children (forked by its forkserver)."""
        for pid in children(self.worker_pid()):
            if "forkserver" in cmdline(pid):
                return children(pid)
        return []

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_server(
    workdir: Path, concurrency: int = CONCURRENCY, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start `docqueue serve` on a fresh home under `workdir`; stop it and its worker at the end."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    # A short grace keeps the stop bounded; the benchmarks never stop with jobs they still need.
    environment.update(DOCQUEUE_HOME=str(home), DOCQUEUE_SHUTDOWN_GRACE="2", **(env or {}))
    log_path = workdir / "serve.log"
    command = [sys.executable, "-m", "docqueue", "serve", "--port", str(port)]
    command += ["--concurrency", str(concurrency)]
    with log_path.open("wb") as log:
        # cwd is the work folder, so that no docqueue.toml of the caller's changes the settings.
        process = subprocess.Popen(
            command, env=environment, cwd=workdir, stdout=log, stderr=log, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, home, log_path)
    try:
        _wait_ready(server, concurrency)
        yield server
    finally:
        stop(server)


def _wait_ready(server: Server, concurrency: int) -> None:
    """Wait until the API answers /readyz (its worker has registered) and the worker's
    children have started."""
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"docqueue serve exited at start:\n{server.log_tail()}")
            with suppress(httpx.TransportError):
                ready = client.get("/readyz").status_code == 200
                if ready and len(server.job_children()) == concurrency:
                    return
            time.sleep(0.1)
    raise TimeoutError(
        f"docqueue serve was not ready in {START_TIMEOUT:.0f} s:\n{server.log_tail()}"
    )


def stop(server: Server) -> None:
    """Stop serve as Ctrl-C does (it then stops its worker and waits for it), then kill, by
    pid, any process of its tree that is still there."""
    tree = descendants(server.pid)
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    for pid in tree[1:]:
        if "docqueue" in cmdline(pid) or "multiprocessing" in cmdline(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- /proc ------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found = [pid]
    for child in children(pid):
        found += descendants(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of `pid`, or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user and system) the processes and their reaped children have used so far.

    Pass a whole tree (`descendants`): a child that exits between two readings moves from its
    own count to its parent's reaped-children count, so the sum stays right.
    """
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """The resident set size of `pid` in bytes (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent not idle, since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


@dataclass
class Usage:
    """CPU used during a stretch of time, as shares of one core (1.0 = one core busy)."""

    seconds: float = 0.0
    #: This process and every process it started (reaped ones included).
    ours: float = 0.0
    #: Everything else the machine ran meanwhile: other programs, and kernel work (network,
    #: disk) not charged to a process.
    other: float = 0.0

    def __str__(self) -> str:
        """One line for the output."""
        return (
            f"CPU meanwhile (100% = one core): this benchmark {self.ours:.0%}, "
            f"the rest of the machine {self.other:.0%}"
        )


@contextmanager
def cpu_usage() -> Iterator[Usage]:
    """Measure the CPU this benchmark and the rest of the machine use within the block."""
    usage = Usage()
    started, ours, machine = time.monotonic(), _our_cpu(), machine_busy_seconds()
    yield usage
    usage.seconds = time.monotonic() - started
    usage.ours = (_our_cpu() - ours) / usage.seconds
    usage.other = max(0.0, (machine_busy_seconds() - machine) / usage.seconds - usage.ours)


def _our_cpu() -> float:
    """CPU seconds of this process and all it started, living or reaped."""
    return cpu_seconds(descendants(os.getpid()))
