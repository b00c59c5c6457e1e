"""The supervisor's periodic duties that need no job to run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from docqueue.dispatch.local import Supervisor
from tests.conftest import quick_settings


def test_temporary_files_left_by_dead_processes_are_swept(
    database_url: str, tmp_path: Path
) -> None:
    """A temporary file an hour old (an upload or a job output whose process died before it
    was published) is removed by the worker's first round of duties; a fresh one, which may
    still be written, is kept."""
    settings = quick_settings(database_url, tmp_path)
    supervisor = Supervisor(settings)
    try:
        folder = Path(supervisor.storage.root) / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        stale, fresh = folder / "upload-stale", folder / "upload-fresh"
        stale.write_bytes(b"half an upload")
        fresh.write_bytes(b"an upload going on")
        hour_ago = time.time() - 3700
        os.utime(stale, (hour_ago, hour_ago))
        supervisor._maintain()
        assert not stale.exists()
        assert fresh.exists()
    finally:
        supervisor.close()
