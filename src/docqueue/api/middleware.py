"""ASGI middleware: a log line and metrics for every request, and the request body size limit."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from docqueue.api.metrics import Metrics
from docqueue.api.problems import TOO_LARGE, ProblemError, problem_response

log = logging.getLogger("docqueue.api")

#: Room for the form fields and multipart framing around an upload of the largest allowed size.
FORM_OVERHEAD = 1024 * 1024


class ObserveRequests:
    """Logs each request (with its job id when it has one) and records its metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and remember the status it was answered with."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], route, status, elapsed)
            _log_request(scope, status, elapsed)


def _log_request(scope: Scope, status: int, elapsed: float) -> None:
    """One line per request; `job_id` rides along as logging extra when the request names a job,
    and an endpoint's `log_note` (request.state) ends the line."""
    state = scope.get("state", {})
    job_id: Any = scope.get("path_params", {}).get("job_id") or state.get("job_id")
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope["path"] + (f"?{query}" if query else "")
    extra = {"job_id": str(job_id)} if job_id else {}
    note = state.get("log_note")
    log.info(
        "%s %s -> %s in %.1f ms%s",
        scope["method"],
        path,
        status,
        elapsed * 1000,
        f": {note}" if note else "",
        extra=extra,
    )


class LimitBody:
    """Refuses a request body past the upload limit before reading it, or as soon as it passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes + FORM_OVERHEAD
        self.upload_limit = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length, then count what arrives (a chunked body has no length)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(TOO_LARGE, self._detail(), instance=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ProblemError(TOO_LARGE, self._detail())
            return message

        await self.app(scope, receive_counted, send)

    def _detail(self) -> str:
        """What the client reads."""
        return f"the request is larger than the upload limit of {self.upload_limit:,} bytes; send a smaller file"
