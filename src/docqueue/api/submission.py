"""Reading a job submission (a JSON body or a multipart form with a file) and storing its input."""

from __future__ import annotations

import json
import mimetypes
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO, Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from docqueue.api.problems import TOO_LARGE, UNSUPPORTED, ProblemError
from docqueue.api.schemas import JobSubmission
from docqueue.errors import InvalidJob, NotFound, UnsupportedMediaType
from docqueue.models import Artifact, Job, NewJob
from docqueue.processors import Processor
from docqueue.service import DocumentQueueService
from docqueue.storage import CHUNK, sniff_media_type

#: Media types `sniff_media_type` can tell from bytes: a claim of one of these is never trusted.
SNIFFABLE = frozenset({"application/pdf"})
UNKNOWN_TYPE = "application/octet-stream"
#: Largest JSON submission: params are stored in the job row, files travel as multipart.
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Fields a form may carry besides the file: the JSON body's fields.
MAX_FORM_FIELDS = len(JobSubmission.model_fields) + 1
TOO_DEEP = "the JSON is nested too deeply to read; flatten it"


#: Submissions whose JSON (a body, or a form's params) is larger are checked and answered on a
#: thread of the pool: walking megabytes of params would stall the event loop, and every
#: request it serves, for a second and more.
ON_LOOP_BYTES = 64 * 1024


@dataclass
class Submission:
    """A parsed submission: its fields, from a multipart form the uploaded file, and the size of
    its JSON (the body, or the form's params)."""

    fields: JobSubmission
    upload: UploadFile | None = None
    json_bytes: int = 0

    @property
    def large(self) -> bool:
        """True when its params are too large to check on the event loop."""
        return self.json_bytes > ON_LOOP_BYTES


async def read_submission(request: Request) -> AsyncIterator[Submission]:
    """Parse the body by its content type; an uploaded file is closed once the request is done."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        body = await _small_body(request)
        yield Submission(_validated(_json_object(body)), json_bytes=len(body))
        return
    if media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ProblemError(
            UNSUPPORTED,
            f"a job is sent as application/json, or as multipart/form-data with the file in "
            f"`file`; not as {media or 'a body without a content type'}",
        )
    form = await _form(request)
    try:
        params = form.get("params")
        upload, raw = _split_form(form)
        yield Submission(_validated(raw), upload, len(params) if isinstance(params, str) else 0)
    finally:
        await form.close()


SubmissionDep = Annotated[Submission, Depends(read_submission)]


async def _form(request: Request) -> FormData:
    """The form, or a problem that says what to change: Starlette answers a bare 400."""
    try:
        return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        detail = str(exc.detail)
        if "maximum size" in detail:
            raise ProblemError(
                TOO_LARGE,
                f"{detail}: a form field other than `file` holds at most 1 MiB; send larger "
                "params as a JSON body, or the document as the file",
            ) from None
        raise _invalid(
            ("body",),
            f"the form could not be read ({detail}); send one file, in the field `file`, and "
            "the job's fields",
        ) from None


async def _small_body(request: Request) -> bytes:
    """A JSON body, refused past MAX_JSON_BYTES while it arrives: files come as multipart."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ProblemError(
                TOO_LARGE,
                f"a JSON submission may have {MAX_JSON_BYTES:,} bytes at most; "
                "send files as multipart/form-data",
            )
    return bytes(body)


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object of a body, or a validation error saying where it breaks."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid(("body",), f"the body is not JSON: {exc}", "json_invalid") from None
    except RecursionError:
        raise _invalid(("body",), TOO_DEEP, "json_invalid") from None
    if not isinstance(value, dict):
        raise _invalid(("body",), "the body must be a JSON object", "dict_type")
    return value


def _split_form(form: FormData) -> tuple[UploadFile | None, dict[str, Any]]:
    """The file and the other fields of a form; `params` is a JSON string there."""
    upload: UploadFile | None = None
    raw: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "file":
                raise _invalid(("body", key), "send the input file in the field `file`")
            upload = value
        elif key in raw:
            raise _invalid(("body", key), f"the field `{key}` is given twice; send it once")
        elif value != "":
            raw[key] = value
    if isinstance(raw.get("params"), str):
        try:
            raw["params"] = json.loads(raw["params"])
        except json.JSONDecodeError as exc:
            raise _invalid(
                ("body", "params"), f"params is not JSON: {exc}", "json_invalid"
            ) from None
        except RecursionError:
            raise _invalid(("body", "params"), TOO_DEEP, "json_invalid") from None
    return upload, raw


