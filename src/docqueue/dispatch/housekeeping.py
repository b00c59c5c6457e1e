"""A worker's periodic care of the store and storage: finished jobs past retention, temporary
files of interrupted uploads, and stored files that no job names."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

from docqueue.storage import Storage
from docqueue.store import JobStore

log = logging.getLogger("docqueue.worker")
#: Seconds between prunes of finished jobs past the retention time (and sweeps of temp files).
PRUNE_INTERVAL = 600.0
#: A stored file that no job names is removed once its bytes were last stored this long ago.
#: Such files are outputs of attempts that failed or lost their job, and uploads whose process
#: died before the job was made. The age is a margin for an upload whose job is being made and
#: a success on its way to its commit; files stored since the oldest running attempt started
#: are kept however old (its outputs are named only when it ends).
ORPHAN_AGE = 24 * 3600.0
#: How far the clocks of storage and workers may disagree: files stored up to this long before
#: the oldest running attempt started (by its worker's clock) are kept as well.
CLOCK_SKEW = 600.0
#: Seconds between sweeps of one of the 256 folders of addresses: a full round in 4 hours.
ORPHAN_SWEEP_INTERVAL = 60.0


class Housekeeping:
    """Does each periodic duty when it is due; a failure is logged and tried again next time."""

    def __init__(self, store: JobStore, storage: Storage, retention_days: float | None) -> None:
        self.store = store
        self.storage = storage
        self.retention_days = retention_days
        self.next_prune = 0.0
        self.next_sweep = 0.0
        #: The folder of addresses ("00" to "ff") swept next; workers start at random ones.
        self.folder = random.randrange(256)

    def run(self, now: float) -> None:
        """Do what is due at `now` (monotonic seconds)."""
        if now >= self.next_prune:
            self.next_prune = now + PRUNE_INTERVAL
            self.sweep_temp()
            if self.retention_days:
                self.prune(timedelta(days=self.retention_days))
        if now >= self.next_sweep:
            self.next_sweep = now + ORPHAN_SWEEP_INTERVAL
            self.sweep_unnamed(f"{self.folder:02x}")
            self.folder = (self.folder + 1) % 256

    def prune(self, older_than: timedelta) -> None:
        """Delete jobs finished more than `older_than` ago, and the files only they named.

        A store that cannot be reached raises, as for the supervisor's other store work.
        """
        removed = self.store.prune(older_than)
        if removed:
            files = self.store.forget_files(a.sha256 for a in removed)
            log.info(
                "pruned %d finished jobs' files past retention; %d stored files went with them",
                len({a.job_id for a in removed}),
                files,
            )

    def sweep_temp(self) -> None:
        """Remove temporary files an upload or a job left behind when its process died (an
        hour old: none is in use any more)."""
        try:
            removed = self.storage.remove_stale_temp()
        except Exception as exc:
            log.warning("could not sweep temporary files from %s: %s", self.storage, exc)
            return
        if removed:
            log.info("removed %d temporary files left by interrupted uploads or jobs", removed)

    def sweep_unnamed(self, folder: str, *, age: float = ORPHAN_AGE) -> int:
        """Remove the files of one address folder that no job names, that were last stored
        more than `age` seconds ago and before the oldest running attempt started (its outputs
        are named only when it ends, and a job may have a timeout of its own, longer than
        `age`); return how many went."""
        cutoff = time.time() - age
        try:
            running_since = self.store.running_since()
            if running_since is not None:
                cutoff = min(cutoff, running_since.timestamp() - CLOCK_SKEW)
            old = [
                sha256
                for sha256, stored in self.storage.stored(folder)
                if stored is not None and stored < cutoff
            ]
            removed = self.store.forget_files(old, stored_before=cutoff) if old else 0
        except Exception as exc:
            log.warning("could not sweep unused files from %s: %s", self.storage, exc)
            return 0
        if removed:
            log.info("removed %d stored files that no job names (folder %s)", removed, folder)
        return removed
