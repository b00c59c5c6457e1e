"""The `ingest` processor on real PDFs, through a real context, storage and resources."""

from __future__ import annotations

import itertools
import json
import math
import platform
import re
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from docqueue.errors import InputError, InvalidJob
from docqueue.models import JSON, Artifact, InputFile
from docqueue.processors import Context, Registry, Resource, Resources, builtin_registry
from docqueue.processors.embedding import (
    BATCH_SIZE,
    EMBEDDING_MODEL,
    embed_texts,
    load_embedding_model,
    usable_precision,
)
from docqueue.processors.ingest import register
from docqueue.storage import Storage, StorageOutputWriter
from tests.pdfs import Page, build_pdf, encrypt_pdf

SENTENCE = (
    "Queues hold work until a worker is free to take it and every state change is written "
    "down so that nothing a client was told is lost when a machine stops without warning"
)
LOREM = SENTENCE.split()


@dataclass
class Run:
    """What one ingest run returned, wrote and reported."""

    result: JSON
    artifacts: list[Artifact]
    progress: list[tuple[float, str | None]]
    storage: Storage

    def output(self, name: str) -> bytes:
        """The bytes of the output artifact `name`."""
        artifact = next(a for a in self.artifacts if a.name == name)
        with self.storage.open(artifact.sha256) as stream:
            return stream.read()

    @property
    def document(self) -> Any:
        """document.json, parsed."""
        return json.loads(self.output("document.json"))

    @property
    def text(self) -> str:
        """text.txt."""
        return self.output("text.txt").decode("utf-8")


@dataclass
class Ingest:
    """Runs `ingest` the way a worker does: input from storage, outputs to storage."""

    tmp_path: Path
    registry: Registry = field(default_factory=Registry)
    cancelled: Callable[[], bool] = lambda: False
    cpu_threads: Callable[[], int | None] = lambda: None

    def __post_init__(self) -> None:
        register(self.registry)
        self.storage = Storage((self.tmp_path / "files").as_uri())
        self.resources = Resources(self.registry)

    def __call__(self, data: bytes, **params: Any) -> Run:
        blob = self.storage.put_bytes(data)
        job_id = uuid.uuid4()
        progress: list[tuple[float, str | None]] = []
        workdir = self.tmp_path / f"work-{job_id.hex}"
        workdir.mkdir()
        with ExitStack() as stack:
            path = stack.enter_context(self.storage.local_path(blob.sha256))
            ctx = Context(
                job_id=job_id,
                attempt=1,
                operation="ingest",
                params=params,
                resources=self.resources,
                scratch=workdir,
                inputs=[InputFile(str(path), "report.pdf", "application/pdf", blob.sha256)],
                outputs=StorageOutputWriter(self.storage, job_id),
                report_progress=lambda fraction, message: progress.append((fraction, message)),
                is_cancelled=self.cancelled,
                cpu_threads=self.cpu_threads,
            )
            result = self.registry.get("ingest").func(ctx) or {}
        json.dumps(result, allow_nan=False)  # the runner stores it as JSON
        return Run(result, ctx.written, progress, self.storage)


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    """A fresh ingest runner with its own storage and resources."""
    return Ingest(tmp_path)


def words(count: int, offset: int = 0) -> str:
    """`count` words of filler text."""
    return " ".join(LOREM[(offset + i) % len(LOREM)] for i in range(count))


def test_text_of_every_page_is_read_in_order(ingest: Ingest) -> None:
    run = ingest(build_pdf([["First page text"], ["Second page text"], ["Third page text"]]))
    assert run.result["page_count"] == 3
    assert run.result["pages_without_text"] == []
    assert run.text == "First page text\n\nSecond page text\n\nThird page text"
    pages = run.document["pages"]
    assert [page["number"] for page in pages] == [1, 2, 3]
    assert [page["text"] for page in pages] == [
        "First page text",
        "Second page text",
        "Third page text",
    ]
    assert all(run.text[page["start"] : page["end"]] == page["text"] for page in pages)
    assert {a.name: a.media_type for a in run.artifacts} == {
        "document.json": "application/json",
        "text.txt": "text/plain",
    }
    assert all(a.role == "output" for a in run.artifacts)


