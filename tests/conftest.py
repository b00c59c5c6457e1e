"""Fixtures shared by every test: real SQLite files and a real PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from docqueue.models import RetryPolicy
from docqueue.settings import Settings
from docqueue.store import JobStore, make_engine, upgrade
from tests.services import postgres_url, require_service

TABLES = "job_events, artifacts, workers, jobs"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database made for this test run, migrated once, dropped at the end."""
    require_service("postgres")
    admin_url = make_url(postgres_url())
    name = f"docqueue_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(
        admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated job store: a new SQLite file, or the emptied PostgreSQL test database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'docqueue.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_database")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the fresh store."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> JobStore:
    """A JobStore with quick retries, so tests need not wait for backoff."""
    return JobStore(engine, retry_policy=RetryPolicy(base_delay=0.0, max_delay=0.0))


def quick_settings(database_url: str, tmp_path: Path, **extra: Any) -> Settings:
    """Settings on a test's own store and files, with short leases and no retry backoff."""
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        storage_url=(tmp_path / "files").as_uri(),
        lease_seconds=3.0,
        retry_base_delay=0.0,
        retry_max_delay=0.0,
        poll_interval=0.01,
        shutdown_grace=5.0,
        **extra,
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for a worker on the fresh store, with short leases and quick retries."""
    return quick_settings(database_url, tmp_path)
