"""Errors as `application/problem+json` (RFC 9457), each kind with a stable `type` URI."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from docqueue.api.schemas import Problem
from docqueue.errors import (
    Conflict,
    DocqueueError,
    FileRemoved,
    IdempotencyKeyReused,
    InputError,
    InvalidJob,
    NotFound,
    QueueFull,
    UnsupportedMediaType,
)
from docqueue.storage import TooLarge

log = logging.getLogger("docqueue.api")

PROBLEM_BASE = "https://docqueue.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Kind:
    """One kind of problem: its slug (the end of the type URI), title and HTTP status."""

    slug: str
    title: str
    status: int

    @property
    def type(self) -> str:
        """The stable type URI."""
        return PROBLEM_BASE + self.slug


NOT_FOUND = Kind("not-found", "Not found", 404)
INVALID_JOB = Kind("invalid-job", "Invalid job", 422)
KEY_REUSED = Kind("idempotency-key-reused", "Idempotency key reused", 422)
INVALID_INPUT = Kind("invalid-input", "Invalid input", 422)
VALIDATION = Kind("validation-error", "Request validation failed", 422)
TOO_LARGE = Kind("payload-too-large", "Payload too large", 413)
UNSUPPORTED = Kind("unsupported-media-type", "Unsupported media type", 415)
CONFLICT = Kind("conflict", "Conflict", 409)
FILE_REMOVED = Kind("file-removed", "File removed", 409)
NOT_FINISHED = Kind("not-finished", "Job not finished", 409)
QUEUE_FULL = Kind("queue-full", "Queue full", 429)
FORBIDDEN = Kind("forbidden", "Forbidden", 403)
NOT_READY = Kind("not-ready", "Not ready", 503)
INTERNAL = Kind("internal-error", "Internal server error", 500)

#: Most specific first: the first class an error is an instance of decides its kind.
ERROR_KINDS: list[tuple[type[Exception], Kind]] = [
    (NotFound, NOT_FOUND),
    (FileRemoved, FILE_REMOVED),
    (Conflict, CONFLICT),
    (QueueFull, QUEUE_FULL),
    (TooLarge, TOO_LARGE),
    (UnsupportedMediaType, UNSUPPORTED),
    (IdempotencyKeyReused, KEY_REUSED),
    (InvalidJob, INVALID_JOB),
    (InputError, INVALID_INPUT),
]

#: Kinds for the HTTP errors Starlette and FastAPI raise themselves (unknown route, bad method).
STATUS_KINDS = {
    kind.status: kind for kind in (NOT_FOUND, TOO_LARGE, UNSUPPORTED, FORBIDDEN, NOT_READY)
}


def problem_responses(
    *codes: int, ok: dict[str, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries saying that these statuses answer with a problem document (and 200 `ok`)."""
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "A problem."}
        for code in codes
    }
    if ok is not None:
        responses[200] = ok
    return responses


class ProblemError(HTTPException):
    """An HTTP error of a known kind, raised by the API itself, with extension members."""

    def __init__(
        self,
        kind: Kind,
        detail: str,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(kind.status, detail, headers)
        self.kind = kind
        self.extensions = extensions


def problem_response(
    kind: Kind,
    detail: str,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    status: int | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json answer."""
    body: dict[str, Any] = {
        "type": kind.type,
        "title": kind.title,
        "status": status or kind.status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return JSONResponse(
        body,
        status_code=status or kind.status,
        headers=dict(headers) if headers else None,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def kind_of(error: Exception) -> Kind:
    """The problem kind of a docqueue error."""
    for cls, kind in ERROR_KINDS:
        if isinstance(error, cls):
            return kind
    return INTERNAL


async def docqueue_error(request: Request, error: Exception) -> JSONResponse:
    """NotFound, Conflict, QueueFull, InvalidJob, TooLarge... as problems."""
    kind = kind_of(error)
    headers = None
    if isinstance(error, QueueFull):
        headers = {"Retry-After": str(error.retry_after)}
    if kind is INTERNAL:
        log.error("unexpected %s: %s", type(error).__name__, error, exc_info=error)
    return problem_response(kind, str(error), instance=request.url.path, headers=headers)


async def http_error(request: Request, error: Exception) -> JSONResponse:
    """Errors raised as HTTPException, ours (with a kind) and the framework's."""
    assert isinstance(error, HTTPException)
    if isinstance(error, ProblemError):
        kind, extensions = error.kind, error.extensions
    else:
        kind = STATUS_KINDS.get(error.status_code) or _kind_of_status(error.status_code)
        extensions = {}
    return problem_response(
        kind,
        str(error.detail),
        instance=request.url.path,
        headers=error.headers,
        status=error.status_code,
        **extensions,
    )


def _kind_of_status(status: int) -> Kind:
    """A kind named after the HTTP status phrase: 405 is `method-not-allowed`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "HTTP error"
    return Kind(phrase.lower().replace(" ", "-"), phrase, status)


async def validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's own request validation, naming every field that failed."""
    assert isinstance(error, RequestValidationError)
    errors = [
        {
            "loc": list(item.get("loc", ())),
            "msg": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in error.errors()
    ]
    fields = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'request'}: {e['msg']}" for e in errors
    )
    return problem_response(
        VALIDATION, fields or "the request is not valid", instance=request.url.path, errors=errors
    )


async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered without it."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem_response(
        INTERNAL,
        "the server failed to handle this request; the error is in its log",
        instance=request.url.path,
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error with problem+json."""
    app.add_exception_handler(DocqueueError, docqueue_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
