"""The docqueue API as bench/ingest.py uses it: upload a PDF as a job, wait for it, upload many.

Not a benchmark itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

#: Client threads that upload documents in `submit_all`.
UPLOADERS = 4
FINISHED = {"succeeded", "failed", "cancelled"}
#: Seconds between two looks at the queue's counts in `wait_drained`.
DRAIN_POLL = 0.01


def submit(
    client: httpx.Client,
    data: bytes,
    name: str,
    params: dict[str, Any],
    fields: dict[str, str] | None = None,
) -> str:
    """Upload `data` as an `ingest` job, with more form `fields` if given; its id."""
    files = {"file": (name, data, "application/pdf")}
    form = {"operation": "ingest", "params": json.dumps(params), **(fields or {})}
    response = client.post("/v1/jobs", data=form, files=files)
    response.raise_for_status()
    return str(response.json()["id"])


def wait_finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job once it has finished (long-polls of 30 s); raise if it did not succeed."""
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in FINISHED:
            break
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
    return job


def wait_all(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    """Every job once finished. The last one submitted is waited for first: while jobs run, one
    long-poll is all the client asks of the server."""
    wait_finished(client, ids[-1])
    return [wait_finished(client, job_id) for job_id in ids]


def wait_drained(client: httpx.Client, last_id: str) -> None:
    """Wait for the job `last_id`, then until no job waits or runs any more."""
    wait_finished(client, last_id)
    while True:
        totals: dict[str, int] = client.get("/v1/queue/stats").json()["totals"]
        if not any(count for state, count in totals.items() if state not in FINISHED):
            return
        time.sleep(DRAIN_POLL)


def submit_all(
    url: str,
    documents: Iterable[tuple[str, Callable[[], bytes]]],
    params: dict[str, Any],
    fields: dict[str, str] | None = None,
) -> list[str]:
    """Upload every (name, maker of its bytes) from UPLOADERS threads, with more form `fields`
    if given; the job ids in order."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def one(item: tuple[str, Callable[[], bytes]]) -> str:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
            clients.append(local.client)
        name, make = item
        return submit(local.client, make(), name, params, fields)

    try:
        with ThreadPoolExecutor(UPLOADERS) as pool:
            return list(pool.map(one, documents))
    finally:
        for client in clients:
            client.close()


def finished_count(client: httpx.Client) -> tuple[int, int]:
    """Jobs finished in any way, and those of them that succeeded."""
    totals = client.get("/v1/queue/stats").json()["totals"]
    return sum(totals.get(state, 0) for state in FINISHED), int(totals.get("succeeded", 0))


def moment(text: str) -> float:
    """A timestamp of the API as Unix seconds."""
    return datetime.fromisoformat(text).timestamp()
