"""`noop`: returns at once (or after `sleep_ms`); for health checks, tests and benchmarks."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from docqueue.errors import InputError, RetryableError
from docqueue.models import JSON
from docqueue.processors.context import Context
from docqueue.processors.registry import Processor


class NoopParams(BaseModel):
    """Params of `noop`."""

    model_config = ConfigDict(extra="forbid")

    #: Milliseconds to sleep before returning.
    sleep_ms: int = Field(default=0, ge=0, le=3_600_000)
    #: Fail instead of succeeding: `retryable` (retried with backoff) or `input` (fails at once).
    fail: Literal["retryable", "input"] | None = None
    #: Any JSON value, echoed back in the result.
    echo: JSON | list[object] | str | int | float | bool | None = None


def run_noop(ctx: Context) -> JSON:
    """Sleep if asked, fail if asked, else echo."""
    params = NoopParams.model_validate(ctx.params)
    if params.sleep_ms:
        deadline = time.monotonic() + params.sleep_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if ctx.is_cancelled():
                break
            time.sleep(min(left, 0.05))
    if params.fail == "input":
        raise InputError("noop was asked to fail with an input error (params.fail = 'input')")
    if params.fail == "retryable":
        raise RetryableError("noop was asked to fail (params.fail = 'retryable')")
    return {"echo": params.echo} if params.echo is not None else {}


NOOP = Processor(
    name="noop",
    func=run_noop,
    params_model=NoopParams,
    description="Returns at once; `sleep_ms` waits first, `fail` fails on purpose.",
)
