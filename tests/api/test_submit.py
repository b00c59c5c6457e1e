"""POST /v1/jobs over real HTTP: JSON and multipart, limits, validation, idempotency, load."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from docqueue.settings import Settings
from tests.api.conftest import (
    Serve,
    assert_problem,
    make_pdf,
    process,
    stored_blobs,
    submit,
)

pytestmark = pytest.mark.timeout(60)


def test_json_submit_poll_and_result(client: httpx.Client) -> None:
    """202 with Location and the job; once processed, the job and its result say succeeded."""
    response = submit(client, params={"echo": {"n": 1}}, priority="high")
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["operation"] == "noop"
    assert job["queue"] == "default" and job["priority"] == 8 and job["attempt"] == 0
    assert job["position"] == 0 and job["created_at"]
    assert job["links"]["self"] == response.headers["location"]
    assert job["links"]["events"].endswith("/events")

    assert process(client)["completed"] == 1
    done = client.get(job["links"]["self"]).json()
    assert done["status"] == "succeeded" and done["attempt"] == 1
    assert done["result"] == {"echo": {"n": 1}} and done["position"] is None
    result = client.get(job["links"]["result"])
    assert result.status_code == 200
    assert result.json()["status"] == "succeeded" and result.json()["result"] == {"echo": {"n": 1}}


def test_large_params_are_accepted_and_echoed_whole(client: httpx.Client) -> None:
    """Params past 64 KiB (checked and answered on a thread of the pool, not the event loop)
    come back whole, in the answer and in the result, as JSON and as a form field."""
    echo = [{"n": n, "text": "x" * 40} for n in range(4000)]
    response = submit(client, params={"echo": echo})
    assert response.status_code == 202, response.text
    assert response.json()["params"] == {"echo": echo} and response.json()["position"] == 0
    form = client.post(
        "/v1/jobs", data={"operation": "noop", "params": json.dumps({"echo": echo[:2000]})}
    )
    assert form.status_code == 202, form.text
    assert form.json()["params"] == {"echo": echo[:2000]} and form.json()["position"] == 1
    assert process(client)["completed"] == 2
    assert client.get(response.json()["links"]["result"]).json()["result"] == {"echo": echo}


def test_position_counts_jobs_ahead(client: httpx.Client) -> None:
    """A low job waits behind the normal ones submitted before and after it."""
    submit(client)
    low = submit(client, priority="low").json()
    submit(client, priority=5)
    assert client.get(low["links"]["self"]).json()["position"] == 2


@pytest.mark.usefixtures("worker")
def test_wait_answers_200_when_done_in_time_else_202(client: httpx.Client) -> None:
    """?wait= holds the answer until the job is finished (200, with its result) or time is up (202)."""
    quick = client.post("/v1/jobs", params={"wait": 20}, json={"operation": "noop"})
    assert quick.status_code == 200, quick.text
    assert quick.json()["status"] == "succeeded" and quick.json()["result"] == {}
    assert quick.headers["location"] == f"/v1/jobs/{quick.json()['id']}"

    slow = client.post(
        "/v1/jobs", params={"wait": 0.3}, json={"operation": "noop", "params": {"sleep_ms": 2000}}
    )
    assert slow.status_code == 202 and slow.json()["status"] in ("queued", "running")
    polled = client.get(slow.json()["links"]["self"], params={"wait": 20})
    assert polled.status_code == 200 and polled.json()["status"] == "succeeded"


def test_idempotency_key_gives_the_same_job(client: httpx.Client, api_settings: Settings) -> None:
    """The same key twice: the same job, nothing new stored, the replay marked; the same key
    with another request is refused, and its bytes are not kept."""
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json={"operation": "noop"}, headers=headers)
    again = client.post("/v1/jobs", json={"operation": "noop"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(client.get("/v1/jobs").json()["items"]) == 1

    pdf = make_pdf()
    upload_headers = {"Idempotency-Key": "upload-1"}
    one = _upload(client, pdf, headers=upload_headers)
    same = _upload(client, pdf, headers=upload_headers)
    assert one.status_code == 202 and same.json()["id"] == one.json()["id"]
    other_bytes = _upload(client, make_pdf(pages=2), headers=upload_headers)
    problem = assert_problem(other_bytes, 422, "idempotency-key-reused")
    assert "new key" in problem["detail"]
    assert len(stored_blobs(api_settings)) == 1, "the refused request's bytes were not kept"
    other_params = {"operation": "noop", "params": {"sleep_ms": 1}}
    assert_problem(
        client.post("/v1/jobs", json=other_params, headers=headers), 422, "idempotency-key-reused"
    )

    process(client)
    finished = client.post("/v1/jobs", json={"operation": "noop"}, headers=headers)
    assert finished.status_code == 200 and finished.json()["status"] == "succeeded"


def _upload(
    client: httpx.Client,
    content: bytes,
    *,
    name: str = "report.pdf",
    operation: str = "ingest",
    params: str = "{}",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A multipart submission with one file."""
    return client.post(
        "/v1/jobs",
        data={"operation": operation, "params": params, "priority": "normal"},
        files={"file": (name, content, "application/pdf")},
        headers=headers,
    )


