"""The `docqueue` command line, run as a real process against a real SQLite store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from docqueue.models import JobState, NewJob
from docqueue.settings import Settings
from docqueue.store import JobStore
from tests.e2e.workers import ROOT, worker_env


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings on a SQLite file that the command itself must create."""
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'cli.db'}")


def docqueue(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `docqueue ARGS` and return what it printed."""
    env = worker_env(settings, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "docqueue", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_jobs_and_stats(sqlite_settings: Settings) -> None:
    """db upgrade makes the store; jobs list/show/cancel/retry and stats act on it."""
    done = docqueue(sqlite_settings, "db", "upgrade")
    assert done.returncode == 0 and "is up to date" in done.stdout
    store = JobStore.from_settings(sqlite_settings)
    first, _ = store.enqueue(NewJob("noop", queue="pdf"))
    second, _ = store.enqueue(NewJob("noop"))

    listing = docqueue(sqlite_settings, "jobs", "list")
    assert listing.returncode == 0
    assert str(first.id) in listing.stdout and str(second.id) in listing.stdout

    cancelled = docqueue(sqlite_settings, "jobs", "cancel", str(first.id))
    assert cancelled.returncode == 0 and store.get(first.id).status == JobState.CANCELLED
    again = docqueue(sqlite_settings, "jobs", "cancel", str(first.id))
    assert again.returncode == 1 and "only queued, scheduled or running" in again.stdout

    retried = docqueue(sqlite_settings, "jobs", "retry", str(first.id))
    assert retried.returncode == 0 and store.get(first.id).status == JobState.QUEUED

    shown = docqueue(sqlite_settings, "jobs", "show", str(first.id))
    assert shown.returncode == 0
    assert "cancelled" in shown.stdout and "queued" in shown.stdout  # the timeline

    stats = docqueue(sqlite_settings, "stats")
    assert stats.returncode == 0 and "pdf" in stats.stdout and "default" in stats.stdout

    only_pdf = docqueue(sqlite_settings, "jobs", "list", "--queue", "pdf")
    assert str(first.id) in only_pdf.stdout and str(second.id) not in only_pdf.stdout


def test_bad_job_id_says_what_is_wrong(sqlite_settings: Settings) -> None:
    """A mistyped id is refused with a message, not a traceback."""
    docqueue(sqlite_settings, "db", "upgrade")
    shown = docqueue(sqlite_settings, "jobs", "show", "not-a-uuid")
    assert shown.returncode == 2 and "is not a job id" in shown.stdout + shown.stderr
    missing = docqueue(sqlite_settings, "jobs", "show", "01a20866-a298-7456-b079-4d600a20f9fc")
    assert missing.returncode == 1 and "does not exist" in missing.stdout
