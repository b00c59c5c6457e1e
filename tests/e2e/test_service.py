"""`docqueue serve` as a user runs it: real HTTP, real worker processes, real kills, real PDFs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from docqueue.models import JobState
from docqueue.settings import Settings
from docqueue.store import JobStore
from tests.e2e.server import Service, alive, service_env, wait_finished
from tests.e2e.workers import lines, wait_for
from tests.pdfs import build_pdf, encrypt_pdf

StartService = Callable[..., Service]
#: The line sentence-transformers itself logs (at INFO) each time it loads a model.
MODEL_LOAD = "Loading SentenceTransformer model from"


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start `docqueue serve` on a home of its own; every service is killed at the end."""
    services: list[Service] = []

    def start(*args: str, home: str = "home", **env: str) -> Service:
        service = Service(tmp_path / home, *args, **env).start()
        services.append(service)
        return service

    yield start
    for service in services:
        service.kill()


def text_pdf(label: str, pages: int = 1) -> bytes:
    """A real PDF with several lines of text on each page, different for each label and page."""
    return build_pdf(
        [
            [
                f"{label}: page {number}",
                f"Part {number} of {label} opens with a plain sentence about nothing much.",
                f"It goes on for {number * 17} words on the subject of {label} and queues.",
                "The quick brown fox jumps over the lazy dog, again and again.",
                f"A closing line for part {number}, so that the page has a body to keep.",
            ]
            for number in range(1, pages + 1)
        ],
        info={"Title": label},
    )


def upload(
    client: httpx.Client,
    data: bytes,
    params: dict[str, Any] | None = None,
    name: str = "doc.pdf",
    content_type: str = "application/pdf",
) -> httpx.Response:
    """POST a file to `ingest` as a multipart form."""
    return client.post(
        "/v1/jobs",
        data={"operation": "ingest", "params": json.dumps(params or {})},
        files={"file": (name, data, content_type)},
    )


def accepted(response: httpx.Response) -> str:
    """The id of a job the API accepted (202)."""
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def finished_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The job once it is finished, long-polling the API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


def timeline(client: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The (type, data) of every event of a finished job, read from its server-sent events."""
    response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200, response.text
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])["data"]))
    return events


def problem(response: httpx.Response, status: int, slug: str) -> str:
    """The detail of a problem answer of the given status and kind."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"https://docqueue.dev/problems/{slug}", body
    detail: str = body["detail"]
    return detail


# -- 1. restart durability -----------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_the_whole_service_loses_nothing(
    start_service: StartService, tmp_path: Path
) -> None:
    """SIGKILL of serve, worker and children mid-run: after a restart all 200 jobs succeed once.

    What is guaranteed, and asserted: every accepted job survives and ends `succeeded` with one
    `succeeded` event; the work itself runs at least once and, with one crash, at most twice;
    a job recorded as succeeded before the crash is never run again; and the attempt that won
    is the last one that ran.
    """
    done = tmp_path / "done.log"
    service = start_service("--concurrency", "2")
    with service.client() as client:
        params = {"path": str(done), "sleep": 0.1}
        ids = [
            accepted(client.post("/v1/jobs", json={"operation": "record", "params": params}))
            for _ in range(200)
        ]
        wait_finished(client, 40, 60)
    service.kill()

    # The store at the moment of the crash: the source of truth, read straight from the file.
    store = JobStore.from_settings(Settings(home=service.home))
    at_kill = {job_id: store.get(UUID(job_id)) for job_id in ids}
    store.engine.dispose()
    succeeded_at_kill = {i for i, job in at_kill.items() if job.status == JobState.SUCCEEDED}
    running_at_kill = {i for i, job in at_kill.items() if job.status == JobState.RUNNING}
    assert 0 < len(succeeded_at_kill) < 200, "the kill came while work was still going on"
    before = lines(done)
    assert len({f[0] for f in before}) == len(before), "no job ran twice before the crash"
    assert succeeded_at_kill <= {f[0] for f in before}

    service.start()
    with service.client() as client:
        wait_finished(client, 200, 90)
        jobs = {i: client.get(f"/v1/jobs/{i}").json() for i in ids}
        assert {job["status"] for job in jobs.values()} == {"succeeded"}
        listed = client.get("/v1/jobs", params={"limit": 500}).json()["items"]
        assert sorted(job["id"] for job in listed) == sorted(ids)
        events = {i: timeline(client, i) for i in ids}

    for job_id in ids:
        kinds = [kind for kind, _ in events[job_id]]
        assert kinds.count("succeeded") == 1, (job_id, kinds)
        assert kinds[-1] == "succeeded"
    after = lines(done)[len(before) :]
    assert len({f[0] for f in after}) == len(after), "no job ran twice after the restart"
    assert not succeeded_at_kill & {f[0] for f in after}, "a finished job ran again"
    runs = Counter(f[0] for f in before + after)
    assert set(runs) == set(ids) and set(runs.values()) <= {1, 2}
    attempts = Counter((f[0], f[1]) for f in before + after)
    assert set(attempts.values()) == {1}, "each attempt ran at most once"
    last_run = {f[0]: int(f[1]) for f in before + after}
    for job_id, job in jobs.items():
        assert job["attempt"] == last_run[job_id], "the winning attempt is the last that ran"
    for job_id in running_at_kill:
        assert jobs[job_id]["attempt"] > at_kill[job_id].attempt
        assert any(
            data.get("error", {}).get("type") == "LeaseExpired" for _, data in events[job_id]
        ), "a job running at the crash was taken back when its lease ran out"


