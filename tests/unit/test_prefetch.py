"""How many short jobs a worker claims ahead, by store: fewer on SQLite, whose one write lock
every submission waits on while a worker's transaction runs."""

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
        supervisor.writer.close()
        supervisor.store.engine.dispose()