def _validated(raw: dict[str, Any]) -> JobSubmission:
    """The submission's fields, or a validation error naming each bad one."""
    try:
        return JobSubmission.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def _invalid(
    loc: tuple[str, ...], message: str, kind: str = "value_error"
) -> RequestValidationError:
    """A validation error for one field."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": kind}])


async def accept(
    service: DocumentQueueService,
    submission: Submission,
    idempotency_key: str | None,
    max_bytes: int,
) -> tuple[Job, bool, int | None]:
    """Validate, store the input, enqueue: the job, True when it was made (not an idempotent
    replay), and its position in its queue.

    Runs on the event loop, which goes on serving while the job is written (group.py); a file
    to store or look up, or large params, take a trip to the thread pool.
    """
    fields = submission.fields
    processor = service.registry.get(fields.operation)

    def prepare(inputs: tuple[Artifact, ...]) -> NewJob:
        return service.new_job(
            fields.operation,
            fields.params,
            fields.priority,
            inputs=inputs,
            queue=fields.queue,
            run_at=fields.run_at,
            delay=fields.delay,
            idempotency_key=idempotency_key,
            max_attempts=fields.max_attempts,
        )

    uploaded: tuple[Artifact, ...] = ()
    if submission.upload is not None or fields.input_artifact is not None:
        new, uploaded = await run_in_threadpool(
            _prepare_with_input, service, processor, submission, max_bytes, prepare
        )
    elif submission.large:
        new = await run_in_threadpool(_prepare_without_input, processor, prepare)
    else:
        new = _prepare_without_input(processor, prepare)
    try:
        job, created, position = await service.store.enqueue_async(new)
    except Exception:
        # (A request cancelled meanwhile leaves an unnamed upload to the sweep of unused files.)
        await _forget(service, uploaded)
        raise
    if not created:
        await _forget(service, uploaded)
    return job, created, position


def _prepare_without_input(
    processor: Processor, prepare: Callable[[tuple[Artifact, ...]], NewJob]
) -> NewJob:
    """The checked job of a submission that sent no file and named none."""
    if processor.takes_file:
        raise InvalidJob(
            f"operation {processor.name!r} needs an input file ({', '.join(processor.accepts)}); "
            "send it as `file` in a multipart form, or name a stored one in input_artifact"
        )
    return prepare(())


def _prepare_with_input(
    service: DocumentQueueService,
    processor: Processor,
    submission: Submission,
    max_bytes: int,
    prepare: Callable[[tuple[Artifact, ...]], NewJob],
) -> tuple[NewJob, tuple[Artifact, ...]]:
    """The checked job of a submission with a file, and the upload stored for it (none for a
    stored file it names). Params are checked before a byte is stored."""
    service.registry.validate(submission.fields.operation, submission.fields.params)
    inputs = _inputs(service, processor, submission, max_bytes)
    uploaded = inputs if submission.upload is not None else ()
    try:
        return prepare(inputs), uploaded
    except BaseException:
        service.forget_unused(uploaded)
        raise


async def _forget(service: DocumentQueueService, uploaded: tuple[Artifact, ...]) -> None:
    """Remove the bytes of an upload whose job was not made, unless another job names them."""
    if uploaded:
        await run_in_threadpool(service.forget_unused, uploaded)


def _inputs(
    service: DocumentQueueService, processor: Processor, submission: Submission, max_bytes: int
) -> tuple[Artifact, ...]:
    """The job's input artifact: the uploaded file or a stored one (one of them is given)."""
    upload, stored = submission.upload, submission.fields.input_artifact
    if upload is not None and stored is not None:
        raise InvalidJob("send a file or name a stored one in input_artifact, not both")
    if not processor.takes_file:
        raise InvalidJob(f"operation {processor.name!r} takes no input file; send none")
    if upload is not None:
        return (_store_upload(service, processor, upload, max_bytes),)
    assert stored is not None
    return (_stored_input(service, processor, stored, submission.fields.input_name),)


def _store_upload(
    service: DocumentQueueService, processor: Processor, upload: UploadFile, max_bytes: int
) -> Artifact:
    """Check the upload's type from its first bytes, then stream it into storage."""
    name = clean_name(upload.filename)
    head = upload.file.read(CHUNK)
    media_type = media_type_of(head, name, upload.content_type)
    check_accepted(processor, media_type, size=0 if not head else None)
    blob = service.storage.put_stream(chain([head], _rest(upload.file)), max_bytes)
    return Artifact(blob.sha256, blob.size, media_type, name, "input")


def _rest(file: IO[bytes]) -> Iterator[bytes]:
    """The rest of a file in chunks."""
    while chunk := file.read(CHUNK):
        yield chunk


def _stored_input(
    service: DocumentQueueService, processor: Processor, sha256: str, name: str | None
) -> Artifact:
    """An already stored file as the input of a new job."""
    if not service.storage.exists(sha256):
        raise NotFound(f"no stored file has sha256 {sha256}; upload the file itself instead")
    with service.storage.open(sha256) as stream:
        head = stream.read(1024)
    label = clean_name(name)
    media_type = media_type_of(head, label, None)
    check_accepted(processor, media_type)
    return Artifact(sha256, service.storage.size(sha256), media_type, label, "input")


def media_type_of(head: bytes, name: str, claimed: str | None) -> str:
    """The type told by the bytes; a claim (header or name) only for types bytes cannot tell."""
    sniffed = sniff_media_type(head)
    if sniffed:
        return sniffed
    claim = claimed if claimed and claimed != UNKNOWN_TYPE else mimetypes.guess_type(name)[0]
    return claim if claim and claim not in SNIFFABLE else UNKNOWN_TYPE


def check_accepted(processor: Processor, media_type: str, size: int | None = None) -> None:
    """Refuse a file the processor does not read (an empty one says so)."""
    if size == 0:
        raise UnsupportedMediaType(
            f"the file sent is empty (0 bytes); operation {processor.name!r} reads "
            f"{', '.join(processor.accepts)}: send the document itself"
        )
    major = media_type.split("/")[0]
    if any(a in (media_type, "*/*", f"{major}/*") for a in processor.accepts):
        return
    what = "of a type its bytes do not tell" if media_type == UNKNOWN_TYPE else media_type
    raise UnsupportedMediaType(
        f"operation {processor.name!r} reads {', '.join(processor.accepts)}; the file sent is "
        f"{what} (judged by its first bytes, not its name)"
    )


def clean_name(name: str | None) -> str:
    """A client's file name as metadata: no folders, no control characters, not too long."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip().strip(".")
    return kept[:255] or "document"