def test_pdf_upload_is_ingested_and_its_artifacts_download(
    client: httpx.Client, api_settings: Settings
) -> None:
    """A real PDF through multipart, processed by ingest; inputs and outputs downloadable."""
    pdf = make_pdf(pages=2)
    response = _upload(client, pdf, name="../../etc/Quarterly report.pdf")
    assert response.status_code == 202, response.text
    job = response.json()
    assert process(client)["completed"] == 1
    result = client.get(job["links"]["result"]).json()
    assert result["status"] == "succeeded" and result["result"]["page_count"] == 2

    listed = client.get(job["links"]["artifacts"]).json()["items"]
    by_name = {a["name"]: a for a in listed}
    assert set(by_name) == {"Quarterly report.pdf", "document.json", "text.txt"}
    source = by_name["Quarterly report.pdf"]
    assert source["role"] == "input" and source["media_type"] == "application/pdf"
    assert source["size"] == len(pdf)

    download = client.get(source["url"])
    assert download.status_code == 200 and download.content == pdf
    assert download.headers["content-type"] == "application/pdf"
    assert 'filename="Quarterly report.pdf"' in download.headers["content-disposition"]
    document = client.get(by_name["document.json"]["url"])
    assert document.headers["content-type"].startswith("application/json")
    assert document.json()["source"]["sha256"] == source["sha256"]
    assert len(stored_blobs(api_settings)) == 3


def test_stored_input_is_reprocessed_without_upload(client: httpx.Client) -> None:
    """input_artifact names stored bytes; an unknown one is 404."""
    first = _upload(client, make_pdf()).json()
    process(client)
    sha = next(
        a["sha256"]
        for a in client.get(first["links"]["artifacts"]).json()["items"]
        if a["role"] == "input"
    )
    again = submit(client, "ingest", input_artifact=sha, input_name="again.pdf")
    assert again.status_code == 202, again.text
    assert process(client)["completed"] == 1
    names = {a["name"] for a in client.get(again.json()["links"]["artifacts"]).json()["items"]}
    assert "again.pdf" in names
    assert_problem(submit(client, "ingest", input_artifact="0" * 64), 404, "not-found")


def test_upload_past_the_limit_is_413_and_nothing_is_kept(
    serve: Serve, api_settings: Settings
) -> None:
    """A file bigger than max_upload_bytes: 413, no job, no stored bytes."""
    client = serve(max_upload_bytes=50_000)
    big = make_pdf() + b"%" + b"x" * 120_000
    assert_problem(_upload(client, big), 413, "payload-too-large")
    assert client.get("/v1/jobs").json()["items"] == []
    assert stored_blobs(api_settings) == []
    assert _upload(client, make_pdf()).status_code == 202


def test_declared_body_past_the_limit_is_refused_before_reading_it(serve: Serve) -> None:
    """Content-Length past the limit: 413 at once, without waiting for the body."""
    client = serve(max_upload_bytes=50_000)
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
            b"boundary=x\r\nContent-Length: 1000000000\r\n\r\n"
        )
        answer = conn.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "payload-too-large" in answer


def test_non_pdf_is_415_whatever_its_name(client: httpx.Client, api_settings: Settings) -> None:
    """A text file named .pdf and sent as application/pdf is judged by its bytes."""
    response = _upload(client, b"just some text, not a PDF\n" * 10, name="fake.pdf")
    body = assert_problem(response, 415, "unsupported-media-type")
    assert "ingest" in body["detail"] and "application/pdf" in body["detail"]
    assert stored_blobs(api_settings) == []
    assert client.get("/v1/jobs").json()["items"] == []


def test_unknown_content_type_is_415(client: httpx.Client) -> None:
    """Only JSON and forms are read."""
    response = client.post(
        "/v1/jobs", content=b"operation=noop", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("body", "slug", "words"),
    [
        ({"operation": "nope"}, "invalid-job", "unknown operation 'nope'"),
        ({"operation": "noop", "params": {"sleep_ms": -1}}, "invalid-job", "sleep_ms"),
        ({"operation": "noop", "params": {"bogus": 1}}, "invalid-job", "bogus"),
        ({"operation": "noop", "priority": "urgent"}, "validation-error", "priority"),
        ({"operation": "noop", "priority": 12}, "validation-error", "out of range"),
        (
            {"operation": "noop", "delay": 5, "run_at": "2030-01-01T00:00:00Z"},
            "validation-error",
            "not both",
        ),
        ({"operation": "noop", "colour": "red"}, "validation-error", "colour"),
        ({"operation": "noop", "priority": True}, "validation-error", "priority"),
        ({"operation": "noop", "delay": 1e12}, "validation-error", "delay"),
        (
            {"operation": "noop", "run_at": "2030-01-01T00:00:00"},
            "validation-error",
            "timezone",
        ),
        ({"params": {}}, "validation-error", "operation"),
        ({"operation": "ingest"}, "invalid-job", "needs an input file"),
    ],
)
def test_invalid_json_submissions_are_422(
    client: httpx.Client, body: dict[str, object], slug: str, words: str
) -> None:
    """Each kind of bad submission names what is wrong."""
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, slug)
    assert words in problem["detail"]


