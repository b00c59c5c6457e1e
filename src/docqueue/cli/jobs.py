"""`docqueue jobs`: list, show, retry, cancel."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer

from docqueue.cli.output import console, job_table, jobs_table
from docqueue.errors import Conflict, NotFound
from docqueue.models import JobState
from docqueue.settings import Settings
from docqueue.store import JobStore

jobs_app = typer.Typer(help="List and act on jobs.", no_args_is_help=True)


def _store() -> JobStore:
    """The store of the configured settings."""
    return JobStore.from_settings(Settings())


def _job_id(text: str) -> UUID:
    """A job id from the command line, or a clear error."""
    try:
        return UUID(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a job id (a UUID such as 01a2...)") from None


def _fail(error: Exception) -> None:
    """Print a refusal and exit 1."""
    console.print(f"[red]{error}[/]")
    raise typer.Exit(1)


@jobs_app.command("list")
def list_jobs(
    status: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs of this queue.")] = None,
    operation: Annotated[str | None, typer.Option(help="Only jobs of this operation.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most jobs to show.")] = 20,
) -> None:
    """The newest jobs, as a table."""
    page = _store().list_jobs(status=status, queue=queue, operation=operation, limit=limit)
    console.print(jobs_table(page.items))


@jobs_app.command("show")
def show(job_id: str) -> None:
    """One job with its timeline."""
    store = _store()
    try:
        job = store.get(_job_id(job_id))
    except NotFound as exc:
        _fail(exc)
    console.print(job_table(job, store.events(job.id)))


@jobs_app.command("retry")
def retry(job_id: str) -> None:
    """Queue a failed or cancelled job again."""
    try:
        job = _store().retry(_job_id(job_id))
    except (NotFound, Conflict) as exc:
        _fail(exc)
    console.print(f"job {job.id} is queued again")


@jobs_app.command("cancel")
def cancel(job_id: str) -> None:
    """Cancel a waiting or running job."""
    try:
        job = _store().cancel(_job_id(job_id))
    except (NotFound, Conflict) as exc:
        _fail(exc)
    console.print(f"job {job.id} is cancelled")
