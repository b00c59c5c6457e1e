"""GET /v1/jobs/{id}/events: server-sent events from a real server while a real worker runs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.api.conftest import process, submit

pytestmark = pytest.mark.timeout(60)


def read_events(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every event of a stream until the server ends it: id, event and parsed data."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with client.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                current[field] = json.loads(value) if field == "data" else value
    return events


@pytest.mark.usefixtures("worker")
def test_stream_follows_the_job_until_it_succeeds(client: httpx.Client) -> None:
    """queued, running, progress..., succeeded; ids increase; the stream ends by itself."""
    job = submit(client, params={"sleep_ms": 500}).json()
    events = read_events(client, job["links"]["events"])
    types = [e["event"] for e in events]
    assert types[0] == "queued" and types[-1] == "succeeded" and "running" in types
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    last = events[-1]["data"]
    assert last["job_id"] == job["id"] and last["type"] == "succeeded" and last["at"]


def test_last_event_id_resumes_after_it(client: httpx.Client) -> None:
    """A reconnecting client gets only the events after the one it names."""
    job = submit(client).json()
    process(client)
    everything = read_events(client, job["links"]["events"])
    assert [e["event"] for e in everything] == ["queued", "running", "succeeded"]
    resumed = read_events(client, job["links"]["events"], {"Last-Event-ID": everything[0]["id"]})
    assert [e["event"] for e in resumed] == ["running", "succeeded"]


def test_stream_of_a_cancelled_job_ends_with_cancelled(client: httpx.Client) -> None:
    """Cancellation finishes the stream too."""
    job = submit(client, delay=3600).json()
    client.post(job["links"]["cancel"])
    assert [e["event"] for e in read_events(client, job["links"]["events"])] == [
        "scheduled",
        "cancelled",
    ]
