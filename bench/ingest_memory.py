"""Part 4 of bench/ingest.py: the memory of the worker's children over many ingest jobs.

Not run on its own: bench/ingest.py calls `measure_memory` and `print_memory`; its docstring
says what they measure.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from client import finished_count, submit_all
from corpus import distinct_copy
from ingest_embedding import embed_params
from server import Server, cpu_usage, rss_bytes

console = Console()
#: Seconds per job after which the memory run gives up (far more than an ingest job takes).
MEMORY_SECONDS_PER_JOB = 2.0


def measure_memory(server: Server, paths: list[Path], args: argparse.Namespace) -> dict[str, Any]:
    """RSS of the worker children after the warm-up jobs and after the last job."""
    console.print(f"running {args.memory_jobs:,} ingest jobs, reading the children's RSS ...")
    datas = [path.read_bytes() for path in paths]
    params = embed_params(args.embed_precision) if args.memory_embed else {}
    documents = [
        (f"copy-{n}.pdf", lambda n=n: distinct_copy(datas[n % len(datas)], n))
        for n in range(args.memory_jobs)
    ]
    children = server.job_children()
    readings: dict[str, Any] = {"children": children, "peak": dict.fromkeys(children, 0)}
    started = time.monotonic()
    deadline = started + MEMORY_SECONDS_PER_JOB * args.memory_jobs + 120
    with (
        cpu_usage() as usage,
        ThreadPoolExecutor(1) as background,
        httpx.Client(base_url=server.url) as client,
    ):
        submitted = background.submit(submit_all, server.url, documents, params)
        while (done := finished_count(client)[0]) < args.memory_jobs:
            if (submitted.done() and submitted.exception()) or time.monotonic() > deadline:
                raise RuntimeError(f"the memory run stopped at {done} jobs:\n{server.log_tail()}")
            if "start" not in readings and done >= args.memory_warmup:
                readings["start"] = {pid: rss_bytes(pid) for pid in children}
                readings["start_done"] = done
            for pid in children:
                readings["peak"][pid] = max(readings["peak"][pid], rss_bytes(pid))
            time.sleep(0.25)
        if "start" not in readings:  # every job finished between two polls
            raise RuntimeError("no reading after the warm-up; raise --memory-jobs")
        readings["end"] = {pid: rss_bytes(pid) for pid in children}
        for pid in children:
            readings["peak"][pid] = max(readings["peak"][pid], readings["end"][pid])
        finished, succeeded = finished_count(client)
        readings["failed"] = finished - succeeded
    readings["seconds"] = time.monotonic() - started
    readings["usage"] = usage
    readings["children_after"] = server.job_children()
    return readings


def print_memory(readings: dict[str, Any], args: argparse.Namespace) -> None:
    """Start, end and peak RSS per child, and the change."""
    mib = 1024 * 1024
    what = "ingest + embed" if args.memory_embed else "ingest"
    table = Table(
        title=f"worker children RSS over {args.memory_jobs:,} {what} jobs "
        f"({readings['seconds']:.0f} s, first reading after {readings['start_done']} jobs)"
    )
    for column in ("child pid", "start MiB", "end MiB", "peak MiB", "change"):
        table.add_column(column, justify="right")
    start, end = readings["start"], readings["end"]
    for pid in readings["children"]:
        change = (end[pid] - start[pid]) / start[pid] if start[pid] else float("nan")
        table.add_row(
            str(pid),
            f"{start[pid] / mib:,.1f}",
            f"{end[pid] / mib:,.1f}",
            f"{readings['peak'][pid] / mib:,.1f}",
            f"{change:+.1%}",
        )
    total_start, total_end = sum(start.values()), sum(end.values())
    change = (total_end - total_start) / total_start
    table.add_row(
        "all", f"{total_start / mib:,.1f}", f"{total_end / mib:,.1f}", "", f"{change:+.1%}"
    )
    console.print(table)
    same = readings["children_after"] == readings["children"]
    console.print(str(readings["usage"]))
    console.print(
        f"failed jobs: {readings['failed']}; the same children ran every job: "
        f"{'yes' if same else 'NO, ' + str(readings['children_after'])}"
    )
    verdict = "met" if abs(change) <= 0.10 and same else "NOT met"
    console.print(f"memory change {change:+.1%} (target: flat within 10%: {verdict})")
