"""Reading and acting on jobs over real HTTP: lists, results, artifacts, cancel, retry, delete."""

from __future__ import annotations

import uuid

import httpx
import pytest

from docqueue.settings import Settings
from tests.api.conftest import assert_problem, make_pdf, process, stored_blobs, submit

pytestmark = pytest.mark.timeout(60)


def test_unknown_jobs_and_artifacts_are_404(client: httpx.Client) -> None:
    """Every path under an unknown job id, an unknown artifact, an unknown route."""
    missing = f"/v1/jobs/{uuid.uuid4()}"
    for response in (
        client.get(missing),
        client.get(f"{missing}/result"),
        client.get(f"{missing}/artifacts"),
        client.get(f"{missing}/artifacts/x.pdf"),
        client.get(f"{missing}/events"),
        client.post(f"{missing}/cancel"),
        client.post(f"{missing}/retry"),
        client.delete(missing),
        client.get("/v1/nothing-here"),
    ):
        assert_problem(response, 404, "not-found")
    job = submit(client).json()
    problem = assert_problem(client.get(f"{job['links']['artifacts']}/nope.txt"), 404, "not-found")
    assert "no artifact 'nope.txt'" in problem["detail"]
    assert_problem(client.get("/v1/jobs/not-a-uuid"), 422, "validation-error")


def test_result_of_an_unfinished_job_is_409(client: httpx.Client) -> None:
    """409 with the job's status until it has finished."""
    job = submit(client).json()
    problem = assert_problem(client.get(job["links"]["result"]), 409, "not-finished")
    assert problem["job_status"] == "queued"


def test_failed_job_result_carries_the_error_without_traceback(client: httpx.Client) -> None:
    """An input error fails at once; its result says why."""
    job = submit(client, params={"fail": "input"}).json()
    process(client)
    result = client.get(job["links"]["result"]).json()
    assert result["status"] == "failed" and result["result"] is None
    assert result["error"]["type"] == "InputError" and "traceback" not in result["error"]


def test_cursor_pagination_and_filters(client: httpx.Client) -> None:
    """Pages of 3, newest first, linked by next_cursor and the Link header; filters apply."""
    ids = [submit(client, params={"echo": n}).json()["id"] for n in range(7)]
    submit(client, queue="other")
    seen: list[str] = []
    url: str | None = "/v1/jobs?queue=default&limit=3"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = response.json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        if page["next_cursor"]:
            link = response.headers["link"]
            assert link.endswith('>; rel="next"') and f"cursor={page['next_cursor']}" in link
            url = link[1 : link.index(">")]
        else:
            assert "link" not in response.headers
            url = None
    assert pages == 3 and seen == list(reversed(ids))

    process(client, limit=2)
    succeeded = client.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]
    assert len(succeeded) == 2 and {j["status"] for j in succeeded} == {"succeeded"}
    assert client.get("/v1/jobs", params={"operation": "ingest"}).json()["items"] == []
    assert_problem(client.get("/v1/jobs", params={"status": "nope"}), 422, "validation-error")
    assert_problem(client.get("/v1/jobs", params={"cursor": "!!"}), 422, "invalid-input")


def test_cancel_retry_and_delete(client: httpx.Client) -> None:
    """Cancel a waiting job, retry it, run it; a finished job cannot be cancelled; delete it."""
    job = submit(client, delay=3600).json()
    assert job["status"] == "scheduled"
    cancelled = client.post(job["links"]["cancel"])
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_problem(client.post(job["links"]["cancel"]), 409, "conflict")

    retried = client.post(job["links"]["retry"])
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert_problem(client.post(job["links"]["retry"]), 409, "conflict")
    assert_problem(client.delete(job["links"]["self"]), 409, "conflict")

    process(client)
    assert client.get(job["links"]["self"]).json()["status"] == "succeeded"
    problem = assert_problem(client.post(job["links"]["cancel"]), 409, "conflict")
    assert "succeeded" in problem["detail"]

    deleted = client.delete(job["links"]["self"])
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(client.get(job["links"]["self"]), 404, "not-found")


def test_delete_removes_bytes_no_other_job_names(
    client: httpx.Client, api_settings: Settings
) -> None:
    """Two jobs on the same upload: deleting one keeps the shared input, the last removes it."""
    pdf = make_pdf()

    def upload() -> dict[str, str]:
        files = {"file": ("a.pdf", pdf, "application/pdf")}
        response = client.post("/v1/jobs", data={"operation": "ingest"}, files=files)
        assert response.status_code == 202, response.text
        return dict(response.json()["links"])

    first, second = upload(), upload()
    process(client)
    shared = len(stored_blobs(api_settings))
    assert shared == 3, "one input and two outputs, each stored once"
    assert client.delete(first["self"]).status_code == 204
    assert len(stored_blobs(api_settings)) == shared
    download = client.get(f"{second['artifacts']}/a.pdf")
    assert download.status_code == 200 and download.content == pdf
    assert client.delete(second["self"]).status_code == 204
    assert stored_blobs(api_settings) == []
