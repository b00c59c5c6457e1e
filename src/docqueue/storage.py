"""Content-addressed object storage over fsspec URLs: file:// by default, s3:// for many machines."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import fsspec

from docqueue.errors import DocqueueError, NotFound
from docqueue.media import sniff_media_type
from docqueue.models import Artifact, ErrorInfo, Failed, Outcome, Succeeded

__all__ = [
    "BackgroundPublisher",
    "StagedBlob",
    "Storage",
    "StorageOutputWriter",
    "StoredBlob",
    "TooLarge",
    "sniff_media_type",
]

CHUNK = 1 << 20
#: Bytes a remote upload buffers in memory before sending a part (5 MiB is S3's smallest part).
UPLOAD_PART = 5 << 20
_HEX = frozenset("0123456789abcdef")


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


@dataclass(frozen=True)
class StagedBlob:
    """Bytes written to a temporary object (`temp`), to be published under their address."""

    sha256: str
    size: int
    temp: str


class Storage:
    """Stores bytes under their sha256; the same bytes are kept once.

    `url` is any fsspec URL (`file:///srv/docqueue/files`, `s3://bucket/prefix`); `options` go to
    the fsspec filesystem (for S3-compatible servers: `endpoint_url=...`). fsspec also reads
    options from the environment, e.g. `FSSPEC_S3='{"endpoint_url": "http://minio:9000"}'`.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url.rstrip("/")
        # Listings are never cached: whether bytes are stored must be asked of the storage
        # itself each time (another process may have stored or removed them since).
        options.setdefault("use_listings_cache", False)
        #: What the filesystem was made with (a second Storage on the same place takes them).
        self.options = {k: v for k, v in options.items() if k != "skip_instance_cache"}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        self.root = self.root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def key(self, sha256: str) -> str:
        """Where the bytes of `sha256` live: <root>/sha256/ab/abcdef..."""
        if len(sha256) != 64 or not _HEX.issuperset(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest (64 lowercase hex characters)")
        return f"{self.root}/sha256/{sha256[:2]}/{sha256}"

    def put_stream(
        self, source: Iterable[bytes] | IO[bytes], max_bytes: int | None = None
    ) -> StoredBlob:
        """Store a stream chunk by chunk, hashing as it goes; past `max_bytes` keep nothing.

        The bytes are durable and under their content key when this returns.
        """
        return self.publish(self.stage(source, max_bytes))

    def stage(
        self, source: Iterable[bytes] | IO[bytes], max_bytes: int | None = None
    ) -> StagedBlob:
        """Write a stream to a temporary object, hashing as it goes; past `max_bytes` keep nothing.

        The bytes are not under their content key yet, nor (on local disks) on the disk for sure:
        `publish` does both, and nothing may refer to them before it has.
        """
        digest = hashlib.sha256()
        size = 0
        temp = self._temp_key("upload")
        out = self._create(temp)
        try:
            for chunk in _chunks(source):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(max_bytes)
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            # Closing would commit what was written (on S3: complete the multipart upload);
            # discarding aborts it, so nothing of a refused or broken upload is kept. (A local
            # file has nothing to discard: it is removed below.)
            discard = getattr(out, "discard", None)
            with contextlib.suppress(Exception):
                if discard is not None:
                    discard()
            with contextlib.suppress(Exception):
                out.close()
            self._remove_quietly(temp)
            raise
        try:
            out.close()
        except BaseException:
            self._remove_quietly(temp)
            raise
        return StagedBlob(digest.hexdigest(), size, temp)

    def publish(self, staged: StagedBlob) -> StoredBlob:
        """Make staged bytes durable and move them to their content key.

        On a local disk the file is synced before the move (a content key never names bytes a
        crash could lose) and its folder after it (so the new name survives a crash too). The
        move replaces bytes already under the key with the same bytes, so either way they count
        as stored now: the sweep of unused files leaves them to the job about to name them.
        (An object store keeps an object's time: there the copy is written again for that.)
        """
        target = self.key(staged.sha256)
        try:
            if self.local:
                _publish_file(staged.temp, target)
            else:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.mv(staged.temp, target)
        except BaseException:
            self._remove_quietly(staged.temp)
            raise
        return StoredBlob(staged.sha256, staged.size)

    def put_file(self, path: Path, max_bytes: int | None = None) -> StoredBlob:
        """Store a local file."""
        with path.open("rb") as file:
            return self.put_stream(file, max_bytes)

    def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredBlob:
        """Store bytes already in memory (a processor's output, a result, test data)."""
        return self.put_stream([data], max_bytes)

    def open(self, sha256: str) -> IO[bytes]:
        """A binary stream of the stored bytes; NotFound when they are not stored."""
        try:
            stream: IO[bytes] = self.fs.open(self.key(sha256), "rb")
        except FileNotFoundError:
            raise self._missing(sha256) from None
        return stream

    def iter_bytes(self, sha256: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The stored bytes in chunks, for streaming responses."""
        with self.open(sha256) as stream:
            while chunk := stream.read(chunk_size):
                yield chunk

    @contextmanager
    def local_path(self, sha256: str) -> Iterator[Path]:
        """A local file with the bytes: the stored file itself on file:// (do not change it), a
        temporary copy removed on exit else."""
        if self.local:
            path = Path(self.key(sha256))
            if not path.is_file():
                raise self._missing(sha256)
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

    def missing(self, sha256s: Collection[str]) -> set[str]:
        """Which of `sha256s` are not stored (a commit asks, holding the store's write lock).
        Storage that cannot answer raises (OSError and the like): an error is not an absence."""
        return {sha256 for sha256 in sha256s if self._absent(self.key(sha256))}

    def _absent(self, key: str) -> bool:
        """True when nothing is stored under `key`."""
        if not self.local:
            try:
                self.fs.info(key)
            except FileNotFoundError:
                return True
            return False
        try:
            os.stat(key)
        except (FileNotFoundError, NotADirectoryError):
            return True
        return False

    def stored_at(self, sha256: str) -> float | None:
        """When the bytes were last stored (a Unix time); None when they are not stored, or
        storage does not tell."""
        try:
            return _modified(self.fs.info(self.key(sha256)))
        except FileNotFoundError:
            return None

    def stored(self, prefix: str) -> Iterator[tuple[str, float | None]]:
        """The addresses stored under a two-hex-digit `prefix` ("00" to "ff"), each with the
        time its bytes were last stored (None where storage does not tell)."""
        if len(prefix) != 2 or not _HEX.issuperset(prefix):
            raise ValueError(f"{prefix!r} is not two lowercase hex digits")
        try:
            entries = self.fs.ls(f"{self.root}/sha256/{prefix}", detail=True, refresh=True)
        except FileNotFoundError:
            return
        for entry in entries:
            name = entry["name"].rsplit("/", 1)[-1]
            if entry.get("type") == "file" and len(name) == 64 and _HEX.issuperset(name):
                yield name, _modified(entry)

    def size(self, sha256: str) -> int:
        """Size of the stored bytes; NotFound when they are not stored."""
        try:
            return int(self.fs.size(self.key(sha256)))
        except FileNotFoundError:
            raise self._missing(sha256) from None

    def delete(self, sha256: str) -> bool:
        """Forget the bytes (the caller checks that no job still names them); False if absent."""
        key = self.key(sha256)
        if not self.fs.exists(key):
            return False
        try:
            self.fs.rm(key)
        except FileNotFoundError:  # removed by someone else meanwhile
            return False
        return True

    def check_writable(self) -> None:
        """Write, read back and remove a probe object; raises when storage cannot be used."""
        probe = self._temp_key("probe")
        token = uuid.uuid4().bytes
        try:
            with self._create(probe) as out:
                out.write(token)
            if self.fs.cat_file(probe) != token:
                raise OSError(f"storage at {self.url} returned other bytes than were written")
        finally:
            self._remove_quietly(probe)

    def remove_stale_temp(self, older_than: float = 3600.0) -> int:
        """Remove temporary objects left by crashed uploads, older than `older_than` seconds."""
        folder = f"{self.root}/tmp"
        try:
            entries = self.fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for entry in entries:
            modified = _modified(entry)
            if entry.get("type") == "file" and modified is not None and modified < cutoff:
                self._remove_quietly(entry["name"])
                removed += 1
        return removed

    def _temp_key(self, kind: str) -> str:
        """A fresh temporary key beside the content keys (same filesystem, so a move is a rename)."""
        return f"{self.root}/tmp/{kind}-{uuid.uuid4().hex}"

    def _create(self, key: str) -> IO[bytes]:
        """A new temporary object at `key` to write, its folder made if missing.

        On a local disk the file is opened directly: asking first whether the folder is there,
        and fsspec's layers around the file, cost more than writing a small output does.
        """
        if not self.local:
            self.fs.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
            stream: IO[bytes] = self.fs.open(key, "wb", block_size=UPLOAD_PART)
            return stream
        try:
            return open(key, "xb")
        except FileNotFoundError:
            os.makedirs(key.rsplit("/", 1)[0], exist_ok=True)
            return open(key, "xb")

    def _remove_quietly(self, key: str) -> None:
        """Remove `key` if it is there; cleanup must never hide the error that caused it."""
        with contextlib.suppress(Exception):
            if self.fs.exists(key):
                self.fs.rm(key)

    def _missing(self, sha256: str) -> NotFound:
        """The error for bytes that are not stored."""
        return NotFound(f"stored file {sha256} is not in {self.url}; it may have been pruned")


class StorageOutputWriter:
    """Stores the files a processor writes as output artifacts of one job.

    With a `publisher`, outputs are staged and handed to it to publish in the background.
    """

    def __init__(
        self, storage: Storage, job_id: UUID, publisher: BackgroundPublisher | None = None
    ) -> None:
        self.storage = storage
        self.job_id = job_id
        self.publisher = publisher

    def put(self, name: str, path: Path, media_type: str) -> Artifact:
        """Store the file at `path` as output `name` of the job (the name is a label, never a path)."""
        with path.open("rb") as file:
            return self._store(file, name, media_type)

    def put_bytes(self, name: str, data: bytes, media_type: str) -> Artifact:
        """Store `data` as output `name` of the job."""
        return self._store([data], name, media_type)

    def _store(self, source: Iterable[bytes] | IO[bytes], name: str, media_type: str) -> Artifact:
        """Store the bytes now, or stage them for the publisher; the output artifact."""
        blob: StoredBlob | StagedBlob
        if self.publisher is None:
            blob = self.storage.put_stream(source)
        else:
            blob = self.storage.stage(source)
            self.publisher.submit(self.job_id, blob)
        return Artifact(blob.sha256, blob.size, media_type, name, "output", self.job_id)


class BackgroundPublisher:
    """Publishes staged outputs on a thread of its own while the process runs its next job.

    Syncing a file and its folder waits for the disk (on S3 the move is a copy): done here, the
    wait overlaps the next job's work instead of adding to it. A job's outcome may be reported
    only after `settle`, which waits for its outputs and turns a success whose outputs could not
    be stored into a failure to retry.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="docqueue-publish")
        self.pending: dict[UUID, list[Future[StoredBlob]]] = {}

    def submit(self, job_id: UUID, staged: StagedBlob) -> None:
        """Publish `staged`, an output of `job_id`, soon."""
        future = self.pool.submit(self.storage.publish, staged)
        self.pending.setdefault(job_id, []).append(future)

    def settle(self, job_id: UUID, outcome: Outcome) -> Outcome:
        """`outcome` once every output of `job_id` is published; Failed if one could not be."""
        errors = [future.exception() for future in self.pending.pop(job_id, [])]
        error = next((exc for exc in errors if exc is not None), None)
        if error is None or not isinstance(outcome, Succeeded):
            return outcome
        return Failed(ErrorInfo(type(error).__name__, f"an output could not be stored: {error}"))

    def close(self) -> None:
        """Finish what was submitted and stop the thread."""
        self.pool.shutdown(wait=True)


def _chunks(source: Iterable[bytes] | IO[bytes]) -> Iterator[bytes]:
    """Chunks from an iterable of bytes or a binary file (read in CHUNK-sized pieces, not lines)."""
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(CHUNK):
            yield chunk
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


def _modified(entry: dict[str, Any]) -> float | None:
    """A listing entry's modification time as a Unix timestamp, across filesystems."""
    value = entry.get("mtime", entry.get("LastModified"))
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def _publish_file(temp: str, target: str) -> None:
    """Sync the local file `temp`, move it to `target` (making its folder if it is the first
    there) and sync the folder."""
    _sync(temp)
    folder = target.rsplit("/", 1)[0]
    try:
        os.replace(temp, target)
    except FileNotFoundError:  # the first bytes under this prefix
        os.makedirs(folder, exist_ok=True)
        _sync(folder.rsplit("/", 1)[0])
        os.replace(temp, target)
    _sync(folder)


def _sync(path: str) -> None:
    """fsync a local file or folder: its data and its entries reach the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
