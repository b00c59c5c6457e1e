"""Where the tests find PostgreSQL and Redis, and a guard that starts them once or fails the test."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

POSTGRES_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT_URL = "redis://127.0.0.1:6379/0"
SERVICES_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

_answering: set[str] = set()
_failures: dict[str, str] = {}


def postgres_url() -> str:
    """The SQLAlchemy URL of the PostgreSQL test database (DOCQUEUE_TEST_POSTGRES_URL)."""
    return os.environ.get("DOCQUEUE_TEST_POSTGRES_URL", POSTGRES_DEFAULT_URL)


def redis_url() -> str:
    """The URL of the Redis test server (DOCQUEUE_TEST_REDIS_URL)."""
    return os.environ.get("DOCQUEUE_TEST_REDIS_URL", REDIS_DEFAULT_URL)


def _postgres_problem() -> str | None:
    """Why PostgreSQL does not answer a real query, or None when it does."""
    libpq_url = re.sub(r"^postgresql\+\w+://", "postgresql://", postgres_url())
    try:
        with psycopg.connect(libpq_url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return str(error).strip()
    return None


def _redis_problem() -> str | None:
    """Why Redis does not answer PING, or None when it does."""
    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as error:
        return str(error).strip()
    finally:
        client.close()
    return None


_SERVICES = {
    "postgres": (postgres_url, _postgres_problem, "DOCQUEUE_TEST_POSTGRES_URL"),
    "redis": (redis_url, _redis_problem, "DOCQUEUE_TEST_REDIS_URL"),
}


def _ensure(name: str) -> str:
    """Run `scripts/services ensure NAME`; a short account of what it said."""
    try:
        done = subprocess.run(
            [str(SERVICES_SCRIPT), "ensure", name],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`scripts/services ensure {name}` could not run: {error}"
    output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return f"`scripts/services ensure {name}` exited {done.returncode}:\n{output}"


def require_service(name: str) -> None:
    """Fail the calling test unless the named service ("postgres" or "redis") answers.

    A service that does not answer is started (or installed) once per test run with
    `scripts/services ensure NAME`, for servers on loopback only.
    """
    if name in _answering:
        return
    if name in _failures:
        pytest.fail(_failures[name], pytrace=False)
    url_of, problem_of, variable = _SERVICES[name]
    problem = problem_of()
    if problem is None:
        _answering.add(name)
        return
    if urlsplit(url_of()).hostname in LOOPBACK:
        report = _ensure(name)
        problem = problem_of()
        if problem is None:
            _answering.add(name)
            return
    else:
        report = "its host is not loopback, so scripts/services does not manage it."
    _failures[name] = (
        f"{name} does not answer at {url_of()}: {problem}\n{report}\n"
        f"Start it (scripts/services ensure {name}) or point {variable} at one that runs."
    )
    pytest.fail(_failures[name], pytrace=False)
