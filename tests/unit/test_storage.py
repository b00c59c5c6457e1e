"""Content-addressed storage on a real folder and on a real S3 endpoint (moto's server)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from docqueue.errors import NotFound
from docqueue.media import sniff_media_type
from docqueue.models import ErrorInfo, Failed, Succeeded
from docqueue.storage import BackgroundPublisher, Storage, StorageOutputWriter, TooLarge

BUCKET = "docqueue-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API on a free local port, served by moto in a thread (moto[server] and boto3
    are test dependencies: without them these tests fail, they do not skip)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """An empty storage: a temporary folder, or a fresh prefix in a bucket on the S3 server."""
    if request.param == "file":
        return Storage((tmp_path / "files").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    return Storage(
        f"s3://{BUCKET}/{uuid.uuid4().hex}",
        endpoint_url=endpoint,
        key="testing",
        secret="testing",
        client_kwargs={"region_name": "us-east-1"},
    )


def stored_keys(storage: Storage) -> list[str]:
    """Every object under the storage root, as paths relative to it."""
    storage.fs.invalidate_cache()
    return sorted(key[len(storage.root) + 1 :] for key in storage.fs.find(storage.root))


def test_bytes_are_stored_under_their_sha256(storage: Storage) -> None:
    data = b"%PDF-1.7 some bytes"
    blob = storage.put_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert (blob.sha256, blob.size) == (digest, len(data))
    assert stored_keys(storage) == [f"sha256/{digest[:2]}/{digest}"]
    with storage.open(digest) as stream:
        assert stream.read() == data
    assert b"".join(storage.iter_bytes(digest, chunk_size=4)) == data
    assert storage.exists(digest)
    assert storage.size(digest) == len(data)


def test_the_same_bytes_are_stored_once(storage: Storage) -> None:
    first = storage.put_bytes(b"same bytes")
    second = storage.put_stream(io.BytesIO(b"same bytes"))
    assert first == second
    assert stored_keys(storage) == [f"sha256/{first.sha256[:2]}/{first.sha256}"]


def test_a_stream_of_chunks_is_hashed_as_it_is_written(storage: Storage) -> None:
    chunk = os.urandom(256 * 1024)
    blob = storage.put_stream(chunk for _ in range(24))  # 6 MiB: more than one S3 part
    assert blob.size == 24 * len(chunk)
    assert blob.sha256 == hashlib.sha256(chunk * 24).hexdigest()
    assert storage.size(blob.sha256) == blob.size


def test_a_file_is_stored_from_its_path(storage: Storage, tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(b"x" * 3000)
    blob = storage.put_file(path)
    assert blob.size == 3000
    assert storage.exists(blob.sha256)


def test_past_the_size_limit_nothing_is_kept(storage: Storage) -> None:
    with pytest.raises(TooLarge, match="larger than the limit of 10 bytes"):
        storage.put_stream([b"12345", b"67890", b"1"], max_bytes=10)
    assert stored_keys(storage) == []
    assert storage.put_stream([b"12345", b"67890"], max_bytes=10).size == 10


def test_missing_bytes_are_not_found(storage: Storage) -> None:
    absent = hashlib.sha256(b"never stored").hexdigest()
    assert not storage.exists(absent)
    with pytest.raises(NotFound, match="not in"):
        storage.open(absent)
    with pytest.raises(NotFound):
        storage.size(absent)
    with pytest.raises(NotFound), storage.local_path(absent):
        pass
    assert storage.delete(absent) is False


def test_stored_addresses_are_listed_by_folder_with_their_time(storage: Storage) -> None:
    """What the sweep for unused files reads: each address of a folder, with when its bytes
    were stored; `missing` tells which addresses are not stored."""
    blob = storage.put_bytes(b"listed")
    absent = hashlib.sha256(b"never stored").hexdigest()
    listed = dict(storage.stored(blob.sha256[:2]))
    assert list(listed) == [blob.sha256]
    when = listed[blob.sha256]
    assert when is not None and abs(when - time.time()) < 300
    assert list(storage.stored("ff" if blob.sha256[:2] != "ff" else "00")) == []
    assert storage.missing({blob.sha256, absent}) == {absent}
    with pytest.raises(ValueError, match="two lowercase hex digits"):
        list(storage.stored("../"))


def test_what_is_stored_is_asked_of_storage_every_time(storage: Storage) -> None:
    """After a listing, another process stores new bytes and removes old ones: `missing` and
    `exists` tell what storage holds now, not what the listing saw (a cached listing would make
    a fresh output look removed, and removed bytes look stored)."""
    old = storage.put_bytes(b"stored before the listing, removed after it")
    new_bytes = b"stored after the listing" + old.sha256[:2].encode()
    new_sha = hashlib.sha256(new_bytes).hexdigest()
    for prefix in {old.sha256[:2], new_sha[:2]}:
        list(storage.stored(prefix))
        assert storage.missing({new_sha}) == {new_sha}
    other = Storage(storage.url, **storage.options, skip_instance_cache=True)
    assert other.put_bytes(new_bytes).sha256 == new_sha
    assert other.delete(old.sha256)
    assert storage.missing({old.sha256, new_sha}) == {old.sha256}
    assert storage.exists(new_sha) and not storage.exists(old.sha256)


def test_bytes_stored_again_are_stored_now(storage: Storage) -> None:
    """The same bytes stored a second time count as stored then (a local file's time is set,
    an object is written again): the sweep of unused files leaves them to the job that stored
    them again. Still one copy under the address."""
    blob = storage.put_bytes(b"stored twice, a second apart")
    first = storage.stored_at(blob.sha256)
    time.sleep(1.1)  # object stores keep times to the second
    storage.put_bytes(b"stored twice, a second apart")
    second = storage.stored_at(blob.sha256)
    assert first is not None and second is not None and second > first
    assert [sha256 for sha256, _ in storage.stored(blob.sha256[:2])] == [blob.sha256]


def test_delete_forgets_the_bytes(storage: Storage) -> None:
    blob = storage.put_bytes(b"short-lived")
    assert storage.delete(blob.sha256) is True
    assert not storage.exists(blob.sha256)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF" * 11, "0" * 63, "g" * 64])
def test_keys_are_only_sha256_digests(storage: Storage, bad: str) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        storage.key(bad)


def test_local_path_is_a_readable_local_file(storage: Storage) -> None:
    blob = storage.put_bytes(b"read me locally")
    with storage.local_path(blob.sha256) as path:
        assert path.read_bytes() == b"read me locally"
        seen = path
    if storage.local:
        assert seen == Path(storage.key(blob.sha256))  # the stored file itself, no copy
    else:
        assert not seen.exists()  # the temporary download is gone


def test_check_writable_passes_and_leaves_nothing(storage: Storage) -> None:
    storage.check_writable()
    assert stored_keys(storage) == []


def test_check_writable_fails_when_storage_cannot_be_written(tmp_path: Path) -> None:
    storage = Storage((tmp_path / "files").as_uri())
    (tmp_path / "files" / "tmp").write_bytes(b"a file where the temp folder should be")
    with pytest.raises(OSError):
        storage.check_writable()


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    storage = Storage((tmp_path / "files").as_uri())
    temp = Path(storage.root) / "tmp"
    temp.mkdir()
    (temp / "upload-old").write_bytes(b"left by a crash")
    (temp / "upload-new").write_bytes(b"still being written")
    an_hour_ago = time.time() - 3700
    os.utime(temp / "upload-old", (an_hour_ago, an_hour_ago))
    assert storage.remove_stale_temp(older_than=3600) == 1
    assert [path.name for path in temp.iterdir()] == ["upload-new"]


def test_remove_stale_temp_keeps_fresh_objects(storage: Storage) -> None:
    storage.fs.makedirs(f"{storage.root}/tmp", exist_ok=True)
    storage.fs.pipe_file(f"{storage.root}/tmp/upload-orphan", b"left by a crash")
    assert storage.remove_stale_temp(older_than=3600) == 0
    assert storage.remove_stale_temp(older_than=-60) == 1
    assert stored_keys(storage) == []


def test_output_writer_makes_output_artifacts(storage: Storage, tmp_path: Path) -> None:
    job_id = uuid.uuid4()
    path = tmp_path / "out-0"
    path.write_bytes(b'{"ok": true}')
    artifact = StorageOutputWriter(storage, job_id).put(
        "../../etc/passwd", path, "application/json"
    )
    assert artifact.role == "output"
    assert artifact.job_id == job_id
    assert artifact.name == "../../etc/passwd"  # a label only
    assert artifact.size == path.stat().st_size
    assert stored_keys(storage) == [f"sha256/{artifact.sha256[:2]}/{artifact.sha256}"]


def test_staged_bytes_are_under_their_key_only_once_published(storage: Storage) -> None:
    """Staged: a temporary object, not under its key; published: under its key, the temporary
    one gone; the same bytes published again leave one copy."""
    data = b"staged bytes"
    staged = storage.stage([data])
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert not storage.exists(staged.sha256)
    storage.publish(staged)
    assert storage.exists(staged.sha256)
    storage.publish(storage.stage([data]))
    assert stored_keys(storage) == [f"sha256/{staged.sha256[:2]}/{staged.sha256}"]


def test_background_publisher_settles_outcomes_once_outputs_are_stored(
    storage: Storage,
) -> None:
    """A job's outcome stands once its outputs are published; a success whose output could not
    be stored (its staged file vanished) becomes a failure to retry; a failure stays one."""
    publisher = BackgroundPublisher(storage)
    stored, lost, failed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        writer = StorageOutputWriter(storage, stored, publisher)
        artifact = writer.put_bytes("document.json", b'{"pages": []}', "application/json")
        outcome = publisher.settle(stored, Succeeded({}, (artifact,)))
        assert isinstance(outcome, Succeeded) and storage.exists(artifact.sha256)

        staged = storage.stage([b"will vanish"])
        storage.fs.rm(staged.temp)
        publisher.submit(lost, staged)
        outcome = publisher.settle(lost, Succeeded({}, ()))
        assert isinstance(outcome, Failed) and not outcome.permanent
        assert "an output could not be stored" in outcome.error.message

        publisher.submit(failed, storage.stage([b"partial output"]))
        given = Failed(ErrorInfo("InputError", "the PDF is corrupt"), permanent=True)
        assert publisher.settle(failed, given) is given
    finally:
        publisher.close()


def test_default_url_without_scheme_is_a_local_folder(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "plain"))
    assert storage.local
    blob = storage.put_bytes(b"plain path")
    assert (tmp_path / "plain" / "sha256" / blob.sha256[:2] / blob.sha256).is_file()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"%PDF-1.7\n%\xe2\xe3", "application/pdf"),
        (b"\x00" * 500 + b"%PDF-1.4", "application/pdf"),
        (b" " * 1020 + b"%PDF-1.4", None),
        (b"PK\x03\x04 a zip file", None),
        (b"", None),
    ],
)
def test_pdf_is_told_from_its_first_bytes(head: bytes, expected: str | None) -> None:
    assert sniff_media_type(head) == expected


def test_an_upload_refused_midway_is_never_committed_on_s3(s3_endpoint: str) -> None:
    """Past the limit after a first 5 MiB part went up, the multipart upload is aborted: S3
    never completes it (a crash before the cleanup would otherwise leave the bytes)."""
    storage = Storage(
        f"s3://{BUCKET}/{uuid.uuid4().hex}",
        endpoint_url=s3_endpoint,
        key="testing",
        secret="testing",
        client_kwargs={"region_name": "us-east-1"},
    )
    calls: list[str] = []
    storage.fs.connect()
    storage.fs.s3.meta.events.register(
        "before-call.s3", lambda model, **_: calls.append(model.name)
    )
    part = b"x" * (1 << 20)
    with pytest.raises(TooLarge):
        storage.put_stream([part] * 8, max_bytes=7 * len(part))
    assert "UploadPart" in calls, "a part went up before the limit was passed"
    assert "CompleteMultipartUpload" not in calls and "PutObject" not in calls
    assert "AbortMultipartUpload" in calls
    assert stored_keys(storage) == []
