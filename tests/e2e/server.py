"""`docqueue serve` as a real child process on a free port, and the tools to kill it for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.workers import ROOT, wait_for

#: Settings every served test uses: short leases and no retry backoff, so recovery is quick.
TEST_ENV = {
    "DOCQUEUE_LEASE_SECONDS": "3",
    "DOCQUEUE_RETRY_BASE_DELAY": "0",
    "DOCQUEUE_RETRY_MAX_DELAY": "0",
    "DOCQUEUE_POLL_INTERVAL": "0.02",
    "DOCQUEUE_SHUTDOWN_GRACE": "5",
    "DOCQUEUE_IMPORTS": "tests.e2e.processors",
}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def service_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a service on `home`: its store and files default to folders under it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(TEST_ENV, PYTHONPATH=str(ROOT), DOCQUEUE_HOME=str(home), COLUMNS="200")
    env.update(extra)
    return env


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group `pgid`, read from /proc."""
    return [
        pid for pid, (state, _, group) in _processes().items() if group == pgid and state != "Z"
    ]


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process's state, parent and process group, from /proc/PID/stat."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        # The fields after the command name (which may hold spaces) start at ") ".
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def command_line(pid: int) -> str:
    """The command line of a process, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    """`pid` and every live process below it."""
    parents = {child: parent for child, (state, parent, _) in _processes().items() if state != "Z"}
    found = {pid}
    while more := {child for child, parent in parents.items() if parent in found} - found:
        found |= more
    return found


def alive(pids: set[int]) -> bool:
    """True while any of `pids` is a live (not zombie) process."""
    processes = _processes()
    return any(pid in processes and processes[pid][0] != "Z" for pid in pids)


class Service:
    """`python -m docqueue serve` in a session of its own, its output kept in a log file."""

    def __init__(self, home: Path, *args: str, **env: str) -> None:
        self.home = home
        self.args = args
        self.env = service_env(home, **env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home.parent / f"serve-{home.name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Service:
        """Start serving and return once /healthz answers."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "docqueue", "serve", "--port", str(self.port), *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, timeout, f"docqueue serve to answer on {self.url}")
        return self

    def _healthy(self) -> bool:
        """True once /healthz answers 200; fails at once if the server exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"docqueue serve exited with {self.process.returncode}:\n{self.log()}"
            )
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, **options: Any) -> httpx.Client:
        """An HTTP client of this service."""
        return httpx.Client(base_url=self.url, timeout=options.pop("timeout", 60), **options)

    def kill(self) -> None:
        """SIGKILL the whole process tree (server, worker, children) at once, as a power cut would.

        The tree is frozen first (SIGSTOP), so that no process can start another or notice the
        others dying, then killed: by process group, and each process found by parentage too,
        in case a process of the service has a group of its own.
        """
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session made it the leader of its own group
        frozen: set[int] = set()
        while tree := (set(group_members(pgid)) | descendants(pgid)) - frozen:
            for pid in tree:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= tree
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        for pid in frozen:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        # The worker and its children are not ours to reap; wait until the kernel has them.
        wait_for(lambda: not alive(frozen), 10, "every process of the service to die")
        self.process = None

    def log(self) -> str:
        """What the service has printed so far (server, worker and children share it)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pids(self) -> list[int]:
        """Live processes of the service: its process group and everything it started."""
        if self.process is None:
            return []
        pid = self.process.pid
        return sorted(set(group_members(pid)) | descendants(pid))

    def job_processes(self) -> list[int]:
        """The worker's child processes that run the jobs: those its forkserver forked."""
        mine = self.pids()
        parent = {pid: stat[1] for pid, stat in _processes().items() if pid in mine}
        forkservers = {
            pid
            for pid in parent
            if "multiprocessing.forkserver" in command_line(pid)
            and "docqueue worker" in command_line(parent[pid])
        }
        return sorted(pid for pid in parent if parent[pid] in forkservers)


def wait_finished(client: httpx.Client, count: int, timeout: float) -> None:
    """Poll the queue's numbers until `count` jobs are finished."""

    def finished() -> bool:
        totals: dict[str, int] = client.get("/v1/queue/stats").json()["totals"]
        return sum(totals[state] for state in ("succeeded", "failed", "cancelled")) >= count

    wait_for(finished, timeout, f"{count} jobs to finish")
