"""How the command line shows things: tables for lists, panels for one job."""

from __future__ import annotations

from datetime import datetime

from rich.console import Console
from rich.table import Table

from docqueue.models import Job, JobEvent, JobState, QueueStats, redacted

console = Console()
STATE_STYLE = {
    JobState.QUEUED: "cyan",
    JobState.SCHEDULED: "blue",
    JobState.RUNNING: "yellow",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELLED: "dim",
}


def when(value: datetime | None) -> str:
    """A timestamp to the second, or a dash."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def state(value: JobState) -> str:
    """A job state in its colour."""
    return f"[{STATE_STYLE[value]}]{value.value}[/]"


def jobs_table(jobs: list[Job]) -> Table:
    """One row per job."""
    table = Table(title="jobs", show_lines=False)
    for column in ("id", "operation", "queue", "status", "prio", "attempt", "created", "finished"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            str(job.id),
            job.operation,
            job.queue,
            state(job.status),
            str(job.priority),
            f"{job.attempt}/{job.max_attempts}",
            when(job.created_at),
            when(job.finished_at),
        )
    return table


def job_table(job: Job, events: list[JobEvent]) -> Table:
    """Every field of one job, then its timeline."""
    table = Table(title=f"job {job.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "operation": job.operation,
        "queue": job.queue,
        "status": state(job.status),
        "priority": str(job.priority),
        "attempt": f"{job.attempt} of {job.max_attempts}",
        "params": str(redacted(job.params)),
        "progress": "-"
        if job.progress is None
        else f"{job.progress:.0%} {job.progress_message or ''}",
        "created": when(job.created_at),
        "run at": when(job.run_at),
        "started": when(job.started_at),
        "finished": when(job.finished_at),
        "worker": job.worker_id or "-",
        "result": str(job.result) if job.result is not None else "-",
        "error": f"{job.error['type']}: {job.error['message']}" if job.error else "-",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    for event in events:
        table.add_row(f"  {when(event.at)}", f"{event.type} {event.data or ''}")
    return table


def stats_table(stats: QueueStats) -> Table:
    """Jobs per queue (rows) and state (columns)."""
    table = Table(title="queues")
    table.add_column("queue")
    for job_state in JobState:
        table.add_column(job_state.value, justify="right")
    for queue, counts in sorted(stats.counts.items()):
        table.add_row(queue, *(str(counts.get(s.value, 0)) for s in JobState))
    age = "-" if stats.oldest_queued_age is None else f"{stats.oldest_queued_age:.1f}s"
    table.caption = (
        f"oldest queued: {age}; finished in the last minute: {stats.finished_last_minute}"
    )
    return table
