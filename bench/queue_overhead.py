"""Queue overhead: docqueue's drain rate, pickup latency and claim cost, beside other job queues.

    python bench/queue_overhead.py [--n 10000] [--latency-seconds 10] [--rounds 3]
                                   [--claim-sizes 1000,1000000] [--stores sqlite,postgres]
                                   [--peers all] [--claims-only]

In one run, on this machine:
1. enqueue: one producer enqueues N `noop` jobs, one call (one transaction) each.
   drain: then 2 worker processes (one `docqueue worker --concurrency 2`) start; the drain rate is
   N over the time from the first job started to the last one finished, as the store recorded it.
   The same for SQLite and PostgreSQL, then for each peer in bench/peers.py.
2. pickup latency at a steady 100 jobs/s: the time from a job's commit to its start (the store's
   created_at and started_at), p50 and p99.
   Parts 1 and 2 run --rounds times, every system once per round, in turn; the table shows the
   median of each figure over the rounds (one round on a shared machine can be off by 10% or
   more either way).
3. claim latency: the median time of one claim-and-complete with 1,000 and with 1,000,000 jobs
   stored (all but 1,000 of them finished, as in a store that has run for a while).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from docqueue.models import Completion, JobState, NewJob, Succeeded, utcnow
from docqueue.store import JobStore, make_engine, upgrade
from docqueue.store.tables import WAITING, jobs, status_in

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
console = Console()
POSTGRES = os.environ.get(
    "DOCQUEUE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass
class Figures:
    """One line of the results table."""

    name: str
    enqueue_per_s: float
    drain_per_s: float
    pickup_p50_ms: float | None = None
    pickup_p99_ms: float | None = None
    note: str = ""


#: PostgreSQL databases this run made, dropped when it ends.
MADE: list[str] = []


def admin_sql(statement: str) -> None:
    """Run one statement on the PostgreSQL server outside any transaction."""
    admin = make_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(statement))
    admin.dispose()


def fresh_postgres(name: str) -> str:
    """A new, empty PostgreSQL database for one measurement."""
    admin_sql(f'CREATE DATABASE "{name}"')
    MADE.append(name)
    return make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)


def fresh_store(kind: str, workdir: Path) -> tuple[str, JobStore]:
    """A migrated, empty store of `kind` (sqlite or postgres)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}"
    else:
        url = fresh_postgres(f"docqueue_bench_{uuid.uuid4().hex[:6]}")
    store = JobStore.from_url(url)
    upgrade(store.engine)
    return url, store