def test_progress_is_reported_per_page(ingest: Ingest) -> None:
    run = ingest(build_pdf([[f"page {n}"] for n in range(1, 6)]))
    page_reports = [message for _, message in run.progress if message and "page" in message]
    assert page_reports == [f"read page {n} of 5" for n in range(1, 6)]
    fractions = [fraction for fraction, _ in run.progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


def test_words_split_across_lines_are_joined(ingest: Ingest) -> None:
    run = ingest(build_pdf([["This is a docu-", "ment about queues.", "We met in New-", "York."]]))
    assert "This is a document about queues." in run.text
    assert "New-\nYork." in run.text  # a capital after the break: a name, not a split word


def test_text_is_nfkc_normalised_and_whitespace_collapsed(ingest: Ingest) -> None:
    run = ingest(build_pdf([["  x\u00b2   is  5 \u00b5m\t wide  "]]))
    assert run.text == "x2 is 5 \u03bcm wide"


def test_repeating_headers_and_footers_are_removed(ingest: Ingest) -> None:
    pages = [
        [
            "ACME Corp - Annual Report 2025",
            f"{LOREM[n]} opens page {n}.",
            words(12, n),
            f"Page {n} of 4",
        ]
        for n in range(1, 5)
    ]
    pages[0].insert(1, "Only on the first page")
    run = ingest(build_pdf(pages))
    assert "ACME Corp" not in run.text
    assert "of 4" not in run.text
    assert "Only on the first page" in run.text
    for n in range(1, 5):
        assert f"{LOREM[n]} opens page {n}." in run.text
        assert words(12, n) in run.text


def test_two_pages_are_too_few_to_tell_a_header(ingest: Ingest) -> None:
    run = ingest(build_pdf([["Same first line", "one"], ["Same first line", "two"]]))
    assert run.text.count("Same first line") == 2


def test_metadata_is_read_with_iso_dates(ingest: Ingest) -> None:
    info = {
        "Title": "Quarterly (draft)",
        "Author": "Ada Lovelace",
        "Producer": "docqueue tests",
        "Creator": "build_pdf",
        "CreationDate": "D:20240102030405+01'00'",
        "ModDate": "D:20240315",
    }
    run = ingest(build_pdf([["hello"]], info=info))
    metadata = run.result["metadata"]
    assert metadata["title"] == "Quarterly (draft)"
    assert metadata["author"] == "Ada Lovelace"
    assert metadata["producer"] == "docqueue tests"
    assert metadata["creator"] == "build_pdf"
    assert metadata["creation_date"] == "2024-01-02T03:04:05+01:00"
    assert metadata["modification_date"] == "2024-03-15T00:00:00"
    assert metadata["page_count"] == 1
    assert metadata["encrypted"] is False
    assert run.document["metadata"] == metadata


def test_unparseable_dates_are_left_out(ingest: Ingest) -> None:
    run = ingest(build_pdf([["hello"]], info={"CreationDate": "last Tuesday"}))
    assert run.result["metadata"]["creation_date"] is None


def test_encrypted_pdf_without_password_asks_for_one(ingest: Ingest) -> None:
    with pytest.raises(InputError, match=r"encrypted; pass its password as params\.password"):
        ingest(encrypt_pdf(build_pdf([["secret"]]), "s3cret"))


def test_encrypted_pdf_with_wrong_password_says_so(ingest: Ingest) -> None:
    with pytest.raises(InputError, match="does not open this PDF"):
        ingest(encrypt_pdf(build_pdf([["secret"]]), "s3cret"), password="guess")


def test_encrypted_pdf_opens_with_its_password(ingest: Ingest) -> None:
    run = ingest(encrypt_pdf(build_pdf([["secret plans"]]), "s3cret"), password="s3cret")
    assert run.text == "secret plans"
    assert run.result["metadata"]["encrypted"] is True
    assert "s3cret" not in run.output("document.json").decode()


def test_pdf_with_only_an_owner_password_opens_and_is_marked_encrypted(ingest: Ingest) -> None:
    run = ingest(encrypt_pdf(build_pdf([["open to read"]]), "", owner_password="owner"))
    assert run.text == "open to read"
    assert run.result["metadata"]["encrypted"] is True


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"Dear client, this is plain text.", "not a PDF"),
        (b"PK\x03\x04" + bytes(200), r"not a PDF.*send a PDF"),
        (b"%PDF-1.7\n" + bytes(range(256)) * 8, "corrupt or truncated"),
    ],
    ids=["zero-byte", "text", "zip", "corrupt"],
)
def test_unreadable_input_fails_with_a_clear_message(
    ingest: Ingest, data: bytes, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        ingest(data)


def test_truncated_pdf_fails_with_a_clear_message(ingest: Ingest) -> None:
    whole = build_pdf([[words(40, n)] for n in range(6)])
    with pytest.raises(InputError, match=r"corrupt or truncated.*whole file was sent"):
        ingest(whole[: len(whole) // 2])


def test_page_limit_names_the_page_count_and_the_limit(ingest: Ingest) -> None:
    pdf = build_pdf([[f"page {n}"] for n in range(1, 6)])
    with pytest.raises(InputError, match=r"has 5 pages, more than the limit of 3"):
        ingest(pdf, max_pages=3)
    assert ingest(pdf, max_pages=3, pages="2-4").result["pages_read"] == 3


def test_a_page_selection_reads_only_those_pages(ingest: Ingest) -> None:
    pdf = build_pdf([[f"page {n}"] for n in range(1, 6)])
    run = ingest(pdf, pages="2-3,5")
    assert run.text == "page 2\n\npage 3\n\npage 5"
    assert [page["number"] for page in run.document["pages"]] == [2, 3, 5]
    assert run.result["page_count"] == 5
    assert ingest(pdf, pages="4-").text == "page 4\n\npage 5"
    with pytest.raises(InputError, match="asks for page 9, but the PDF has 5 pages"):
        ingest(pdf, pages="2,9")


def test_image_only_page_is_reported_without_text(ingest: Ingest) -> None:
    run = ingest(build_pdf([["words here"], Page(image=True), Page()]))
    assert run.result["pages_without_text"] == [2, 3]
    pages = run.document["pages"]
    assert pages[0]["has_text"] is True and "has_images" not in pages[0]
    assert pages[1] == {
        "number": 2,
        "has_text": False,
        "has_images": True,
        "text": "",
        "start": 12,
        "end": 12,
    }
    assert pages[2]["has_images"] is False  # blank, not a scan


def test_chunks_overlap_break_on_whitespace_and_know_their_pages(ingest: Ingest) -> None:
    pdf = build_pdf([[words(14, 20 * p + line) for line in range(6)] for p in range(3)])
    run = ingest(pdf, chunk_size=200, chunk_overlap=50)
    text, chunks = run.text, run.document["chunks"]
    assert run.result["chunk_count"] == len(chunks) > 5
    assert run.result["char_count"] == len(text)
    for chunk, following in itertools.pairwise(chunks):
        assert 0 < len(chunk["text"]) <= 200
        assert text[chunk["start"] : chunk["end"]] == chunk["text"]
        assert chunk["start"] == 0 or text[chunk["start"] - 1].isspace()  # starts on a word
        assert chunk["end"] == len(text) or text[chunk["end"]].isspace()  # ends on a word
        assert following["start"] < chunk["end"]  # overlaps the next one
        assert chunk["end"] - following["start"] <= 50 + 20
    assert chunks[-1]["end"] == len(text)
    assert chunks[0]["pages"] == [1]
    assert chunks[-1]["pages"] == [3]
    assert any(chunk["pages"] == [1, 2] for chunk in chunks)
    assert all("embedding" not in chunk for chunk in chunks)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"chunk_size": 500, "chunk_overlap": 500}, "chunk_overlap .500. must be less than"),
        ({"unknown": 1}, "unknown: Extra inputs are not permitted"),
        ({"pages": "3-1"}, "not a range of pages"),
        ({"pages": "first"}, "not a page selection"),
    ],
)
def test_bad_params_are_input_errors(ingest: Ingest, params: JSON, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ingest(build_pdf([["text"]]), **params)


def test_bad_params_are_refused_at_submission() -> None:
    registry = builtin_registry()
    with pytest.raises(InvalidJob, match="pages"):
        registry.validate("ingest", {"pages": "1-2-3"})
    assert registry.validate("ingest", {"embed": True, "pages": "1-3"}) == {
        "embed": True,
        "pages": "1-3",
    }


def test_builtin_registry_has_ingest_for_pdfs() -> None:
    registry = builtin_registry()
    processor = registry.get("ingest")
    assert processor.accepts == ("application/pdf",)
    assert EMBEDDING_MODEL in registry.resources
    assert not registry.resources[EMBEDDING_MODEL].warm  # loaded by the first job that embeds


def test_a_cancelled_job_stops_and_writes_nothing(tmp_path: Path) -> None:
    ingest = Ingest(tmp_path, cancelled=lambda: True)
    run = ingest(build_pdf([["one"], ["two"]]))
    assert run.result == {}
    assert run.artifacts == []


def test_embeddings_come_from_a_model_loaded_once(tmp_path: Path) -> None:
    loads: list[int] = []

    def counting_factory() -> Any:
        loads.append(1)
        return load_embedding_model()

    ingest = Ingest(tmp_path)
    ingest.registry.resources[EMBEDDING_MODEL] = Resource(EMBEDDING_MODEL, counting_factory)
    first = ingest(build_pdf([[words(30)], [words(30, 7)]]), embed=True, chunk_size=120)
    second = ingest(build_pdf([["A different document about invoices."]]), embed=True)
    assert len(loads) == 1
    assert first.result["embedding"] == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "dimension": 384,
        "precision": "float32",
    }
    chunks = first.document["chunks"]
    assert len(chunks) == first.result["chunk_count"] > 1
    for chunk in chunks:
        assert len(chunk["embedding"]) == 384
        assert math.isclose(math.fsum(v * v for v in chunk["embedding"]), 1.0, rel_tol=1e-4)
    assert second.document["embedding"]["dimension"] == 384
    assert len(second.document["chunks"][0]["embedding"]) == 384


