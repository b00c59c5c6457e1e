"""Content-addressed object storage over fsspec URLs: file:// by default, s3:// for many machines."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import fsspec

from docqueue.errors import DocqueueError
from docqueue.models import Artifact

CHUNK = 1 << 20


class TooLarge(DocqueueError):
    """An upload went past the size limit; nothing of it was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the file is larger than the limit of {limit:,} bytes; send a smaller one"
        )
        self.limit = limit


@dataclass(frozen=True)
class StoredBlob:
    """Bytes in storage: their address and size."""

    sha256: str
    size: int


def sniff_media_type(head: bytes) -> str | None:
    """The media type told by a file's first bytes, for the types docqueue reads; else None."""
    if b"%PDF-" in head[:1024]:
        return "application/pdf"
    return None


class Storage:
    """Stores bytes under their sha256; the same bytes are kept once."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.fs.makedirs(self.root, exist_ok=True)

    def key(self, sha256: str) -> str:
        """Where the bytes of `sha256` live: sha256/ab/abcdef..."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}"

    def put_stream(
        self, source: Iterable[bytes] | IO[bytes], max_bytes: int | None = None
    ) -> StoredBlob:
        """Store a stream chunk by chunk, hashing as it goes; past `max_bytes` keep nothing."""
        chunks = _chunks(source)
        digest = hashlib.sha256()
        size = 0
        temp = f"{self.root}/tmp/{uuid.uuid4().hex}"
        self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)
        try:
            with self.fs.open(temp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            target = self.key(sha256)
            if self.fs.exists(target):
                self.fs.rm(temp)
            else:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.mv(temp, target)
        except BaseException:
            if self.fs.exists(temp):
                self.fs.rm(temp)
            raise
        return StoredBlob(sha256, size)

    def put_file(self, path: Path, max_bytes: int | None = None) -> StoredBlob:
        """Store a local file."""
        with path.open("rb") as file:
            return self.put_stream(file, max_bytes)

    def put_bytes(self, data: bytes) -> StoredBlob:
        """Store bytes already in memory (small ones: results, test data)."""
        return self.put_stream([data])

    def open(self, sha256: str) -> IO[bytes]:
        """A binary stream of the stored bytes."""
        stream: IO[bytes] = self.fs.open(self.key(sha256), "rb")
        return stream

    def iter_bytes(self, sha256: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The stored bytes in chunks, for streaming responses."""
        with self.open(sha256) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    @contextmanager
    def local_path(self, sha256: str) -> Iterator[Path]:
        """A local file with the bytes: the stored file itself on file://, a temporary copy else."""
        if self.local:
            path = Path(self.key(sha256))
            if not path.exists():
                raise FileNotFoundError(f"stored file {sha256} is missing from {self.url}")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="docqueue-") as tmp:
            path = Path(tmp) / sha256
            with self.open(sha256) as source, path.open("wb") as target:
                shutil.copyfileobj(source, target, CHUNK)
            yield path

    def exists(self, sha256: str) -> bool:
        """True when the bytes are stored."""
        return bool(self.fs.exists(self.key(sha256)))

    def size(self, sha256: str) -> int:
        """Size of the stored bytes."""
        return int(self.fs.size(self.key(sha256)))

    def delete(self, sha256: str) -> None:
        """Forget the bytes (the caller checks that no job still names them)."""
        if self.exists(sha256):
            self.fs.rm(self.key(sha256))

    def check_writable(self) -> None:
        """Write and remove a probe file; raises when storage cannot be written."""
        probe = f"{self.root}/tmp/probe-{uuid.uuid4().hex}"
        self.fs.makedirs(f"{self.root}/tmp", exist_ok=True)
        self.fs.pipe_file(probe, b"ok")
        self.fs.rm(probe)


class StorageOutputWriter:
    """Stores the files a processor writes as output artifacts of one job."""

    def __init__(self, storage: Storage, job_id: UUID) -> None:
        self.storage = storage
        self.job_id = job_id

    def put(self, name: str, path: Path, media_type: str) -> Artifact:
        """Store the file at `path` as output `name` of the job."""
        blob = self.storage.put_file(path)
        return Artifact(blob.sha256, blob.size, media_type, name, "output", self.job_id)


def _chunks(source: Iterable[bytes] | IO[bytes]) -> Iterator[bytes]:
    """Chunks from an iterable of bytes or a binary file."""
    if hasattr(source, "read"):
        file: Any = source
        while chunk := file.read(CHUNK):
            yield chunk
    else:
        yield from source