def start_worker(url: str, workdir: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """A real `docqueue worker` on the store at `url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    env.update(
        DOCQUEUE_DATABASE_URL=url,
        DOCQUEUE_HOME=str(workdir / "home"),
        DOCQUEUE_LOG_LEVEL="WARNING",
        DOCQUEUE_RETENTION_DAYS="0",
    )
    command = [sys.executable, "-m", "docqueue", "worker", "--concurrency", str(concurrency)]
    return subprocess.Popen(command, env=env, cwd=ROOT)


def unfinished(store: JobStore) -> int:
    """Jobs not yet finished: a count over the small partial indexes of waiting and running
    jobs, so that watching the drain costs the server next to nothing (the peers' producers
    watch a Redis list)."""
    condition = status_in(*WAITING, "running")
    with store.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(jobs).where(condition)).scalar_one()
        )


def wait_until(condition: object, timeout: float) -> None:
    """Poll `condition()` every 20 ms until true; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not finish in time")
        time.sleep(0.02)


def measure_docqueue(kind: str, n: int, latency_seconds: float, workdir: Path) -> Figures:
    """Enqueue, drain and pickup latency of docqueue on one store kind."""
    url, store = fresh_store(kind, workdir)
    started = time.perf_counter()
    for _ in range(n):
        store.enqueue(NewJob("noop"))
    enqueue_rate = n / (time.perf_counter() - started)
    worker = start_worker(url, workdir)
    try:
        wait_until(lambda: unfinished(store) == 0, 600)
        drain_rate = n / busy_seconds(store)
        p50, p99 = pickup_latency(store, latency_seconds)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        store.engine.dispose()
    return Figures(
        f"docqueue ({kind})", enqueue_rate, drain_rate, p50, p99, "leases, at-least-once"
    )


def busy_seconds(store: JobStore) -> float:
    """From the first job started to the last one finished, as the store recorded them.

    Worker start-up is left out, as it is for the peers: the clock starts at the first claim.
    """
    with store.engine.connect() as conn:
        first, last = conn.execute(
            select(func.min(jobs.c.started_at), func.max(jobs.c.finished_at))
        ).one()
    return (_aware(last) - _aware(first)).total_seconds()


def _aware(value: object) -> datetime:
    """SQLite hands MIN/MAX of timestamps back as naive text; make them comparable."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def pickup_latency(store: JobStore, seconds: float) -> tuple[float, float]:
    """Enqueue at 100 jobs/s for `seconds`; return p50 and p99 of commit-to-start in ms."""
    ids = []
    start = time.perf_counter()
    for i in range(int(seconds * 100)):
        time.sleep(max(0.0, start + i * 0.01 - time.perf_counter()))
        ids.append(store.enqueue(NewJob("noop"))[0].id)
    wait_until(lambda: all(store.get(i).status == JobState.SUCCEEDED for i in ids[-5:]), 60)
    waits = []
    for job_id in ids:
        job = store.get(job_id)
        assert job.started_at is not None
        waits.append((job.started_at - job.created_at).total_seconds() * 1000)
    cuts = statistics.quantiles(waits, n=100)
    return cuts[49], cuts[98]


def claim_latency(kind: str, stored: int, workdir: Path, samples: int = 500) -> float:
    """Median ms of one claim plus its completion with `stored` jobs in the store."""
    _url, store = fresh_store(kind, workdir)
    fill(store, stored)
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        job = store.claim("bench", ["default"], 1, lease_seconds=60)[0]
        store.complete([Completion(job.id, job.attempt, Succeeded())])
        times.append((time.perf_counter() - t0) * 1000)
        store.enqueue(NewJob("noop"))  # keep the queued count steady
    store.engine.dispose()
    return statistics.median(times)


def fill(store: JobStore, stored: int, queued: int = 1000) -> None:
    """Insert `stored` jobs quickly: `queued` waiting, the rest succeeded a while ago."""
    from uuid_utils.compat import uuid7

    now = utcnow()
    past = now - timedelta(hours=1)
    batch = 10_000
    with store.engine.begin() as conn:
        for start in range(0, stored, batch):
            rows = []
            for i in range(start, min(stored, start + batch)):
                waiting = i >= stored - queued
                rows.append(
                    {
                        "id": uuid7(),
                        "operation": "noop",
                        "queue": "default",
                        "params": {},
                        "status": "queued" if waiting else "succeeded",
                        "priority": 5,
                        "attempt": 0 if waiting else 1,
                        "max_attempts": 3,
                        "run_at": past,
                        "created_at": past,
                        "finished_at": None if waiting else past,
                    }
                )
            conn.execute(insert(jobs), rows)
    if store.is_postgres:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobs"))


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="jobs to drain per system")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each system; medians")
    parser.add_argument("--claim-sizes", default="1000,1000000")
    parser.add_argument("--peers", default="all", help="peers to measure: all, none, or a,b")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--claims-only", action="store_true", help="only the claim latency part")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    with tempfile.TemporaryDirectory(prefix="docqueue-bench-") as tmp:
        try:
            measure(args, Path(tmp))
        finally:
            for name in MADE:
                admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(args: argparse.Namespace, workdir: Path) -> None:
    """Every measurement the arguments ask for, printed as tables."""
    if not args.claims_only:
        rounds = [measure_round(args, workdir, number) for number in range(1, args.rounds + 1)]
        if rounds[0]:
            print_drain([median_figures(same) for same in zip(*rounds, strict=True)], args)
    sizes = [int(s) for s in args.claim_sizes.split(",")]
    claims = {
        (kind, size): claim_latency(kind, size, workdir)
        for kind in args.stores.split(",")
        for size in sizes
    }
    print_claims(claims, sizes)


def measure_round(args: argparse.Namespace, workdir: Path, number: int) -> list[Figures]:
    """One drain and pickup measurement of every system asked for, in turn."""
    rows: list[Figures] = []
    for kind in args.stores.split(","):
        console.print(f"round {number} of {args.rounds}: docqueue on {kind} ...")
        rows.append(measure_docqueue(kind, args.n, args.latency_seconds, workdir))
    if args.peers != "none":
        from peers import PEERS, run_peer

        names = list(PEERS) if args.peers == "all" else args.peers.split(",")
        for name in names:
            console.print(f"round {number} of {args.rounds}: {name} ...")
            # Like docqueue's: enqueue the backlog first (workers paused), then time its drain.
            result = run_peer(name, args.n, args.latency_seconds, paused_enqueue=True)
            rows.append(Figures(**vars(result)))
    return rows


def median_figures(rounds: tuple[Figures, ...]) -> Figures:
    """One system's figures over the rounds: the median of each, and every round's drain rate."""

    def middle(values: list[float | None]) -> float | None:
        known = [value for value in values if value is not None]
        return statistics.median(known) if known else None

    drains = ", ".join(f"{row.drain_per_s:,.0f}" for row in rounds)
    first = rounds[0]
    return Figures(
        first.name,
        statistics.median(row.enqueue_per_s for row in rounds),
        statistics.median(row.drain_per_s for row in rounds),
        middle([row.pickup_p50_ms for row in rounds]),
        middle([row.pickup_p99_ms for row in rounds]),
        f"{first.note}; drains: {drains}" if len(rounds) > 1 else first.note,
    )


def print_drain(rows: list[Figures], args: argparse.Namespace) -> None:
    """The drain and latency table."""
    table = Table(
        title=f"{args.n} no-op jobs, 2 worker processes; pickup latency at 100 jobs/s; "
        f"medians of {args.rounds} round(s)"
    )
    for column in (
        "system",
        "enqueue jobs/s",
        "drain jobs/s",
        "pickup p50 ms",
        "pickup p99 ms",
        "note",
    ):
        table.add_column(column, justify="left" if column in ("system", "note") else "right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.enqueue_per_s:,.0f}",
            f"{row.drain_per_s:,.0f}",
            "-" if row.pickup_p50_ms is None else f"{row.pickup_p50_ms:.1f}",
            "-" if row.pickup_p99_ms is None else f"{row.pickup_p99_ms:.1f}",
            row.note,
        )
    console.print(table)


def print_claims(claims: dict[tuple[str, int], float], sizes: list[int]) -> None:
    """The claim latency table with the ratio of the largest store to the smallest."""
    table = Table(title="claim + complete latency (median ms) by jobs stored")
    table.add_column("store")
    for size in sizes:
        table.add_column(f"{size:,} stored", justify="right")
    table.add_column("ratio", justify="right")
    for kind in sorted({kind for kind, _ in claims}):
        cells = [claims[(kind, size)] for size in sizes]
        table.add_row(kind, *(f"{c:.2f}" for c in cells), f"{cells[-1] / cells[0]:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
