"""The one execution path for every dispatch: a claimed job goes through its processor to an outcome."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from uuid import UUID

from docqueue.errors import InputError
from docqueue.models import (
    Artifact,
    Cancelled,
    Completion,
    ErrorInfo,
    Failed,
    InputFile,
    Job,
    JobState,
    Outcome,
    Succeeded,
)
from docqueue.processors import Context, Registry, Resources
from docqueue.storage import BackgroundPublisher, Storage, StorageOutputWriter
from docqueue.store import JobStore

log = logging.getLogger("docqueue.runner")
ProgressSink = Callable[[float, str | None], None]


class Runner:
    """Runs jobs in this process, with the resources this process has loaded."""

    def __init__(
        self,
        registry: Registry,
        storage: Storage,
        scratch: Path | None = None,
        publisher: BackgroundPublisher | None = None,
        cpu_threads: Callable[[], int | None] | None = None,
    ) -> None:
        self.registry = registry
        self.storage = storage
        self.resources = Resources(registry)
        self.scratch = scratch
        #: Publishes outputs in the background; then an outcome is final only once settled.
        self.publisher = publisher
        #: The threads a job's math should use now (a worker child's share of the cores).
        self.cpu_threads = cpu_threads

    def execute(
        self,
        job: Job,
        inputs: Sequence[Artifact] = (),
        *,
        progress: ProgressSink | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Run one attempt of `job`; every error becomes a value, nothing escapes."""
        logger = logging.LoggerAdapter(logging.getLogger("docqueue.job"), {"job_id": str(job.id)})
        try:
            processor = self.registry.get(job.operation)
            with ExitStack() as stack:
                scratch = Scratch(self.scratch)
                stack.callback(scratch.remove)
                ctx = Context(
                    job_id=job.id,
                    attempt=job.attempt,
                    operation=job.operation,
                    params=job.params,
                    resources=self.resources,
                    scratch=scratch.make,
                    inputs=[stack.enter_context(self._local(a)) for a in inputs],
                    outputs=StorageOutputWriter(self.storage, job.id, self.publisher),
                    log=logger,
                )
                if progress is not None:
                    ctx.report_progress = progress
                if is_cancelled is not None:
                    ctx.is_cancelled = is_cancelled
                if self.cpu_threads is not None:
                    ctx.cpu_threads = self.cpu_threads
                result = processor.func(ctx) or {}
                if ctx.is_cancelled():
                    return Cancelled()
                return Succeeded(_checked_result(job.operation, result), tuple(ctx.written))
        except InputError as exc:
            logger.info("job failed on its input: %s", exc)
            return Failed(ErrorInfo(type(exc).__name__, str(exc)), permanent=True)
        except Exception as exc:
            logger.warning("job attempt %s failed: %s", job.attempt, exc, exc_info=True)
            return Failed(ErrorInfo(type(exc).__name__, str(exc), traceback.format_exc()))

    @contextmanager
    def _local(self, artifact: Artifact) -> Iterator[InputFile]:
        """An input artifact as a local file for the length of the attempt."""
        with self.storage.local_path(artifact.sha256) as path:
            yield InputFile(str(path), artifact.name, artifact.media_type, artifact.sha256)


class Scratch:
    """A temporary folder made only when a processor first asks for it."""

    def __init__(self, parent: Path | None) -> None:
        self.parent = parent
        self.path: Path | None = None

    def make(self) -> Path:
        """Make the folder."""
        self.path = Path(tempfile.mkdtemp(prefix="docqueue-job-", dir=self.parent))
        return self.path

    def remove(self) -> None:
        """Remove the folder, if it was made."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _checked_result(operation: str, result: object) -> dict[str, object]:
    """The processor's result if it is a JSON object, else an input error naming the processor."""
    if not isinstance(result, dict):
        raise InputError(f"processor {operation!r} returned {type(result).__name__}, not a dict")
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"processor {operation!r} returned a result that is not JSON: {exc}"
        ) from None
    return result


def run_job_id(
    store: JobStore,
    runner: Runner,
    job_id: UUID,
    worker_id: str,
    *,
    lease_seconds: float,
) -> JobState | None:
    """Claim the job `job_id`, run it here and record the outcome (for dispatches that deliver ids).

    Returns the job's new state, or None when the job was not claimable (already taken, finished,
    cancelled or not yet due): the store decides, a delivered id is only a hint.
    """
    job = store.claim_job(job_id, worker_id, lease_seconds=lease_seconds)
    if job is None:
        return None
    held = [(job.id, job.attempt)]
    lost = threading.Event()
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(lease_seconds / 3):
            if store.heartbeat(worker_id, held, lease_seconds=lease_seconds):
                lost.set()
                return

    beat = threading.Thread(target=keep_lease, name=f"lease-{job.id}", daemon=True)
    beat.start()
    try:
        outcome = runner.execute(
            job,
            store.inputs([job.id]).get(job.id, []),
            progress=lambda fraction, message: store.report_progress(
                [(job.id, job.attempt, fraction, message)]
            ),
            is_cancelled=lost.is_set,
        )
    finally:
        stop.set()
        beat.join()
    return store.complete([Completion(job.id, job.attempt, outcome)])[0]
