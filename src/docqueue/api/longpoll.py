"""Long-polls (`?wait=N`) of every request of the API answered by one reader of the store.

A request waiting for its job to finish used to read the job again after pauses growing to
half a second: each waiter cost queries of its own, and a job finishing just after a read was
answered up to a pause late. Here the waiters register the job they wait for, and one thread
asks the store every `INTERVAL` which of all the watched jobs have finished (one query, however
many wait) and wakes those waiters at once. The thread runs only while somebody waits.
"""

from __future__ import annotations

import logging
import threading
import time
from uuid import UUID

from docqueue.models import Job
from docqueue.store import JobStore

log = logging.getLogger("docqueue.api")


class FinishWatch:
    """Waits for jobs to finish, for any number of threads at once, with one query per round."""

    #: Seconds between two reads of the store while anyone waits.
    INTERVAL = 0.025

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._waiters: dict[UUID, list[threading.Event]] = {}
        self._running = False

    def wait(self, job: Job, seconds: float) -> Job:
        """`job` once it has finished, or as it stands after `seconds`."""
        if job.status.finished or seconds <= 0:
            return job
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job.id, []).append(event)
            if not self._running:
                self._running = True
                threading.Thread(target=self._watch, name="docqueue-long-poll", daemon=True).start()
        try:
            event.wait(seconds)
        finally:
            with self._lock:
                events = self._waiters[job.id]
                events.remove(event)
                if not events:
                    del self._waiters[job.id]
        return self.store.get(job.id)

    def _watch(self) -> None:
        """Until nobody waits: every INTERVAL, wake the waiters of the jobs that are done."""
        while True:
            time.sleep(self.INTERVAL)
            with self._lock:
                watched = list(self._waiters)
                if not watched:
                    self._running = False
                    return
            try:
                done = self.store.settled(watched)
            except Exception:  # the waiters time out and answer with the job as it stands
                log.warning("long-poll could not read the job store", exc_info=True)
                continue
            with self._lock:
                for job_id in done:
                    for event in self._waiters.get(job_id, ()):
                        event.set()
