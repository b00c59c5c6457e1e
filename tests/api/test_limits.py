"""Server-side limits a client cannot lift, and secrets a job never shows back."""

from __future__ import annotations

import json

import httpx

from docqueue.settings import Settings
from tests.api.conftest import make_pdf, process
from tests.pdfs import build_pdf, encrypt_pdf


def upload(client: httpx.Client, pdf: bytes, params: dict[str, object]) -> httpx.Response:
    """POST a PDF to ingest with params."""
    return client.post(
        "/v1/jobs",
        data={"operation": "ingest", "params": json.dumps(params)},
        files={"file": ("doc.pdf", pdf, "application/pdf")},
    )


def test_password_is_never_shown_back(client: httpx.Client) -> None:
    """The password opens the PDF, yet the job's params only show it masked."""
    response = upload(
        client, encrypt_pdf(build_pdf([["secret page"]]), "s3cret"), {"password": "s3cret"}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["password"] == "***"
    assert process(client)["completed"] == 1
    shown = client.get(job["links"]["self"]).json()
    assert shown["status"] == "succeeded" and shown["params"]["password"] == "***"
    listed = client.get("/v1/jobs").json()["items"]
    assert all(item["params"].get("password") in (None, "***") for item in listed)


def test_server_page_limit_caps_what_a_client_asks(
    client: httpx.Client, api_settings: Settings
) -> None:
    """A client may lower the page limit, never raise it past the server's."""
    limit = api_settings.max_pages
    asked_more = upload(client, make_pdf(), {"max_pages": limit + 100}).json()
    asked_less = upload(client, make_pdf(), {"max_pages": 3}).json()
    asked_none = upload(client, make_pdf(), {}).json()
    assert asked_more["params"]["max_pages"] == limit
    assert asked_less["params"]["max_pages"] == 3
    assert asked_none["params"]["max_pages"] == limit
    too_long = upload(client, build_pdf([[f"page {i}"] for i in range(5)]), {"max_pages": 3}).json()
    process(client)
    failed = client.get(too_long["links"]["self"]).json()
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert "more than the limit of 3" in failed["error"]["message"]