def test_bfloat16_embeddings_point_where_the_float32_ones_do(tmp_path: Path) -> None:
    """bfloat16 arithmetic (emulated where the CPU lacks it, so this runs anywhere) rounds
    differently, and the vectors stay at a cosine of at least 0.999 from the float32 ones. An
    ingest that asks for it says in document.json and its result what the worker used."""
    ingest = Ingest(tmp_path)
    model = ingest.resources.get(EMBEDDING_MODEL)
    texts = [words(120, offset) for offset in range(0, 60, 7)]
    exact = embed_texts(model, texts)
    quick = embed_texts(model, texts, precision="bfloat16")
    assert exact is not None and quick is not None
    assert exact != quick
    for a, b in zip(exact, quick, strict=True):
        assert math.fsum(x * y for x, y in zip(a, b, strict=True)) >= 0.999
    pdf = build_pdf([[words(60)], [words(60, 11)]])
    run = ingest(pdf, embed=True, chunk_size=200, embed_precision="bfloat16")
    used = usable_precision("bfloat16")
    assert run.document["embedding"]["precision"] == run.result["embedding"]["precision"] == used
    assert ingest(pdf, embed=True).document["embedding"]["precision"] == "float32"
    with pytest.raises(InputError, match="embed_precision"):
        ingest(pdf, embed=True, embed_precision="float16")


