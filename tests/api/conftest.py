"""A real uvicorn server on a free port, over a fresh SQLite store, and real clients and workers."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pypdf
import pytest
import uvicorn
from pydantic import SecretStr

from docqueue.api import create_app
from docqueue.settings import Settings
from docqueue.store import WorkerRegistry, make_engine, upgrade
from tests.conftest import quick_settings
from tests.e2e.workers import kill_tree, start_worker, wait_for

SECRET = "cron-secret"


class ApiServer:
    """create_app(settings) served by uvicorn in a background thread on a port of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self) -> None:
        """Start serving; return once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the API server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


@pytest.fixture
def api_settings(tmp_path: Path) -> Settings:
    """Settings on a fresh SQLite store and storage folder, with the test processors loaded."""
    url = f"sqlite:///{tmp_path / 'docqueue.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return quick_settings(
        url,
        tmp_path,
        imports=["tests.e2e.processors"],
        process_secret=SecretStr(SECRET),
        ready_worker_seconds=30.0,
        max_wait_seconds=30.0,
    )


Serve = Callable[..., httpx.Client]


@pytest.fixture
def serve(api_settings: Settings) -> Iterator[Serve]:
    """Start a server (settings overridden by keyword) and return a client for it."""
    servers: list[ApiServer] = []
    clients: list[httpx.Client] = []

    def start(**overrides: Any) -> httpx.Client:
        server = ApiServer(api_settings.model_copy(update=overrides))
        server.start()
        servers.append(server)
        client = httpx.Client(
            base_url=server.url,
            timeout=30,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()


@pytest.fixture
def client(serve: Serve) -> httpx.Client:
    """A client of a server with the default test settings."""
    return serve()


@pytest.fixture
def worker(api_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real `docqueue worker` on the same store, registered before the test goes on."""
    process = start_worker(api_settings, "--concurrency", "2")
    registry = WorkerRegistry(make_engine(api_settings.resolved_database_url))
    try:
        wait_for(lambda: bool(registry.list()), 30, "the worker to register")
        yield process
    finally:
        kill_tree(process)
        registry.engine.dispose()


def make_pdf(pages: int = 1) -> bytes:
    """A small, real PDF of blank pages."""
    writer = pypdf.PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def process(client: httpx.Client, limit: int = 50) -> dict[str, int]:
    """Run due jobs through the cron trigger."""
    response = client.post(
        "/v1/queue/process", params={"limit": limit}, headers={"X-Docqueue-Secret": SECRET}
    )
    assert response.status_code == 200, response.text
    report: dict[str, int] = response.json()
    return report


def submit(client: httpx.Client, operation: str = "noop", **fields: Any) -> httpx.Response:
    """POST a JSON job."""
    return client.post("/v1/jobs", json={"operation": operation, **fields})


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The response is a problem document of the given kind; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://docqueue.dev/problems/{slug}", body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def stored_blobs(settings: Settings) -> list[Path]:
    """The content-addressed files in the test storage."""
    root = Path(settings.resolved_storage_url.removeprefix("file://")) / "sha256"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []
