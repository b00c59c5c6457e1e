"""What a processor receives: its inputs, a writer for outputs, progress, cancellation, resources."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from docqueue.errors import InputError
from docqueue.models import JSON, Artifact, InputFile


class ResourceLookup(Protocol):
    """Where a processor gets its warm resources."""

    def get(self, name: str) -> Any:
        """The resource `name`, loaded once per process."""


class OutputWriter(Protocol):
    """Stores a file a processor produced and describes it."""

    def put(self, name: str, path: Path, media_type: str) -> Artifact:
        """Store the file at `path` as output `name`."""

    def put_bytes(self, name: str, data: bytes, media_type: str) -> Artifact:
        """Store `data` as output `name`."""


def _no_progress(fraction: float, message: str | None) -> None:
    """Progress sink for contexts nobody watches."""


def _never_cancelled() -> bool:
    """Cancellation check for contexts nobody can cancel."""
    return False


def _threads_as_started() -> int | None:
    """Thread count for contexts that share no cores out: the math library's own setting."""
    return None


@dataclass
class Context:
    """One attempt of one job, as its processor sees it."""

    job_id: UUID
    attempt: int
    operation: str
    params: JSON
    resources: ResourceLookup
    #: The attempt's scratch folder, or a function that makes it on first use (most jobs never
    #: need one, and making and removing a folder costs more than a short job).
    scratch: Path | Callable[[], Path]
    inputs: list[InputFile] = field(default_factory=list)
    outputs: OutputWriter | None = None
    report_progress: Callable[[float, str | None], None] = _no_progress
    is_cancelled: Callable[[], bool] = _never_cancelled
    #: How many threads the job's math (torch) should use now, asked before each step of it:
    #: in a worker, the cores shared out among the children running jobs at the moment, so
    #: that a job running alone uses every core. None: the library's own setting.
    cpu_threads: Callable[[], int | None] = _threads_as_started
    log: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.LoggerAdapter(logging.getLogger("docqueue.job"))
    )
    written: list[Artifact] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        """A folder of this attempt's own for temporary files, removed after the attempt."""
        if not isinstance(self.scratch, Path):
            self.scratch = self.scratch()
        return self.scratch

    @property
    def input(self) -> InputFile:
        """The single input file of a one-file operation."""
        if not self.inputs:
            raise InputError(f"operation {self.operation!r} needs an input file and none was given")
        return self.inputs[0]

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far along the job is, from 0.0 to 1.0."""
        self.report_progress(min(max(fraction, 0.0), 1.0), message)

    def write(self, name: str, data: bytes | str, media_type: str) -> Artifact:
        """Store `data` (a str as UTF-8) as the output artifact `name`."""
        encoded = data.encode() if isinstance(data, str) else data
        artifact = self._outputs().put_bytes(name, encoded, media_type)
        self.written.append(artifact)
        return artifact

    def write_file(self, name: str, path: Path, media_type: str) -> Artifact:
        """Store the file at `path` as the output artifact `name` (for outputs too big to hold
        in memory: the file is streamed)."""
        artifact = self._outputs().put(name, path, media_type)
        self.written.append(artifact)
        return artifact

    def _outputs(self) -> OutputWriter:
        """Where outputs go; a context made without storage has none."""
        if self.outputs is None:
            raise RuntimeError("this context has no output storage")
        return self.outputs