def test_each_batch_embeds_with_the_threads_given_then(tmp_path: Path) -> None:
    """The thread count is asked before every batch (a worker's share of the cores changes
    as other jobs start and end), and torch computes with it; the vectors do not change, and
    torch's own count is back afterwards, for other torch work in the process."""
    import torch

    model = Ingest(tmp_path).resources.get(EMBEDDING_MODEL)
    texts = [words(40, offset) for offset in range(BATCH_SIZE + 1)]
    before = torch.get_num_threads()
    asked: list[int] = []

    def threads() -> int:
        asked.append(torch.get_num_threads())
        return 1 + len(asked) % 2

    try:
        shared = embed_texts(model, texts, threads=threads)
        assert asked == [before, 2]  # two batches: set to 2, then to 1
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
    plain = embed_texts(model, texts)
    assert shared is not None and plain is not None
    for a, b in zip(shared, plain, strict=True):
        assert math.fsum(x * y for x, y in zip(a, b, strict=True)) >= 0.9999


def test_ingest_asks_its_context_for_threads_before_each_batch(tmp_path: Path) -> None:
    """An ingest that embeds takes its thread count from the context (a worker child's share
    of the cores), once per batch of chunks."""
    asked: list[int] = []

    def threads() -> int:
        asked.append(1)
        return 1

    ingest = Ingest(tmp_path, cpu_threads=threads)
    pdf = build_pdf([[words(60, page)] for page in range(12)])
    run = ingest(pdf, embed=True, chunk_size=100)
    batches = -(-len(run.document["chunks"]) // BATCH_SIZE)
    assert batches >= 2
    assert len(asked) == batches


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 CPU flags")
def test_bfloat16_is_used_where_the_cpu_has_it() -> None:
    """The worker embeds in bfloat16 only on CPUs with its instructions (AVX512-BF16 or AMX),
    as the kernel lists them; elsewhere in float32, which asking for float32 always gets."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    assert match is not None
    native = bool({"avx512_bf16", "amx_bf16"} & set(match.group(1).split()))
    assert usable_precision("bfloat16") == ("bfloat16" if native else "float32")
    assert usable_precision("float32") == "float32"


def test_embedded_chunks_fit_the_models_input_window(tmp_path: Path) -> None:
    """Codes and odd words take several tokens each: 4,000 characters of them are far more than
    the model's 256 tokens, so chunks end where its window does, and none is cut short."""
    codes = [
        " ".join(f"rx{n * 7919 % 10007:05d}q{n:04d}" for n in range(p, p + 120)) for p in (0, 120)
    ]
    ingest = Ingest(tmp_path)
    plain = ingest(build_pdf([[codes[0]], [codes[1]]]), chunk_size=4000, chunk_overlap=100)
    embedded = ingest(
        build_pdf([[codes[0]], [codes[1]]]), embed=True, chunk_size=4000, chunk_overlap=100
    )
    tokenizer = ingest.resources.get(EMBEDDING_MODEL).tokenizer
    document = embedded.document
    assert document["chunking"] == {"chunk_size": 4000, "chunk_overlap": 100, "max_tokens": 254}
    assert "max_tokens" not in plain.document["chunking"]
    assert len(plain.document["chunks"]) == 1  # the whole text is one chunk without the window
    chunks = document["chunks"]
    assert len(chunks) > 2
    for chunk, following in itertools.pairwise(chunks):
        assert following["start"] < chunk["end"]  # overlapping: no text falls between chunks
    for chunk in chunks:
        assert embedded.text[chunk["start"] : chunk["end"]] == chunk["text"]
        assert len(tokenizer(chunk["text"], verbose=False)["input_ids"]) <= 256
    assert chunks[-1]["end"] == len(embedded.text)
    scan = ingest(build_pdf([Page(image=True), Page()]), embed=True)
    assert scan.result["chunk_count"] == 0
    assert scan.result["pages_without_text"] == [1, 2]
    assert scan.document["chunks"] == []
