"""`docqueue serve --api-processes 2`: several processes answer HTTP on one port, count into
one set of metrics, and stop with the server, gracefully or not."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Service, alive, command_line, descendants, wait_finished
from tests.e2e.workers import wait_for

SUBMITTED = re.compile(r'^docqueue_jobs_submitted_total\{operation="noop"\} (\S+)$', re.M)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """A server with two API processes and one worker child; killed at the end if still up."""
    served = Service(tmp_path / "home", "--concurrency", "1", "--api-processes", "2").start()
    wait_for(lambda: len(api_processes(served)) == 2, 30, "two API processes")
    yield served
    served.kill()


def api_processes(service: Service) -> set[int]:
    """The processes uvicorn started to answer HTTP (spawned by the serve process)."""
    assert service.process is not None
    return {
        pid
        for pid in descendants(service.process.pid)
        if "multiprocessing.spawn" in command_line(pid)
        and "docqueue worker" not in command_line(pid)
    }


def submitted(client: httpx.Client) -> float:
    """docqueue_jobs_submitted_total for noop, as /metrics reports it."""
    found = SUBMITTED.search(client.get("/metrics").text)
    assert found, "no submitted-jobs counter in /metrics"
    return float(found.group(1))


def test_api_processes_share_the_port_and_the_metrics(service: Service) -> None:
    """60 submissions over 12 connections all succeed; every scrape, whichever process answers
    it, counts all 60; SIGTERM stops the API processes, the worker and the metrics folder."""
    assert service.process is not None
    metrics = service.home / "metrics" / str(service.process.pid)
    assert metrics.is_dir()

    def submit(_: int) -> int:
        with service.client() as client:
            return client.post("/v1/jobs", json={"operation": "noop"}).status_code

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(submit, range(60))) == {202}
    with service.client() as client:
        wait_finished(client, 60, 60)
        for _ in range(6):  # new connections: the kernel gives them to either process
            with service.client() as fresh:
                assert submitted(fresh) == 60
    tree = descendants(service.process.pid)
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=30) == 0
    wait_for(lambda: not alive(tree), 15, "every process of the server to exit")
    assert not metrics.exists()


def test_api_processes_stop_when_the_server_is_killed(service: Service) -> None:
    """kill -9 of the serve process alone: its API processes and its worker exit by themselves,
    so that none keeps the port or the jobs."""
    assert service.process is not None
    tree = descendants(service.process.pid) - {service.process.pid}
    assert api_processes(service) <= tree
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(timeout=10)
    wait_for(lambda: not alive(tree), 20, "the API processes and the worker to exit")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{service.url}/healthz", timeout=2)
