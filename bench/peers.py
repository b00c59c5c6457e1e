"""Measure other job queues doing no-op work, to print beside docqueue's own figures.

Every peer runs with two worker processes, started here as real child processes and always
stopped at the end. One run of a peer goes:

1. Prepare: flush the benchmark Redis database (db 5), make a temporary directory, and let the
   peer set up its storage (pgqueuer drops its benchmark schema and reinstalls its tables).
2. Start the two workers and warm them up: the producer sends bursts of jobs until both worker
   processes have run one and the queue is empty again. Worker start-up is therefore NOT timed.
3. Drain, as bench/queue_overhead.py measures docqueue: one producer process enqueues n no-op
   jobs, one call each, as fast as it can while the warmed workers already consume them.
   `enqueue_per_s` is n over the enqueue loop's time; `drain_per_s` is n over the time from the
   first enqueue call to the start of the last job. Nothing is subtracted: the producer and the
   workers share the machine's cores, and the drain cannot outrun the enqueue rate.
   With `paused_enqueue` (`--paused-enqueue`) the producer instead pauses the warmed workers
   (SIGSTOP to their process groups) while it enqueues, and the drain is timed from resuming
   them (SIGCONT): an uncontended enqueue rate and the drain of a full backlog.
4. Pickup: with the workers idle, one job is enqueued every 10 ms for `latency_seconds`; each
   carries `time.time()` taken just before its enqueue call, and the p50 and p99 of
   (task start - that time) are reported.

Each no-op task does one RPUSH to a Redis list (see `peer_tasks/probe.py`); completion and start
times are read from there, so no peer's own result store is involved. The producer is a separate
process (`peer_tasks/produce.py`) so the peers' module-level state (Dramatiq's global broker,
Celery's current app, pgqueuer's settings) never leaks into the caller's process. Per-job
logging is turned down to WARNING in every peer, so none pays for a log line per job.

Run: `python bench/peers.py --n 2000 --latency-seconds 5 [--only celery,rq]`. To import it,
put bench/ on sys.path first (as queue_overhead.py does): it imports `peer_tasks` from there.
"""

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peer_tasks import processes as children

BENCH_DIR = Path(__file__).resolve().parent
BIN_DIR = Path(sys.executable).parent
REDIS_URL = "redis://127.0.0.1:6379/5"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
#: A whole peer run (setup, warm-up, drain, pickup) is stopped and reported failed after this
#: many seconds, plus 10 ms per drain job: a peer slower than 100 jobs/s fails on a large n.
PEER_TIMEOUT_S = 120.0
SECONDS_PER_JOB = 0.01


@dataclass
class PeerResult:
    """One peer's figures, or zeros and the reason in `note` when it could not run."""

    name: str
    enqueue_per_s: float
    drain_per_s: float
    pickup_p50_ms: float | None
    pickup_p99_ms: float | None
    note: str = ""


@dataclass(frozen=True)
class PeerSpec:
    """How to run one peer: its module under peer_tasks and the worker commands to start."""

    name: str
    module: str
    #: One command line per process started here; together they make two worker processes.
    #: When there are two, each gets BENCH_WORKER_ID so warm-up can tell them apart.
    commands: tuple[str, ...]
    note: str
    env: dict[str, str] = field(default_factory=dict)


SPECS = [
    PeerSpec(
        name="celery",
        module="celery_peer",
        # One prefork worker with two child processes.
        commands=(
            "celery -A peer_tasks.celery_peer worker --pool prefork --concurrency 2"
            " --loglevel WARNING",
        ),
        note="Redis, acks_late, prefetch 1, prefork -c 2",
    ),
    PeerSpec(
        name="rq",
        module="rq_peer",
        # The default rq.Worker, which forks a work horse per job: what users run
        # (SimpleWorker would be faster, but is not the default).
        commands=(f"rq worker --url {REDIS_URL} --logging_level WARNING bench",) * 2,
        note="Redis, 2 x rq worker (fork per job)",
    ),
    PeerSpec(
        name="dramatiq",
        module="dramatiq_peer",
        # The published figure is for 8 threads: here 2 processes x 4 threads.
        commands=("dramatiq peer_tasks.dramatiq_peer --processes 2 --threads 4",),
        note="Redis, 2 processes x 4 threads",
    ),
    PeerSpec(
        name="huey",
        module="huey_peer",
        commands=("huey_consumer peer_tasks.huey_peer.huey -w 2 -k process -q",),
        note="SQLite, -w 2 -k process, at-most-once",
    ),
    PeerSpec(
        name="pgqueuer",
        module="pgqueuer_peer",
        # What `pgq run` does, through pgqueuer.run: the CLI is broken in 1.6.0 (see the module).
        commands=("python -m peer_tasks.pgqueuer_peer",) * 2,
        note="PostgreSQL, 2 x pgqueuer.run (asyncpg, batch 10)",
        env={"PGQUEUER_SCHEMA": "docqueue_bench_pgq", "PGQUEUER_CHANNEL": "docqueue_bench_pgq"},
    ),
]


def _argv(command: str) -> list[str]:
    """A command line as argv, its program taken from this interpreter's scripts folder."""
    program, *args = command.split()
    return [str(BIN_DIR / program), *args]


def _worker_env(spec: PeerSpec, number: int) -> dict[str, str]:
    """Extra environment for one started worker command."""
    return {"BENCH_WORKER_ID": str(number)} if len(spec.commands) > 1 else {}


class PeerError(RuntimeError):
    """A peer could not be set up or measured; the message says why."""


def _failed(name: str, note: str) -> PeerResult:
    """A result of zeros that carries the reason in its note."""
    return PeerResult(name, 0.0, 0.0, None, None, note)


def _environment(spec: PeerSpec, workdir: Path) -> dict[str, str]:
    """The environment every process of one peer run gets."""
    env = os.environ.copy()
    python_path = [str(BENCH_DIR), env.get("PYTHONPATH", "")]
    env.update(
        PYTHONPATH=os.pathsep.join(part for part in python_path if part),
        BENCH_REDIS_URL=REDIS_URL,
        BENCH_PG_DSN=PG_DSN,
        BENCH_HUEY_FILE=str(workdir / "huey.db"),
    )
    return env | spec.env


def _flush_redis() -> None:
    """Empty the benchmark Redis database, so no earlier run's jobs or records remain."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def _prepare(spec: PeerSpec, env: dict[str, str], deadline: float) -> None:
    """Let the peer set up its storage, in a process of its own."""
    command = [sys.executable, "-m", "peer_tasks.produce", "prepare", spec.module]
    done = subprocess.run(
        command,
        cwd=BENCH_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(1.0, deadline - time.time()),
        check=False,
    )
    if done.returncode != 0:
        raise PeerError(f"setup failed: {done.stderr.strip()[-400:]}")


def _supervise(
    producer: subprocess.Popen[bytes],
    workers: list[subprocess.Popen[bytes]],
    workdir: Path,
    timeout_s: float,
) -> None:
    """Wait for the producer; fail early if a worker dies, and after `timeout_s`."""
    deadline = time.time() + timeout_s
    while producer.poll() is None:
        for number, worker in enumerate(workers):
            if worker.poll() is not None:
                log = children.tail(workdir / f"worker-{number}.log")
                raise PeerError(f"worker {number} exited with code {worker.returncode}: {log}")
        if time.time() > deadline:
            phase = children.tail(workdir / "producer.log", lines=1)
            raise PeerError(f"ran past its time limit while {phase or 'starting'}")
        time.sleep(0.1)


def time_limit(n: int, latency_seconds: float) -> float:
    """The default time limit of one peer run, in seconds."""
    return PEER_TIMEOUT_S + n * SECONDS_PER_JOB + latency_seconds


def _result(spec: PeerSpec, workdir: Path, timeout_s: float) -> PeerResult:
    """Turn the producer's last output line into a result."""
    lines = (workdir / "producer.out").read_text().strip().splitlines()
    if not lines:
        raise PeerError(f"the producer printed nothing: {children.tail(workdir / 'producer.log')}")
    figures = json.loads(lines[-1])
    if "error" in figures:
        raise PeerError(f"{figures['error']} (time limit {timeout_s:.0f} s)")
    return PeerResult(
        name=spec.name,
        enqueue_per_s=figures["enqueue_per_s"],
        drain_per_s=figures["drain_per_s"],
        pickup_p50_ms=figures.get("pickup_p50_ms"),
        pickup_p99_ms=figures.get("pickup_p99_ms"),
        note=spec.note,
    )


