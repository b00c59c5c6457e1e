"""The single producer process: warms the peer's workers up, then times a drain and pickups.

Run by `bench/peers.py` as `python -m peer_tasks.produce {prepare|measure} MODULE ...` from
the bench directory. `measure` prints one JSON object on its last stdout line. Given
--worker-groups, it pauses those workers (SIGSTOP to the process groups the harness started)
while it enqueues the drain backlog, and times the drain from resuming them (SIGCONT).
"""

import argparse
import importlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from types import ModuleType

from peer_tasks import probe

Enqueue = Callable[[str, float], None]

#: Warm-up jobs sent per round, until two distinct worker processes have run one.
WARMUP_BURST = 20
#: Pickup jobs are enqueued at this steady rate.
PICKUP_RATE_PER_S = 100
#: How long to wait for the last pickup job after the final one is enqueued.
PICKUP_GRACE_S = 30.0
WORKER_PROCESSES = 2


class DeadlineError(RuntimeError):
    """The peer did not finish a phase before the harness's deadline."""


def records(phase: str) -> list[tuple[float, float, str]]:
    """All (enqueued_at, started_at, worker) records of one phase so far."""
    rows = probe.client().lrange(probe.key(phase), 0, -1)
    fields = [(row.decode() if isinstance(row, bytes) else row).split() for row in rows]
    return [(float(enqueued), float(started), worker) for enqueued, started, worker in fields]


def wait_for(phase: str, count: int, deadline: float) -> None:
    """Block until `count` jobs of `phase` have started, or raise past the deadline."""
    while (done := probe.client().llen(probe.key(phase))) < count:
        if time.time() > deadline:
            raise DeadlineError(f"{phase}: only {done} of {count} jobs ran before the deadline")
        time.sleep(0.01)


def warm_up(enqueue: Enqueue, deadline: float) -> None:
    """Send bursts of jobs until both worker processes have run one, then let the queue empty."""
    sent = 0
    while len({worker for _, _, worker in records("warmup")}) < WORKER_PROCESSES:
        if time.time() > deadline:
            raise DeadlineError("warm-up: the two worker processes never both ran a job")
        for _ in range(WARMUP_BURST):
            enqueue("warmup", time.time())
        sent += WARMUP_BURST
        time.sleep(0.25)
    wait_for("warmup", sent, deadline)


def signal_groups(groups: list[int], signum: int) -> None:
    """Send a signal to each worker process group."""
    for group in groups:
        os.killpg(group, signum)


def drain(enqueue: Enqueue, n: int, deadline: float, paused: list[int]) -> dict[str, float]:
    """Enqueue n jobs, then time until the last one started.

    The drain is timed from the first enqueue call, or, when worker process groups to pause
    are given, from resuming them after the whole backlog is enqueued.
    """
    signal_groups(paused, signal.SIGSTOP)
    try:
        first = time.time()
        for _ in range(n):
            enqueue("drain", first)
        enqueued = time.time()
    finally:
        signal_groups(paused, signal.SIGCONT)
    drain_from = enqueued if paused else first
    wait_for("drain", n, deadline)
    last = max(started for _, started, _ in records("drain"))
    return {"enqueue_per_s": n / (enqueued - first), "drain_per_s": n / (last - drain_from)}


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def pickup(enqueue: Enqueue, seconds: float, deadline: float) -> dict[str, float]:
    """Enqueue a job every 10 ms for `seconds`; return p50 and p99 of enqueue-to-start in ms."""
    count = max(1, round(seconds * PICKUP_RATE_PER_S))
    start = time.time()
    for i in range(count):
        time.sleep(max(0.0, start + i / PICKUP_RATE_PER_S - time.time()))
        enqueue("pickup", time.time())
    wait_for("pickup", count, min(deadline, time.time() + PICKUP_GRACE_S))
    latencies = sorted((started - enqueued) * 1000 for enqueued, started, _ in records("pickup"))
    return {
        "pickup_p50_ms": percentile(latencies, 0.50),
        "pickup_p99_ms": percentile(latencies, 0.99),
    }


def measure(
    peer: ModuleType, n: int, latency_seconds: float, deadline: float, groups: list[int]
) -> dict[str, float]:
    """Run warm-up, drain and pickup phases against the peer's running workers."""
    enqueue: Enqueue = peer.enqueue
    print("warming up", file=sys.stderr, flush=True)
    warm_up(enqueue, deadline)
    print("draining", file=sys.stderr, flush=True)
    figures = drain(enqueue, n, deadline, groups)
    if latency_seconds > 0:
        print("measuring pickup latency", file=sys.stderr, flush=True)
        figures |= pickup(enqueue, latency_seconds, deadline)
    return figures


def main() -> None:
    """Parse the command line and run `prepare` or `measure`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["prepare", "measure"])
    parser.add_argument("module", help="module under peer_tasks, e.g. celery_peer")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--deadline", type=float, default=time.time() + 120, help="epoch seconds")
    parser.add_argument("--worker-groups", default="", help="comma-separated process group ids")
    args = parser.parse_args()
    peer = importlib.import_module(f"peer_tasks.{args.module}")
    if args.command == "prepare":
        if hasattr(peer, "prepare"):
            peer.prepare()
        return
    try:
        groups = [int(group) for group in args.worker_groups.split(",") if group]
        figures = measure(peer, args.n, args.latency_seconds, args.deadline, groups)
    except DeadlineError as error:
        print(json.dumps({"error": str(error)}))
        sys.exit(1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
