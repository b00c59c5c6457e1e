"""How many jobs a worker claims ahead: about a quarter second of work per child, at most the
prefetch setting, which is lower on SQLite, whose one write lock every submission waits on while
a worker's transaction runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from docqueue.dispatch.local import Supervisor
from tests.conftest import quick_settings


@pytest.mark.parametrize("explicit", [None, 10])
def test_prefetch_defaults_by_store_and_follows_the_setting(
    database_url: str, tmp_path: Path, explicit: int | None
) -> None:
    """Without a setting: 64 on SQLite, 256 on PostgreSQL; a setting is used as given."""
    settings = quick_settings(database_url, tmp_path, prefetch=explicit)
    supervisor = Supervisor(settings)
    try:
        default = 256 if database_url.startswith("postgresql") else 64
        expected = default if explicit is None else explicit
        assert supervisor.prefetch == expected
    finally:
        supervisor.close()


@pytest.mark.parametrize(
    ("average_run", "expected"),
    [(0.001, "cap"), (0.1, 5), (0.3, 1), (0.5, 1), (0.6, 0), (30.0, 0)],
)
def test_prefetch_holds_a_quarter_second_of_work_per_child(
    database_url: str, tmp_path: Path, average_run: float, expected: int | str
) -> None:
    """2 children x 0.25 s of work: 5 jobs of 0.1 s ahead, 1 of 0.3-0.5 s, none of longer ones
    (they wait for a free child), and never more than the prefetch setting."""
    settings = quick_settings(database_url, tmp_path, concurrency=2, prefetch_seconds=0.25)
    supervisor = Supervisor(settings)
    try:
        supervisor.average_run = average_run
        assert supervisor._want() == (supervisor.prefetch if expected == "cap" else expected)
    finally:
        supervisor.close()


def test_jobs_not_yet_timed_are_claimed_one_per_free_child(
    database_url: str, tmp_path: Path
) -> None:
    """A fresh worker knows nothing of how long jobs take: it claims none ahead (a job claimed
    ahead waits, and if the worker dies, its lease has to expire first)."""
    settings = quick_settings(database_url, tmp_path, concurrency=2, prefetch_seconds=0.25)
    supervisor = Supervisor(settings)
    try:
        assert supervisor._want() == 0  # no children here, so none idle
    finally:
        supervisor.close()