def _start_workers(
    spec: PeerSpec, env: dict[str, str], workdir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Start the peer's worker commands, appending each to `processes` as it starts."""
    for number, command in enumerate(spec.commands):
        log = workdir / f"worker-{number}.log"
        argv, worker_env = _argv(command), env | _worker_env(spec, number)
        processes.append(children.start(argv, BENCH_DIR, worker_env, log, log))


def _measure(
    spec: PeerSpec,
    n: int,
    latency_seconds: float,
    *,
    timeout_s: float | None = None,
    paused_enqueue: bool = False,
) -> PeerResult:
    """Run one peer end to end (see the module docstring); raises PeerError on failure."""
    timeout_s = timeout_s or time_limit(n, latency_seconds)
    with (
        children.exclusive(time.time() + timeout_s),
        tempfile.TemporaryDirectory(prefix=f"docqueue-bench-{spec.name}-") as tmp,
    ):
        deadline = time.time() + timeout_s
        workdir = Path(tmp)
        env = _environment(spec, workdir)
        _flush_redis()
        _prepare(spec, env, deadline)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            _start_workers(spec, env, workdir, processes)
            groups = ",".join(str(worker.pid) for worker in processes) if paused_enqueue else ""
            producer = children.start(
                [
                    *(sys.executable, "-m", "peer_tasks.produce", "measure", spec.module),
                    *("--n", str(n), "--latency-seconds", str(latency_seconds)),
                    *("--deadline", repr(deadline), "--worker-groups", groups),
                ],
                BENCH_DIR,
                env,
                workdir / "producer.out",
                workdir / "producer.log",
            )
            processes.insert(0, producer)
            # The producer gives up at the deadline itself; this is the backstop.
            _supervise(producer, processes[1:], workdir, deadline + 5.0 - time.time())
        finally:
            children.stop_all(processes)
        return _result(spec, workdir, timeout_s)


_SPECS_BY_NAME = {spec.name: spec for spec in SPECS}

#: Peer name -> run(n_jobs, latency_seconds); each raises on failure, unlike `run_peer`.
PEERS: dict[str, Callable[[int, float], PeerResult]] = {
    spec.name: functools.partial(_measure, spec) for spec in SPECS
}


def run_peer(
    name: str,
    n: int,
    latency_seconds: float,
    *,
    timeout_s: float | None = None,
    paused_enqueue: bool = False,
) -> PeerResult:
    """Measure one peer; never raises: a failure comes back as zeros with the error in `note`."""
    spec = _SPECS_BY_NAME.get(name)
    if spec is None:
        return _failed(name, f"unknown peer {name!r}; known peers: {', '.join(PEERS)}")
    try:
        return _measure(
            spec, n, latency_seconds, timeout_s=timeout_s, paused_enqueue=paused_enqueue
        )
    except Exception as error:
        return _failed(name, f"{type(error).__name__}: {error}")


def _ms(value: float | None) -> str:
    """A latency cell."""
    return "-" if value is None else f"{value:,.1f}"


def results_table(results: list[PeerResult], title: str = "Peer job queues, no-op jobs") -> Table:
    """The results as a Rich table, one row per peer."""
    table = Table(title=title)
    table.add_column("Queue")
    for heading in ("enqueue jobs/s", "drain jobs/s", "pickup p50 ms", "pickup p99 ms"):
        table.add_column(heading, justify="right")
    table.add_column("Note")
    for result in results:
        table.add_row(
            result.name,
            f"{result.enqueue_per_s:,.0f}",
            f"{result.drain_per_s:,.0f}",
            _ms(result.pickup_p50_ms),
            _ms(result.pickup_p99_ms),
            result.note,
        )
    return table


def main() -> None:
    """Measure the chosen peers one after another and print a table."""
    parser = argparse.ArgumentParser(description="Measure other job queues doing no-op work.")
    parser.add_argument("--n", type=int, default=2000, help="jobs in the drain phase")
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="pickup phase length")
    parser.add_argument("--only", default="", help="comma-separated peers, e.g. celery,rq")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per peer (default: 120 + 10 ms a job)"
    )
    parser.add_argument(
        "--paused-enqueue",
        action="store_true",
        help="enqueue with the workers paused, then time the drain of the backlog",
    )
    args = parser.parse_args()
    # On SIGTERM (e.g. from `timeout`), unwind so every `finally` stops its workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(PEERS)
    console = Console()
    results = []
    for name in names:
        with console.status(f"Measuring {name} ({args.n} jobs, {args.latency_seconds:g} s pickup)"):
            result = run_peer(
                name,
                args.n,
                args.latency_seconds,
                timeout_s=args.timeout,
                paused_enqueue=args.paused_enqueue,
            )
        console.log(f"{name}: {'done' if result.drain_per_s else result.note}")
        results.append(result)
    console.print(results_table(results))


if __name__ == "__main__":
    main()
