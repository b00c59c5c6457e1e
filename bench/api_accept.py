"""API accept rate: submissions/s and latency of POST /v1/jobs while the workers are busy.

    python bench/api_accept.py [--small 5000] [--rate 500] [--uploads 300] [--concurrency 16]
                               [--load-processes 2] [--depth 2000] [--sleep-ms 5]
                               [--api-processes 1] [--client raw|httpx]
                               [--small-priority low|normal] [--quick]

In one run, on this machine:
1. `docqueue serve --concurrency 2` starts as a real process on a fresh home (SQLite, files on
   disk), with --api-processes processes answering HTTP; the clock starts once /readyz answers.
2. The workers are kept busy: `noop` jobs that sleep --sleep-ms each go straight into the store
   (up to 50 per transaction, so that this script's own writes hold SQLite's write lock no
   longer than a group of submissions does), and a thread of this script tops them up every
   0.25 s so that about --depth of them wait throughout; both worker children run jobs all along
   and the supervisor claims and completes in the same SQLite file the API writes to. After every phase
   the table shows the jobs the workers finished meanwhile and those still queued (more than 0:
   the workers never ran dry). The depth matters: each answer to a submission counts the jobs
   ahead of it (its `position`), so a deeper queue makes every submission dearer.
3. small, closed loop: --concurrency clients send --small JSON submissions
   `{"operation": "noop", "params": {}, "priority": "low"}` back to back: submissions/s and
   per-request latency. At priority low they wait behind the backlog, like the uploads, so
   that the workers' load is the backlog's whatever the API's rate. With --small-priority
   normal they join it instead, and the workers also run them as they come: about 500 jobs/s
   more that take no time, whose claims and outcomes the worker writes to the same SQLite file
   in bursts.
4. small, paced: --small more at a fixed --rate (an open loop); latency is timed from each
   request's scheduled send time, so a stall of the server or the client is counted, not hidden.
   This is the run to read against the target: >= 500 submissions/s with p99 < 50 ms.
5. upload: --uploads multipart submissions (`ingest`, priority low so that they wait behind the
   noop jobs and the workers' load stays the same) of a generated 1 MB PDF, each with its own
   nonce so content addressing cannot skip storing it: uploads/s, MB/s and latency.

The clients are --load-processes processes with threads, one keep-alive connection per thread:
small submissions go over raw HTTP/1.1 sockets (--client raw, see RawClient: about a tenth of
httpx's CPU per request), or through httpx (--client httpx); uploads always through httpx.
They run on the same machine and share its cores with the server, its worker and anything else
running there; a second table shows the CPU each used (100% = one core) and what the rest of
the machine used meanwhile.
--quick is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.pdfs import build_pdf  # noqa: E402

from docqueue.models import JobState, NewJob, Priority  # noqa: E402
from docqueue.store import JobStore  # noqa: E402
from docqueue.store.tables import jobs  # noqa: E402
from server import (  # noqa: E402
    Server,
    cpu_seconds,
    descendants,
    machine_busy_seconds,
    running_server,
)

console = Console()
SMALL_BODY = {"operation": "noop", "params": {}}
#: Placeholder in the upload PDF that each request overwrites with its own number, same length.
NONCE = b"nonce-0000000000000000"
#: The sizes of a --quick run.
QUICK = {"small": 500, "uploads": 30}
#: Seconds between two top-ups of the backlog.
TOP_UP_INTERVAL = 0.25
#: Most backlog jobs written in one transaction.
TOP_UP_BATCH = 50
#: Seconds one request may take before it counts as an error.
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class LoadSpec:
    """What one load-generator process does."""

    url: str
    kind: str  # "small" or "upload"
    count: int  # requests over all processes
    processes: int
    threads: int
    rate: float | None  # requests/s over all processes; None: back to back
    client: str = "raw"  # small submissions: "raw" HTTP/1.1 sockets or "httpx"
    priority: str = "low"  # of the small submissions
    pdf: bytes = b""
    nonce_base: int = 0


@dataclass
class Samples:
    """What the load generator measured: per request (scheduled, sent, answered, status)."""

    requests: list[tuple[float, float, float, int]] = field(default_factory=list)
    cpu_seconds: float = 0.0


@dataclass
class Phase:
    """One line of the results table."""

    name: str
    samples: Samples
    seconds: float
    bytes_each: int
    server_cpu: float
    worker_cpu: float
    load_cpu: float
    machine_cpu: float
    worker_done: int
    still_queued: int
    paced: bool

    @property
    def answered(self) -> list[tuple[float, float, float, int]]:
        """The requests answered with a 2xx status."""
        return [r for r in self.samples.requests if 200 <= r[3] < 300]

    @property
    def rate(self) -> float:
        """Answered requests per second, from the first send to the last answer."""
        rows = self.samples.requests
        return len(self.answered) / (max(r[2] for r in rows) - min(r[1] for r in rows))

    def latencies_ms(self) -> list[float]:
        """Latency of each answered request: from its scheduled send time when paced (a late
        send counts), else from its send."""
        return [
            (done - (scheduled if self.paced else sent)) * 1000
            for scheduled, sent, done, _ in self.answered
        ]

    @property
    def other_cpu(self) -> float:
        """CPU the machine spent outside this benchmark: other programs, and kernel work (network,
        disk) not charged to a process."""
        return max(0.0, self.machine_cpu - self.server_cpu - self.worker_cpu - self.load_cpu)


def main() -> None:
    """Start the server, make the workers busy, run the three phases, print the tables."""
    args = parse_args()
    pdf = upload_pdf(args.pdf_mb)
    with tempfile.TemporaryDirectory(prefix="docqueue-bench-") as tmp:
        console.print(
            f"starting docqueue serve --concurrency 2, {args.api_processes} API process(es)"
        )
        env = {"DOCQUEUE_API_PROCESSES": str(args.api_processes)}
        with running_server(Path(tmp), env=env) as server:
            store = JobStore.from_url(f"sqlite:///{(server.home / 'docqueue.db').resolve()}")
            console.print(f"queueing {args.depth:,} noop jobs of {args.sleep_ms} ms ...")
            backlog = Backlog(store, args.depth, args.sleep_ms)
            backlog.top_up()
            # Like the server: no full collections of start-up objects in the middle of a
            # backlog transaction (40 ms and more, holding SQLite's write lock meanwhile).
            gc.freeze()
            backlog.start()
            phases = []
            plans = [
                ("small", "small", args.small, None),
                (f"small paced {args.rate:g}/s", "small", args.small, args.rate),
                (f"upload {args.pdf_mb:g} MB PDF", "upload", args.uploads, None),
            ]
            for index, (name, kind, count, rate) in enumerate(plans):
                console.print(f"measuring {name}: {count:,} requests ...")
                spec = LoadSpec(
                    server.url,
                    kind,
                    count,
                    args.load_processes,
                    args.threads,
                    rate,
                    args.client,
                    args.small_priority,
                    pdf if kind == "upload" else b"",
                    nonce_base=index * 10**9,
                )
                phases.append(measure(name, spec, server, backlog, len(pdf)))
            backlog.stop.set()
            backlog.join()
            store.engine.dispose()
    print_table(phases, args)


def parse_args() -> argparse.Namespace:
    """Sizes from the command line; --quick shrinks them to a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=5000, help="JSON submissions per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="paced phase, requests/s")
    parser.add_argument("--uploads", type=int, default=300, help="1 MB PDF uploads")
    parser.add_argument("--pdf-mb", type=float, default=1.0, help="size of the upload PDF")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    parser.add_argument("--load-processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--depth", type=int, default=2000, help="sleeping noop jobs kept queued")
    parser.add_argument("--sleep-ms", type=int, default=5, help="sleep of each backlog job")
    parser.add_argument("--api-processes", type=int, default=1, help="serve's API processes")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="small submissions over raw HTTP/1.1 sockets, or through httpx",
    )
    parser.add_argument(
        "--small-priority",
        choices=["low", "normal"],
        default="low",
        help="small submissions wait behind the backlog (low) or join it (normal)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:  # smaller sizes, unless given on the command line
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.concurrency % args.load_processes:
        parser.error("--concurrency must be a multiple of --load-processes")
    args.threads = args.concurrency // args.load_processes
    return args


def upload_pdf(megabytes: float) -> bytes:
    """A real PDF of about `megabytes`: a page carrying NONCE, then pages of random hex text."""
    rng = random.Random(20240101)
    line_chars, lines_per_page = 100, 500
    target = int(megabytes * 1024 * 1024)
    pages: list[list[str]] = [[NONCE.decode(), "A generated upload for bench/api_accept.py."]]
    size = 0
    while size < target:
        pages.append([rng.randbytes(line_chars // 2).hex() for _ in range(lines_per_page)])
        size += (line_chars + 8) * lines_per_page
    data = build_pdf(pages)
    assert data.count(NONCE) == 1
    return data


class Backlog(threading.Thread):
    """Keeps about `depth` sleeping noop jobs queued, so that the workers never run dry."""

    def __init__(self, store: JobStore, depth: int, sleep_ms: int) -> None:
        super().__init__(name="backlog", daemon=True)
        self.store = store
        self.depth = depth
        self.params = {"sleep_ms": sleep_ms}
        self.stop = threading.Event()

    def run(self) -> None:
        """Top up until told to stop."""
        while not self.stop.wait(TOP_UP_INTERVAL):
            self.top_up()

    def queued(self) -> int:
        """The queued jobs of normal priority: the backlog's (and the small submissions', when
        they join it); not those that wait behind it."""
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        jobs.c.status == JobState.QUEUED.value,
                        jobs.c.priority == int(Priority.NORMAL),
                    )
                ).scalar_one()
            )

    def top_up(self) -> None:
        """Queue what is missing, `TOP_UP_BATCH` jobs per transaction at most."""
        missing = self.depth - self.queued()
        while missing > 0:
            size = min(TOP_UP_BATCH, missing)
            self.store.enqueue_many([NewJob("noop", self.params) for _ in range(size)])
            missing -= size


def measure(name: str, spec: LoadSpec, server: Server, backlog: Backlog, size: int) -> Phase:
    """Run one phase of load and read the CPU and queue figures around it."""
    store = backlog.store
    done_before = store.stats().total(JobState.SUCCEEDED)
    before: dict[str, float] = {}

    def snapshot() -> dict[str, float]:
        return {
            "server": cpu_seconds(server.api_pids()),
            "worker": cpu_seconds(descendants(server.worker_pid())),
            "bench": sum(os.times()[:2]),  # this process: timing, stats queries
            "machine": machine_busy_seconds(),
            "clock": time.monotonic(),
        }

    samples = generate_load(spec, lambda: before.update(snapshot()))
    after = snapshot()
    seconds = after["clock"] - before["clock"]
    used = {key: (after[key] - before[key]) / seconds for key in after}
    stats = store.stats()
    return Phase(
        name=name,
        samples=samples,
        seconds=seconds,
        bytes_each=size if spec.kind == "upload" else 0,
        server_cpu=used["server"],
        worker_cpu=used["worker"],
        load_cpu=samples.cpu_seconds / seconds + used["bench"],
        machine_cpu=used["machine"],
        worker_done=stats.total(JobState.SUCCEEDED) - done_before,
        still_queued=backlog.queued(),
        paced=spec.rate is not None,
    )


# -- the load generator ----------------------------------------------------------------------


def generate_load(spec: LoadSpec, on_start: Callable[[], None]) -> Samples:
    """Run the load-generator processes and gather what they measured.

    `on_start` runs once they are all started up and about to send, so that what it reads
    leaves their start-up (spawning, imports) out.
    """
    mp = multiprocessing.get_context("spawn")
    ready = mp.Barrier(spec.processes + 1)
    start_at = mp.Value("d", 0.0)
    results: Any = mp.Queue()
    processes = [
        mp.Process(target=load_process, args=(spec, index, ready, start_at, results))
        for index in range(spec.processes)
    ]
    for process in processes:
        process.start()
    ready.wait(timeout=60)
    start_at.value = time.time() + 0.05
    on_start()
    ready.wait(timeout=60)
    merged = Samples()
    for _ in processes:
        part: Samples = results.get(timeout=600)
        merged.requests += part.requests
        merged.cpu_seconds += part.cpu_seconds
    for process in processes:
        process.join()
    return merged


def load_process(spec: LoadSpec, index: int, ready: Any, start_at: Any, results: Any) -> None:
    """One load-generator process: `spec.threads` threads share this process's requests."""
    mine = list(range(index, spec.count, spec.processes))  # global request numbers
    lock = threading.Lock()
    samples = Samples()
    clients: list[Any] = [
        RawClient(spec.url, spec.priority)
        if spec.kind == "small" and spec.client == "raw"
        else httpx.Client(base_url=spec.url, timeout=REQUEST_TIMEOUT)
        for _ in range(spec.threads)
    ]
    gc.freeze()  # a full collection here would be timed as the server's latency
    ready.wait(timeout=60)  # all started up
    cpu_before = time.process_time()
    ready.wait(timeout=60)  # start_at is set
    base = start_at.value
    time.sleep(max(0.0, base - time.time()))

    def next_number() -> int | None:
        with lock:
            return mine.pop(0) if mine else None

    def run(client: Any) -> None:
        while (number := next_number()) is not None:
            scheduled = base + number / spec.rate if spec.rate else time.time()
            time.sleep(max(0.0, scheduled - time.time()))
            sent = time.time()
            status = send(client, spec, number)
            answered = time.time()
            with lock:
                samples.requests.append((scheduled, sent, answered, status))

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples.cpu_seconds = time.process_time() - cpu_before
    for client in clients:
        client.close()
    results.put(samples)


def send(client: Any, spec: LoadSpec, number: int) -> int:
    """One submission; its HTTP status, or 0 when it got no answer."""
    if isinstance(client, RawClient):
        return client.post_small()
    try:
        if spec.kind == "small":
            return client.post("/v1/jobs", json=small_body(spec.priority)).status_code
        nonce = b"nonce-%016d" % (spec.nonce_base + number)
        body = spec.pdf.replace(NONCE, nonce, 1)
        files = {"file": (f"upload-{number}.pdf", body, "application/pdf")}
        form = {"operation": "ingest", "priority": "low"}
        return client.post("/v1/jobs", data=form, files=files).status_code
    except httpx.HTTPError:
        return 0


def small_body(priority: str) -> dict[str, Any]:
    """The JSON of a small submission."""
    return {**SMALL_BODY, "priority": priority}


class RawClient:
    """HTTP/1.1 over one keep-alive socket, for the small JSON submission alone.

    httpx spends about 0.4 ms of CPU on a request; at 500 requests/s that is 20% of a core taken
    from the server it measures on a 2-core machine, and its threads' turns at the interpreter
    lock are counted as the server's latency. This sends prepared bytes and reads the answer by
    its Content-Length: a tenth of that. Each answer's status is checked; its body is read whole
    (the server sends every byte) but not parsed.
    """

    def __init__(self, url: str, priority: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        body = json.dumps(small_body(priority)).encode()
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body
        self.sock: socket.socket | None = None
        self.buffer = b""

    def post_small(self) -> int:
        """One submission; its HTTP status, or 0 when it got no answer (the socket is then
        opened anew for the next one)."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=REQUEST_TIMEOUT)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buffer = b""
            self.sock.sendall(self.request)
            head = self._read_until(b"\r\n\r\n")
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            self._read_exactly(length)
            if close:
                self.close()
            return status
        except (OSError, ValueError):
            self.close()
            return 0

    def _read_until(self, marker: bytes) -> bytes:
        """Bytes up to `marker` (which is consumed), reading as needed."""
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return head

    def _read_exactly(self, count: int) -> bytes:
        """The next `count` bytes."""
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _fill(self) -> None:
        """Read what the socket has; a closed connection is an error."""
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        """Close the socket, if open."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# -- the report ------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """The `share` percentile (0-100) of `values`."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 10) - 1]


def print_table(phases: list[Phase], args: argparse.Namespace) -> None:
    """The results tables and what to read them against."""
    table = Table(
        title=f"POST /v1/jobs, {args.concurrency} clients, while 2 workers run "
        f"{args.sleep_ms} ms noop jobs, ~{args.depth:,} queued (SQLite)"
    )
    for column in ("phase", "requests", "errors", "per s", "MB/s", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        latencies = phase.latencies_ms()
        megabytes = phase.rate * phase.bytes_each / 1e6
        table.add_row(
            phase.name,
            f"{len(phase.samples.requests):,}",
            f"{len(phase.samples.requests) - len(phase.answered):,}",
            f"{phase.rate:,.0f}",
            f"{megabytes:,.1f}" if phase.bytes_each else "-",
            f"{percentile(latencies, 50):.1f}",
            f"{percentile(latencies, 99):.1f}",
            f"{max(latencies):.1f}",
        )
    console.print(table)
    usage = Table(title="meanwhile: CPU (100% = one core) and the workers")
    for column in ("phase", "server", "load gen", "worker", "other", "jobs run/s", "queued"):
        usage.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        usage.add_row(
            phase.name,
            f"{phase.server_cpu:.0%}",
            f"{phase.load_cpu:.0%}",
            f"{phase.worker_cpu:.0%}",
            f"{phase.other_cpu:.0%}",
            f"{phase.worker_done / phase.seconds:,.0f}",
            f"{phase.still_queued:,}",
        )
    console.print(usage)
    console.print(
        f"{os.cpu_count()} cores; small submissions at priority {args.small_priority}. "
        "server: the serve process (the API); load gen: the clients and "
        "this script; worker: the worker, its forkserver and children; other: the rest of the "
        "machine meanwhile; queued: the backlog's jobs still waiting at the end of the phase "
        "(more than 0: the workers never ran dry). The load "
        "generator shares the cores with the server: its own cost lowers the figures above. "
        "Paced latencies count from each request's scheduled send time."
    )
    paced = next(p for p in phases if p.paced)
    p99 = percentile(paced.latencies_ms(), 99)
    # The answered rate runs from the first send to the last answer, so a run that keeps pace
    # exactly shows a hair under the offered rate; latency counted from the scheduled send time
    # is what shows a server falling behind.
    kept_pace = args.rate >= 500 and paced.rate >= 0.99 * args.rate
    everything = len(paced.answered) == len(paced.samples.requests)
    met = kept_pace and everything and p99 < 50
    console.print(
        "target: >= 500 small submissions/s with p99 < 50 ms while the workers are busy: "
        f"{'met' if met else 'NOT met'} (paced run: {paced.rate:,.0f}/s, p99 {p99:.1f} ms)"
    )


if __name__ == "__main__":
    main()
