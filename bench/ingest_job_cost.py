"""Part 3 of bench/ingest.py: what an ingest job costs in one process, with no queue at all.

Not run on its own: bench/ingest.py calls `measure_job_cost` and `print_job_cost`; its
docstring says what they measure.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from corpus import distinct_copy
from docqueue.models import Artifact, InputFile, Job, JobState
from docqueue.processors import builtin_registry
from docqueue.processors.context import Context
from docqueue.processors.ingest import run_ingest
from docqueue.runner import Runner
from docqueue.storage import BackgroundPublisher, Storage

console = Console()
#: The ways each document is read, in the order they run, with what each adds to the last.
WAYS = {
    "bare": "pypdfium2 alone, as in the throughput part",
    "processor": "+ metadata, cleaning, edges, chunks, JSON (outputs kept in memory)",
    "job": "+ the runner, and the outputs stored and made durable (fsync)",
}


@dataclass
class JobCost:
    """CPU milliseconds per document each way, one figure per round."""

    rounds: dict[str, list[float]]
    documents: int

    def median(self, way: str) -> float:
        """The median over rounds of the way's CPU ms per document."""
        return statistics.median(self.rounds[way])


def measure_job_cost(paths: list[Path], rounds: int) -> JobCost:
    """Each way over every document of `paths`, `rounds` times, in a fresh process."""
    console.print(
        f"reading {len(paths)} documents {rounds} times each way in one process "
        "(bare, the processor, the job) ..."
    )
    mp = multiprocessing.get_context("spawn")
    results: Any = mp.Queue()
    process = mp.Process(target=_measure, args=(paths, rounds, results))
    process.start()
    measured: dict[str, list[float]] = results.get(timeout=1800)
    process.join()
    return JobCost(measured, len(paths))


def _measure(paths: list[Path], rounds: int, results: Any) -> None:
    """CPU ms per document each way, per round. The ways take turns document by document, so
    that the machine's drift falls on all three alike. CPU is the whole process's (every
    thread): the job's outputs are made durable on the publisher's thread, and each job waits
    for them (`settle`), so that their cost is counted with it."""
    from ingest import extract_text  # the throughput part's, imported here: ingest imports this

    measured: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="docqueue-job-cost-", dir=paths[0].parent) as tmp:
        storage = Storage(Path(tmp).as_uri())
        publisher = BackgroundPublisher(storage)
        runner = Runner(builtin_registry(), storage, publisher=publisher)
        datas = [path.read_bytes() for path in paths]
        for number in range(rounds):
            # Distinct inputs each round, so that no output is stored already.
            inputs = [store_input(storage, distinct_copy(data, number)) for data in datas]
            spent = dict.fromkeys(WAYS, 0.0)
            for path, artifact in zip(paths, inputs, strict=True):
                started = time.process_time()
                extract_text(path)
                spent["bare"] += time.process_time() - started
                started = time.process_time()
                _run_processor(runner, storage, artifact)
                spent["processor"] += time.process_time() - started
                started = time.process_time()
                job = ingest_job()
                publisher.settle(job.id, runner.execute(job, [artifact]))
                spent["job"] += time.process_time() - started
            for way, seconds in spent.items():
                measured[way].append(seconds * 1000 / len(paths))
        publisher.close()
    results.put(measured)


def store_input(storage: Storage, data: bytes) -> Artifact:
    """`data` stored as a job's input PDF."""
    blob = storage.put_bytes(data)
    return Artifact(blob.sha256, blob.size, "application/pdf", "doc.pdf", "input")


def ingest_job() -> Job:
    """A claimed `ingest` job with default params."""
    now = datetime.now(UTC)
    return Job(uuid.uuid4(), "ingest", "default", {}, JobState.RUNNING, 0, 1, 3, now, now)


class Described:
    """Where the processor alone writes its outputs: nowhere, they are only described."""

    def put(self, name: str, path: Path, media_type: str) -> Artifact:
        """Describe the file at `path` as output `name`."""
        return self.put_bytes(name, path.read_bytes(), media_type)

    def put_bytes(self, name: str, data: bytes, media_type: str) -> Artifact:
        """Describe `data` as output `name`."""
        return Artifact("0" * 64, len(data), media_type, name, "output")


def _run_processor(runner: Runner, storage: Storage, artifact: Artifact) -> None:
    """The ingest processor on its own: its outputs are described, not stored."""
    with storage.local_path(artifact.sha256) as path:
        source = InputFile(str(path), artifact.name, artifact.media_type, artifact.sha256)
        run_ingest(
            Context(
                job_id=uuid.uuid4(),
                attempt=1,
                operation="ingest",
                params={},
                resources=runner.resources,
                scratch=Path(tempfile.gettempdir()),
                inputs=[source],
                outputs=Described(),
            )
        )


def print_job_cost(cost: JobCost) -> None:
    """CPU per document each way, and the share of the job that is bare extraction."""
    bare = cost.median("bare")
    table = Table(title=f"CPU ms per document in one process, {cost.documents} documents")
    for column in ("way", "median ms", "rounds", "of bare", "what it adds"):
        table.add_column(column, justify="left" if column in ("way", "what it adds") else "right")
    for way, adds in WAYS.items():
        rounds = ", ".join(f"{value:.2f}" for value in cost.rounds[way])
        table.add_row(
            way, f"{cost.median(way):.2f}", rounds, f"{cost.median(way) / bare:.0%}", adds
        )
    console.print(table)
    console.print(
        f"bare / job = {bare / cost.median('job'):.0%}: the job's CPU against bare extraction's, "
        "one process and one document at a time; the throughput part's `jobs` row runs the same "
        "jobs two processes at once, as the service does, and times them"
    )