def test_kill_9_during_uploads_keeps_every_accepted_job(start_service: StartService) -> None:
    """SIGKILL while clients upload: every upload that got 202 is there after a restart, file and
    all, and succeeds; uploads cut off by the kill got no answer, so they promised nothing."""
    service = start_service("--concurrency", "2")
    pdfs = [text_pdf(f"upload {n}", pages=2) for n in range(400)]
    answered: list[str] = []
    cut_off: list[int] = []

    def send(client: httpx.Client, n: int) -> None:
        try:
            answered.append(accepted(upload(client, pdfs[n])))
        except httpx.TransportError:
            cut_off.append(n)

    limits = httpx.Limits(max_connections=8)
    with service.client(timeout=10, limits=limits) as client, ThreadPoolExecutor(8) as pool:
        sent = [pool.submit(send, client, n) for n in range(len(pdfs))]
        wait_for(lambda: len(answered) >= 60, 60, "60 uploads to be accepted")
        service.kill()
        for future in sent:
            future.result()
    assert answered and cut_off, "the kill came in the middle of the uploads"

    service.start()
    with service.client() as client:
        jobs = [finished_job(client, job_id) for job_id in answered]
    assert {job["status"] for job in jobs} == {"succeeded"}, [job["error"] for job in jobs]
    assert {job["result"]["page_count"] for job in jobs} == {2}


