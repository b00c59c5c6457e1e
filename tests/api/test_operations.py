"""Health, readiness, metrics, the cron trigger, workers, stats, logs and the OpenAPI document."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import SecretStr

from tests.api.conftest import SECRET, Serve, assert_problem, process, submit
from tests.e2e.workers import wait_for

pytestmark = pytest.mark.timeout(60)


def test_healthz(client: httpx.Client) -> None:
    """The process answers."""
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_readyz_names_the_failing_check_until_a_worker_is_heard(
    client: httpx.Client, request: pytest.FixtureRequest
) -> None:
    """503 naming `workers` without one; 200 once a real worker has registered."""
    problem = assert_problem(client.get("/readyz"), 503, "not-ready")
    assert problem["checks"]["store"] == "ok" and problem["checks"]["storage"] == "ok"
    assert "no worker heard from" in problem["checks"]["workers"]
    request.getfixturevalue("worker")
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "checks": {"store": "ok", "storage": "ok", "workers": "ok"},
    }
    workers = client.get("/v1/workers").json()["items"]
    assert len(workers) == 1 and workers[0]["alive"] and workers[0]["concurrency"] == 2


def test_readyz_without_the_worker_check(serve: Serve) -> None:
    """ready_worker_seconds = 0 is for installations that only use the cron trigger."""
    assert serve(ready_worker_seconds=0.0).get("/readyz").status_code == 200


def test_metrics_count_requests_by_route_and_jobs_by_operation(client: httpx.Client) -> None:
    """Route templates, not raw paths, label the request metrics; queue depth is read live."""
    job = submit(client).json()
    client.get(job["links"]["self"])
    submit(client, "record", params={"path": "/dev/null"})
    text = client.get("/metrics").text
    assert 'docqueue_jobs_submitted_total{operation="noop"} 1.0' in text
    assert 'docqueue_jobs_submitted_total{operation="record"} 1.0' in text
    assert (
        'docqueue_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0'
        in text
    )
    assert (
        'docqueue_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 2.0' in text
    )
    assert 'docqueue_jobs{queue="default",state="queued"} 2.0' in text
    assert "docqueue_oldest_queued_job_age_seconds" in text


def test_two_apps_in_one_process_keep_their_own_metrics(serve: Serve) -> None:
    """Each app has its own registry: no clash, no shared counts."""
    first, second = serve(), serve()
    submit(first)
    assert 'docqueue_jobs_submitted_total{operation="noop"} 1.0' in first.get("/metrics").text
    assert 'operation="noop"' not in second.get("/metrics").text


def test_process_trigger_needs_the_secret(serve: Serve) -> None:
    """403 without a secret configured, without the header, with a wrong one; runs with it."""
    off = serve(process_secret=None)
    submit(off)
    problem = assert_problem(off.post("/v1/queue/process"), 403, "forbidden")
    assert "DOCQUEUE_PROCESS_SECRET" in problem["detail"]

    on = serve(process_secret=SecretStr(SECRET))
    assert_problem(on.post("/v1/queue/process"), 403, "forbidden")
    wrong = on.post("/v1/queue/process", headers={"X-Docqueue-Secret": "guess"})
    assert_problem(wrong, 403, "forbidden")
    submit(on, params={"fail": "input"})
    assert process(on) == {"processed": 2, "completed": 1, "failed": 1}
    assert process(on) == {"processed": 0, "completed": 0, "failed": 0}


def test_queue_stats(client: httpx.Client) -> None:
    """Counts per state overall and per queue, oldest waiting age, recent throughput."""
    submit(client)
    submit(client, queue="bulk")
    submit(client)
    process(client, limit=1)
    stats = client.get("/v1/queue/stats").json()
    assert stats["totals"]["queued"] == 2 and stats["totals"]["succeeded"] == 1
    assert stats["queues"]["bulk"] == {"queued": 1}
    assert stats["oldest_queued_age_seconds"] >= 0 and stats["finished_last_minute"] == 1


def test_requests_are_logged_with_their_job_id(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request has a line; those about a job carry its id."""
    with caplog.at_level(logging.INFO, logger="docqueue.api"):
        job = submit(client).json()
        client.get(job["links"]["self"])
        client.get("/healthz")
        # The line is written once the answer is sent, so it may trail the client a little.
        wait_for(lambda: "GET /healthz" in caplog.text, 5, "the request log line")
    lines = [r for r in caplog.records if r.name == "docqueue.api"]
    tagged = [r.getMessage() for r in lines if getattr(r, "job_id", None) == job["id"]]
    assert any(
        m.startswith("POST /v1/jobs -> 202") and m.endswith(": accepted noop job in queue default")
        for m in tagged
    )
    assert any(m.startswith(f"GET /v1/jobs/{job['id']} -> 200") for m in tagged)
    assert any(r.getMessage().startswith("GET /healthz -> 200") for r in lines)


def test_openapi_document(client: httpx.Client) -> None:
    """The API describes itself, including both bodies a submission may have."""
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "/v1/jobs/{job_id}/events" in document["paths"]
