"""Idle cost: the CPU an idle `docqueue serve` uses, per process, with no jobs and with jobs
scheduled for later; and how soon an idle server answers a job.

    python bench/idle.py [--seconds 10] [--scheduled 300] [--round-trips 100]

`docqueue serve --concurrency 2` on a fresh home (SQLite, files on disk). Once it is ready and
has settled for 3 s, the CPU time of each of its processes (the API, the worker's supervisor,
the job children) is read from /proc over --seconds: first with an empty queue, then with
--scheduled jobs queued to run an hour later (a worker must not spin on them). 100% = one core.
A server that waits for work should use next to nothing.

Then --round-trips times, 50 ms apart: `POST /v1/jobs?wait=10` of a `noop` job, timed from the
request to the answer with its result, and the job's own start after its creation (how soon
the idle worker noticed it). Medians and 90th percentiles.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server import Server, cpu_seconds, running_server

console = Console()
#: Seconds a fresh server gets to finish starting before it is measured.
SETTLE = 3.0


def main() -> None:
    """Start the server, measure it idle, queue jobs for later, measure it again."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each reading")
    parser.add_argument("--scheduled", type=int, default=300, help="jobs queued for later")
    parser.add_argument("--round-trips", type=int, default=100, help="noop jobs waited for")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="docqueue-bench-") as tmp,
        running_server(Path(tmp)) as server,
    ):
        time.sleep(SETTLE)
        readings = {"empty queue": reading(server, args.seconds)}
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(args.scheduled):
                job = {"operation": "noop", "run_at": later}
                client.post("/v1/jobs", json=job).raise_for_status()
        time.sleep(SETTLE)
        readings[f"{args.scheduled} jobs for later"] = reading(server, args.seconds)
        trips, starts = round_trips(server, args.round_trips)
    table = Table(title=f"idle docqueue serve: CPU over {args.seconds:g} s (100% = one core)")
    for column in ("queue", "API", "supervisor", "children", "all"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for name, shares in readings.items():
        table.add_row(name, *(f"{share:.1%}" for share in shares), f"{sum(shares):.1%}")
    console.print(table)
    latency = Table(title=f"an idle server, {args.round_trips} noop jobs one at a time (ms)")
    for column in ("measure", "median", "p90"):
        latency.add_column(column, justify="left" if column == "measure" else "right")
    for name, values in (("POST ?wait=10 to its answer", trips), ("created to started", starts)):
        ordered = sorted(values)
        median, p90 = statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]
        latency.add_row(name, f"{median:.1f}", f"{p90:.1f}")
    console.print(latency)


def round_trips(server: Server, count: int) -> tuple[list[float], list[float]]:
    """Milliseconds from each request to its answer, and from each job's creation to its start."""
    trips, starts = [], []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(count):
            time.sleep(0.05)
            sent = time.perf_counter()
            answer = client.post("/v1/jobs", params={"wait": 10}, json={"operation": "noop"})
            trips.append((time.perf_counter() - sent) * 1000)
            job = answer.json()
            assert answer.status_code == 200 and job["status"] == "succeeded", answer.text
            started = datetime.fromisoformat(job["started_at"])
            starts.append(
                (started - datetime.fromisoformat(job["created_at"])).total_seconds() * 1000
            )
    return trips, starts


def reading(server: Server, seconds: float) -> tuple[float, float, float]:
    """The share of a core each part of the server used over `seconds`."""
    groups = ([server.pid], [server.worker_pid()], server.job_children())
    before = [cpu_seconds(pids) for pids in groups]
    time.sleep(seconds)
    after = [cpu_seconds(pids) for pids in groups]
    api, supervisor, children = ((b - a) / seconds for a, b in zip(before, after, strict=True))
    return api, supervisor, children


if __name__ == "__main__":
    main()