def test_malformed_bodies_are_422(client: httpx.Client) -> None:
    """Broken JSON, params that are not JSON, a bad priority in a form: 422 naming the field."""
    broken = client.post(
        "/v1/jobs", content=b'{"operation": ', headers={"content-type": "application/json"}
    )
    assert assert_problem(broken, 422, "validation-error")["errors"][0]["type"] == "json_invalid"
    not_object = client.post("/v1/jobs", json=["noop"])
    assert_problem(not_object, 422, "validation-error")
    bad_params = _upload(client, make_pdf(), params="{not json")
    problem = assert_problem(bad_params, 422, "validation-error")
    assert problem["errors"][0]["loc"] == ["body", "params"]
    bad_priority = client.post("/v1/jobs", data={"operation": "noop", "priority": "soon"})
    assert assert_problem(bad_priority, 422, "validation-error")["errors"][0]["loc"] == [
        "body",
        "priority",
    ]
    file_for_noop = _upload(client, make_pdf(), operation="noop")
    assert "takes no input file" in assert_problem(file_for_noop, 422, "invalid-job")["detail"]


def test_hostile_bodies_are_422_and_the_server_goes_on(client: httpx.Client) -> None:
    """JSON nested past what a parser reads or params past 64 levels, an infinite delay, a
    run_at at the end of the calendar, a field sent twice, a form field of 2 MiB, two files, an
    empty Idempotency-Key: each a 413 or 422 that says what to fix, and the next submission is
    accepted."""
    deep = b'{"operation": "noop", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    problem = assert_problem(
        client.post("/v1/jobs", content=deep, headers={"content-type": "application/json"}),
        422,
        "validation-error",
    )
    assert "nested too deeply" in problem["detail"]
    deep_params = client.post(
        "/v1/jobs", data={"operation": "noop", "params": "[" * 100_000 + "]" * 100_000}
    )
    assert assert_problem(deep_params, 422, "validation-error")["errors"][0]["loc"] == [
        "body",
        "params",
    ]
    endless = client.post("/v1/jobs", data={"operation": "noop", "delay": "inf"})
    assert assert_problem(endless, 422, "validation-error")["errors"][0]["loc"] == [
        "body",
        "delay",
    ]
    twice = client.post(
        "/v1/jobs",
        content=b"operation=noop&operation=ingest",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "given twice" in assert_problem(twice, 422, "validation-error")["detail"]
    far = client.post("/v1/jobs", json={"operation": "noop", "run_at": "9999-12-31T23:00:00-05:00"})
    assert "ten years" in assert_problem(far, 422, "invalid-job")["detail"]
    nested: object = "deep"
    for _ in range(300):
        nested = [nested]
    too_deep = client.post("/v1/jobs", json={"operation": "noop", "params": {"echo": nested}})
    assert "nested more than 64 levels" in assert_problem(too_deep, 422, "invalid-job")["detail"]
    big_field = client.post("/v1/jobs", data={"operation": "noop", "params": "x" * (2 << 20)})
    assert (
        "send larger params as a JSON body"
        in assert_problem(big_field, 413, "payload-too-large")["detail"]
    )
    pdf = make_pdf()
    two_files = client.post(
        "/v1/jobs",
        data={"operation": "ingest"},
        files=[("file", ("a.pdf", pdf, "application/pdf")), ("file", ("b.pdf", pdf, "x/y"))],
    )
    assert "send one file" in assert_problem(two_files, 422, "validation-error")["detail"]
    unkeyed = client.post("/v1/jobs", json={"operation": "noop"}, headers={"Idempotency-Key": ""})
    assert_problem(unkeyed, 422, "validation-error")
    assert client.post("/v1/jobs", json={"operation": "noop"}).status_code == 202


def test_full_queue_is_429_with_retry_after(serve: Serve) -> None:
    """Past max_queued waiting jobs a queue refuses more, saying when to come back."""
    client = serve(max_queued=2)
    assert submit(client).status_code == 202
    assert submit(client).status_code == 202
    refused = submit(client)
    assert_problem(refused, 429, "queue-full")
    assert int(refused.headers["retry-after"]) > 0
    assert submit(client, queue="other").status_code == 202


def test_hundred_concurrent_submissions_are_all_accepted(client: httpx.Client) -> None:
    """100 clients at once: 100 jobs, each accepted once."""

    def one(n: int) -> httpx.Response:
        return submit(client, params={"echo": n})

    with ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(one, range(100)))
    assert [r.status_code for r in responses] == [202] * 100
    assert len({r.json()["id"] for r in responses}) == 100
    stats = client.get("/v1/queue/stats").json()
    assert stats["totals"]["queued"] == 100
