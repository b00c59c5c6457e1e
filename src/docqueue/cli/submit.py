"""`docqueue submit`: send files (or a whole folder of PDFs) to a docqueue server and follow them."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from docqueue.cli.output import console

FINISHED = {"succeeded", "failed", "cancelled"}
#: Uploads in flight at once when submitting a folder.
PARALLEL = 8


def submit(
    paths: Annotated[
        list[Path], typer.Argument(help="PDF files, or folders to take every PDF from.")
    ],
    op: Annotated[str, typer.Option("--op", help="Operation to run on each file.")] = "ingest",
    params: Annotated[str, typer.Option(help="Operation params as a JSON object.")] = "{}",
    priority: Annotated[str, typer.Option(help="high, normal, low or 0-9.")] = "normal",
    wait: Annotated[bool, typer.Option(help="Wait for the results and show progress.")] = False,
    server: Annotated[
        str, typer.Option(envvar="DOCQUEUE_SERVER", help="Base URL of the docqueue server.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Submit files to the server; a folder submits every PDF in it and waits for them all."""
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--params is not JSON: {exc}") from None
    files = list(_expand(paths))
    if not files:
        raise typer.BadParameter("no files to submit (a folder is searched for *.pdf)")
    folder = any(path.is_dir() for path in paths)
    with httpx.Client(base_url=server, timeout=120) as client:
        _check_server(client, server)
        jobs = _submit_all(client, files, op, parsed, priority)
        if wait or folder:
            _follow(client, jobs)
            _summary(client, jobs)
        else:
            for path, job in jobs:
                console.print(f"{path}: job [bold]{job['id']}[/] {job['status']}")
    troubled = [job for _, job in jobs if job["status"] in ("failed", "cancelled", "refused")]
    if troubled:
        raise typer.Exit(1)  # scripts tell success from failure by the exit status


def _expand(paths: Iterable[Path]) -> Iterable[Path]:
    """Files as given; folders as every PDF inside them, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() == ".pdf")
        elif path.exists():
            yield path
        else:
            raise typer.BadParameter(f"{path} does not exist")


def _check_server(client: httpx.Client, server: str) -> None:
    """Fail early, and clearly, when no server answers."""
    try:
        client.get("/healthz").raise_for_status()
    except httpx.HTTPError as exc:
        console.print(
            f"[red]no docqueue server answers at {server} ({exc}); start one with `docqueue serve`[/]"
        )
        raise typer.Exit(2) from None


def _submit_all(
    client: httpx.Client, files: list[Path], op: str, params: dict[str, Any], priority: str
) -> list[tuple[Path, dict[str, Any]]]:
    """Upload every file (several at once), with a progress bar."""
    columns = (TextColumn("uploading"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=len(files) == 1) as progress:
        task = progress.add_task("upload", total=len(files))

        def one(path: Path) -> tuple[Path, dict[str, Any]]:
            job = _submit_one(client, path, op, params, priority)
            progress.advance(task)
            return path, job

        with ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(one, files))


def _submit_one(
    client: httpx.Client, path: Path, op: str, params: dict[str, Any], priority: str
) -> dict[str, Any]:
    """Upload one file; the same file, operation, params and priority again give the same job
    (the key covers what the server compares: a key reused for another request is refused)."""
    request = f"{_digest(path)}:{op}:{json.dumps(params, sort_keys=True)}:{priority}"
    key = hashlib.sha256(request.encode())
    with path.open("rb") as file:
        response = client.post(
            "/v1/jobs",
            data={"operation": op, "params": json.dumps(params), "priority": priority},
            files={"file": (path.name, file, "application/pdf")},
            headers={"Idempotency-Key": key.hexdigest()},
        )
    if response.status_code >= 400:
        return {"id": None, "status": "refused", "error": _problem(response)}
    job: dict[str, Any] = response.json()
    return job


def _digest(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(response: httpx.Response) -> str:
    """The detail of a problem+json answer, or its status line."""
    try:
        return str(response.json().get("detail") or response.text)
    except ValueError:
        return f"HTTP {response.status_code}"


def _follow(client: httpx.Client, jobs: list[tuple[Path, dict[str, Any]]]) -> None:
    """Poll until every accepted job is finished, with a bar per file (one) or for all (many)."""
    waiting = {job["id"]: job for _, job in jobs if job["id"] and job["status"] not in FINISHED}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("processing", total=len(jobs), completed=len(jobs) - len(waiting))
        with ThreadPoolExecutor(PARALLEL) as pool:
            while waiting:
                fresh = list(pool.map(lambda i: client.get(f"/v1/jobs/{i}").json(), list(waiting)))
                for job in fresh:
                    waiting[job["id"]].update(job)
                    if job["status"] in FINISHED:
                        del waiting[job["id"]]
                        progress.advance(task)
                if len(jobs) == 1 and fresh:
                    total = fresh[0].get("progress") or 0.0
                    progress.update(task, description=f"processing {total:.0%}")
                if waiting:
                    time.sleep(0.5)


def _summary(client: httpx.Client, jobs: list[tuple[Path, dict[str, Any]]]) -> None:
    """A table of what became of each file, and the result of a single one."""
    if len(jobs) == 1 and jobs[0][1]["status"] == "succeeded":
        console.print_json(data=jobs[0][1].get("result"))
        return
    table = Table(title="submitted")
    for column in ("file", "job", "status", "detail"):
        table.add_column(column)
    counts: dict[str, int] = {}
    for path, job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
        if len(jobs) > 20 and job["status"] == "succeeded":
            continue  # a folder of thousands: list what needs a look, count the rest
        error = job.get("error")
        detail = error.get("message", "") if isinstance(error, dict) else str(error or "")
        table.add_row(str(path), str(job["id"] or "-"), job["status"], detail)
    table.caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(table)