def test_serve_replaces_a_killed_worker(start_service: StartService, tmp_path: Path) -> None:
    """kill -9 of the worker alone: serve starts a new one, which finishes the jobs it held."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    service = start_service("--concurrency", "2")
    wait_for(lambda: len(service.job_processes()) == 2, 30, "the worker's two children")
    old_children = set(service.job_processes())
    with service.client() as client:
        params = {"path": str(done), "started": str(started), "sleep": 1}
        ids = [
            accepted(client.post("/v1/jobs", json={"operation": "record", "params": params}))
            for _ in range(4)
        ]
        wait_for(lambda: len(lines(started)) == 2, 30, "two jobs to start")
        held = {f[0] for f in lines(started)}
        [worker] = client.get("/v1/workers").json()["items"]
        os.kill(worker["pid"], signal.SIGKILL)

        def replaced() -> bool:
            workers = client.get("/v1/workers").json()["items"]
            return any(w["alive"] and w["pid"] != worker["pid"] for w in workers)

        wait_for(replaced, 30, "serve to start a new worker")
        jobs = {job_id: finished_job(client, job_id) for job_id in ids}
        events = {job_id: timeline(client, job_id) for job_id in held}
    assert {job["status"] for job in jobs.values()} == {"succeeded"}
    wait_for(lambda: not alive(old_children), 10, "the dead worker's children to exit")
    for job_id in held:
        assert jobs[job_id]["attempt"] == 2, "a job the dead worker held ran again"
        assert any(
            data.get("error", {}).get("type") == "LeaseExpired" for _, data in events[job_id]
        )
    assert {job["attempt"] for i, job in jobs.items() if i not in held} == {1}


# -- 2. bad inputs through the running pool ------------------------------------------------------


def test_bad_inputs_fail_alone_and_the_pool_keeps_serving(start_service: StartService) -> None:
    """Every kind of bad input gets its own error, at once, and good jobs all around succeed."""
    service = start_service(
        "--concurrency", "2", DOCQUEUE_MAX_PAGES="4", DOCQUEUE_MAX_UPLOAD_BYTES="200000"
    )
    good = text_pdf("good document", pages=2)
    whole = text_pdf("truncated document", pages=6)
    locked = encrypt_pdf(text_pdf("locked document"), "open sesame")
    wait_for(lambda: len(service.job_processes()) == 2, 30, "the worker's two children")
    children = service.job_processes()
    with service.client() as client:
        goods = [accepted(upload(client, text_pdf(f"before {n}"))) for n in range(3)]
        failing = {
            "corrupt": accepted(upload(client, b"%PDF-1.7\n" + os.urandom(4000))),
            "truncated": accepted(upload(client, whole[: len(whole) // 2])),
            "no password": accepted(upload(client, locked)),
            "wrong password": accepted(upload(client, locked, {"password": "open says me"})),
        }
        goods += [accepted(upload(client, text_pdf(f"between {n}"))) for n in range(3)]
        failing["past the server's limit"] = accepted(upload(client, text_pdf("long", pages=5)))
        failing["past the client's limit"] = accepted(upload(client, good, {"max_pages": 1}))
        unlocked = accepted(upload(client, locked, {"password": "open sesame"}))
        selected = accepted(upload(client, text_pdf("long", pages=5), {"pages": "2-3"}))

        refused = {
            "empty": upload(client, b""),
            "png": upload(client, b"\x89PNG\r\n\x1a\n" + os.urandom(200), name="scan.pdf"),
            "text": upload(client, b"Dear reader,\nthis is not a PDF.\n", name="letter.pdf"),
            "big": upload(client, b"%PDF-1.7\n" + b"0" * 300_000),
            "bad params": upload(client, good, {"chunk_size": 5}),
        }
        goods += [accepted(upload(client, text_pdf(f"after {n}"))) for n in range(3)]

        for kind in ("empty", "png", "text"):
            assert "reads application/pdf" in problem(refused[kind], 415, "unsupported-media-type")
        assert "is empty (0 bytes)" in refused["empty"].json()["detail"]
        assert "200,000" in problem(refused["big"], 413, "payload-too-large")
        assert "chunk_size" in problem(refused["bad params"], 422, "invalid-job")

        expected = {
            "corrupt": "the PDF is corrupt or truncated and cannot be read",
            "truncated": "the PDF is corrupt or truncated and cannot be read",
            "no password": "the PDF is encrypted; pass its password as params.password",
            "wrong password": "the password given in params.password does not open this PDF",
            "past the server's limit": "the PDF has 5 pages, more than the limit of 4",
            "past the client's limit": "the PDF has 2 pages, more than the limit of 1",
        }
        for kind, job_id in failing.items():
            job = finished_job(client, job_id)
            assert job["status"] == "failed", (kind, job)
            assert job["attempt"] == 1, (kind, job)
            assert job["error"]["type"] == "InputError", (kind, job["error"])
            assert expected[kind] in job["error"]["message"], (kind, job["error"])
            kinds = [kind for kind, _ in timeline(client, job_id)]
            assert "retry_scheduled" not in kinds and kinds.count("failed") == 1, kinds

        for job_id in goods:
            job = finished_job(client, job_id)
            assert job["status"] == "succeeded", job
            assert job["result"]["chunk_count"] >= 1
        opened = finished_job(client, unlocked)
        assert opened["status"] == "succeeded", opened
        assert opened["result"]["metadata"]["encrypted"] is True
        assert opened["params"]["password"] == "***"
        text = client.get(f"/v1/jobs/{unlocked}/artifacts/text.txt")
        assert text.status_code == 200 and "locked document: page 1" in text.text
        chosen = finished_job(client, selected)
        assert chosen["status"] == "succeeded", chosen
        assert chosen["result"]["pages_read"] == 2

        stats = client.get("/v1/queue/stats").json()["totals"]
        assert stats["succeeded"] == len(goods) + 2 and stats["failed"] == len(failing)
        assert stats["queued"] == stats["running"] == stats["scheduled"] == 0
    assert service.job_processes() == children, "no worker child died on a bad input"
    assert "open sesame" not in service.log(), "the password never reaches the logs"
    leftovers = service.home / "files" / "tmp"
    assert not leftovers.exists() or not any(leftovers.iterdir()), "refusals keep no bytes"


# -- 3. embeddings: one model load per worker process --------------------------------------------


@pytest.mark.slow
def test_embedding_model_loads_once_per_worker_process(start_service: StartService) -> None:
    """20 ingest jobs with embed on 2 children: the model is loaded in each child once, not per job.

    Two independent signals, neither from docqueue's own code: the line sentence-transformers
    logs at every load (children log to the service's stderr), and which processes of the
    service have torch's library mapped (/proc/PID/maps; torch is imported only to load it).
    """
    service = start_service("--concurrency", "2")
    wait_for(lambda: len(service.job_processes()) == 2, 30, "the worker's two children")
    children = service.job_processes()
    with service.client() as client:
        ids = [
            accepted(upload(client, text_pdf(f"embedded {n}", pages=3), {"embed": True}))
            for n in range(20)
        ]
        jobs = [finished_job(client, job_id, timeout=120) for job_id in ids]
    assert {job["status"] for job in jobs} == {"succeeded"}, [job["error"] for job in jobs]
    for job in jobs:
        assert job["result"]["chunk_count"] >= 1
        assert job["result"]["embedding"] == {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dimension": 384,
            "precision": "float32",
        }
    assert service.job_processes() == children, "the same two children ran every job"
    with_torch = [pid for pid in service.pids() if _maps_torch(pid)]
    assert with_torch == children, "the model is in both children, and only there"
    loads = service.log().count(MODEL_LOAD)
    assert loads == len(children), f"{loads} model loads for 20 jobs in {len(children)} processes"


def _maps_torch(pid: int) -> bool:
    """True when the process has torch's C++ library loaded."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# -- 4. `docqueue submit` ------------------------------------------------------------------------


def docqueue_submit(service: Service, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `docqueue submit ARGS --server URL` as a real process in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "docqueue", "submit", *args, "--server", service.url],
        cwd=cwd,
        env=service_env(service.home, COLUMNS="250"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by file: [job, status, detail]."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("\u2502")[1:-1]]
        if len(cells) == 4 and cells[0] != "file":
            rows[cells[0]] = cells[1:]
    return rows


def printed_json(stdout: str) -> dict[str, Any]:
    """The JSON object printed at the end of the output (after any progress lines)."""
    start = stdout.index("{")
    value: dict[str, Any] = json.loads(stdout[start:])
    return value


def summary_caption(stdout: str) -> str:
    """The counts under the summary table, e.g. `1 failed, 19 succeeded`."""
    match = re.search(r"^\s*(\d+ \w+(?:, \d+ \w+)*)\s*$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


def test_submit_one_file_waits_and_prints_the_result(
    start_service: StartService, tmp_path: Path
) -> None:
    """`docqueue submit FILE --op ingest --wait` exits 0 and prints the result JSON."""
    service = start_service("--concurrency", "1")
    (tmp_path / "report.pdf").write_bytes(text_pdf("quarterly report", pages=2))
    done = docqueue_submit(service, tmp_path, "report.pdf", "--op", "ingest", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    result = printed_json(done.stdout)
    assert result["page_count"] == 2 and result["metadata"]["title"] == "quarterly report"
    assert result["outputs"] == ["document.json", "text.txt"]


def test_submit_a_folder_prints_a_summary(start_service: StartService, tmp_path: Path) -> None:
    """A folder of 20 PDFs: a summary table of every file that says 20 succeeded."""
    service = start_service("--concurrency", "2")
    folder = tmp_path / "scans"
    folder.mkdir()
    for n in range(20):
        (folder / f"scan-{n:02}.pdf").write_bytes(text_pdf(f"scan {n}"))
    (folder / "notes.txt").write_text("not a PDF, and not picked up")
    done = docqueue_submit(service, tmp_path, "scans")
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary_caption(done.stdout) == "20 succeeded"
    rows = table_rows(done.stdout)
    assert sorted(rows) == [f"scans/scan-{n:02}.pdf" for n in range(20)]
    assert {status for _, status, _ in rows.values()} == {"succeeded"}
    with service.client() as client:
        for job_id, _, _ in rows.values():
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_submit_a_folder_with_bad_files_lists_them(
    start_service: StartService, tmp_path: Path
) -> None:
    """A corrupt PDF fails and a PDF-named text file is refused; both are listed with why.

    The exit status is 1 whenever a file failed or was refused, so scripts can tell.
    """
    service = start_service("--concurrency", "2")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for n in range(4):
        (folder / f"good-{n}.pdf").write_bytes(text_pdf(f"good {n}"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(3000))
    (folder / "renamed.pdf").write_text("a text file with a .pdf name")
    done = docqueue_submit(service, tmp_path, "mixed")
    assert summary_caption(done.stdout) == "1 failed, 1 refused, 4 succeeded", done.stdout
    rows = table_rows(done.stdout)
    assert len(rows) == 6
    _, status, detail = rows["mixed/broken.pdf"]
    assert status == "failed" and detail.startswith("the PDF is corrupt or truncated")
    job_id, status, detail = rows["mixed/renamed.pdf"]
    assert job_id == "-" and status == "refused" and "reads application/pdf" in detail
    assert done.returncode == 1, "a folder with failed files exits 1"

    one = docqueue_submit(service, tmp_path, "mixed/broken.pdf", "--wait")
    assert table_rows(one.stdout)["mixed/broken.pdf"][1] == "failed"
    assert one.returncode == 1, "--wait on a failed job exits 1"


# -- 5. stopping the service --------------------------------------------------------------------


def stop_with_a_job_running(
    start_service: StartService, tmp_path: Path, stop: Callable[[int], None]
) -> tuple[str, list[list[str]], list[int]]:
    """Start a 1 s job, `stop(serve pid)` while it runs; its id, its runs, processes left."""
    started, done = tmp_path / "started.log", tmp_path / "done.log"
    service = start_service("--concurrency", "1", DOCQUEUE_SHUTDOWN_GRACE="3")
    with service.client() as client:
        params = {"path": str(done), "started": str(started), "sleep": 1}
        job_id = accepted(client.post("/v1/jobs", json={"operation": "record", "params": params}))
    wait_for(lambda: len(lines(started)) == 1, 30, "the job to start")
    assert service.process is not None
    tree = set(service.pids())
    stop(service.process.pid)
    service.process.wait(timeout=20)
    deadline = time.monotonic() + 6  # the 3 s grace, and some
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in tree if alive({pid})]
    for pid in left:  # the fixture cannot find orphans outside the service's process group
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return job_id, lines(done), left


def test_sigterm_stops_the_whole_service_gracefully(
    start_service: StartService, tmp_path: Path
) -> None:
    """`kill PID` (systemd, docker stop): the worker stops too, after its running job finished."""
    job_id, runs, left = stop_with_a_job_running(
        start_service, tmp_path, lambda pid: os.kill(pid, signal.SIGTERM)
    )
    assert left == [], "no process of the service is left running"
    assert [run[0] for run in runs] == [job_id], "the running job finished within the grace"


def test_ctrl_c_lets_the_running_job_finish(start_service: StartService, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group): running jobs get the shutdown grace."""
    job_id, runs, left = stop_with_a_job_running(
        start_service, tmp_path, lambda pgid: os.killpg(pgid, signal.SIGINT)
    )
    assert left == [], "no process of the service is left running"
    assert [run[0] for run in runs] == [job_id], "the running job finished within the grace"
