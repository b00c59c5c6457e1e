"""`ingest`: a PDF in; clean text per page, metadata, chunks and optional embeddings out.

The job's result is a small summary. The full pages, chunks and embeddings are the output
artifact `document.json`; the plain text is `text.txt` (pages separated by a blank line; the
`start`/`end` offsets in document.json point into it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from docqueue.errors import InputError
from docqueue.media import PDF
from docqueue.models import JSON
from docqueue.processors.chunking import Chunk, PageSpan, chunk_text, join_pages
from docqueue.processors.cleaning import clean_lines, page_text, remove_repeating_edges
from docqueue.processors.context import Context
from docqueue.processors.embedding import (
    EMBEDDING_MODEL,
    EMBEDDING_RESOURCE,
    MODEL_NAME,
    Precision,
    embed_texts,
    input_window,
    model_dimension,
    usable_precision,
)
from docqueue.processors.pdf import (
    RawPage,
    open_pdf,
    parse_page_ranges,
    read_metadata,
    read_page,
    select_pages,
)
from docqueue.processors.registry import Processor, Registry

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain"
DEFAULT_OVERLAP = 200
#: Share of the progress bar spent reading pages when the job also embeds.
_READ_SHARE_WHEN_EMBEDDING = 0.4


class IngestParams(BaseModel):
    """Params of `ingest`."""

    model_config = ConfigDict(extra="forbid")

    #: Password of an encrypted PDF.
    password: str | None = Field(default=None, max_length=1024)
    #: Most characters in one chunk.
    chunk_size: int = Field(default=1000, ge=100, le=100_000)
    #: Characters two neighbouring chunks share, less than chunk_size; by default 200, or a
    #: fifth of chunk_size when that is less.
    chunk_overlap: int | None = Field(default=None, ge=0)
    #: Also compute an embedding of every chunk. Chunks then also end where the model's input
    #: window does (256 tokens for all-MiniLM-L6-v2), so that each is embedded whole.
    embed: bool = False
    #: The arithmetic of the embedding: "bfloat16" is about twice as fast on CPUs that do it
    #: natively, with vectors at a cosine of 0.9999 from the float32 ones; elsewhere the worker
    #: uses float32. document.json says which was used.
    embed_precision: Precision = "float32"
    #: Refuse PDFs with more pages than this (counting only the selected `pages`).
    max_pages: int | None = Field(default=None, ge=1)
    #: Pages to read, counted from 1: "1-3,7,10-"; all pages when absent.
    pages: str | None = Field(default=None, max_length=1000)

    @field_validator("pages")
    @classmethod
    def _check_pages(cls, value: str | None) -> str | None:
        """Reject a malformed page selection at submission, not when the job runs."""
        if value is not None:
            parse_page_ranges(value)
        return value

    @model_validator(mode="after")
    def _check_overlap(self) -> IngestParams:
        """Chunks must move forward."""
        if self.chunk_overlap is not None and self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_size "
                f"({self.chunk_size})"
            )
        return self

    @property
    def overlap(self) -> int:
        """The overlap to use: the one given, else the default for this chunk size."""
        if self.chunk_overlap is not None:
            return self.chunk_overlap
        return min(DEFAULT_OVERLAP, self.chunk_size // 5)


def run_ingest(ctx: Context) -> JSON:
    """Read the PDF, clean its text, chunk it, embed the chunks if asked, store the outputs."""
    params = _parse_params(ctx.params)
    read_share = _READ_SHARE_WHEN_EMBEDDING if params.embed else 0.9
    read = _read_pages(ctx, params, read_share)
    if read is None:
        return {}
    metadata, raw_pages = read
    cleaned = remove_repeating_edges(
        [clean_lines(page.text) for page in raw_pages], [page.number for page in raw_pages]
    )
    text, spans = join_pages(
        [(page.number, page_text(lines)) for page, lines in zip(raw_pages, cleaned, strict=True)]
    )
    chunking: JSON = {"chunk_size": params.chunk_size, "chunk_overlap": params.overlap}
    limit: Callable[[int], int] | None = None
    if params.embed:
        # Every chunk fits the model's input window: a longer one would be embedded only in part.
        model = ctx.resources.get(EMBEDDING_MODEL)
        chunking["max_tokens"], limit = input_window(model, text)
    chunks = chunk_text(text, spans, params.chunk_size, params.overlap, limit)
    embedding: JSON | None = None
    vectors: list[list[float]] | None = None
    if params.embed and chunks:
        precision = usable_precision(params.embed_precision)
        vectors = embed_texts(
            model,
            [chunk.text for chunk in chunks],
            lambda done: _embedding_progress(ctx, read_share, done, len(chunks)),
            precision,
            ctx.cpu_threads,
        )
        if vectors is None:
            return {}
        embedding = {
            "model": MODEL_NAME,
            "dimension": model_dimension(model),
            "normalized": True,
            "precision": precision,
        }
    pages = _pages_json(raw_pages, text, spans)
    source = ctx.input
    document = {
        "source": {"name": source.name, "sha256": source.sha256, "media_type": source.media_type},
        "metadata": metadata,
        "chunking": chunking,
        "embedding": embedding,
        "pages": pages,
        "chunks": _chunks_json(chunks, vectors),
    }
    # orjson: this document holds every page's text and chunk; the json module took 0.74 ms
    # for a 20-page document (3% of its ingest job), orjson 0.03 ms.
    ctx.write("document.json", orjson.dumps(document), JSON_TYPE)
    ctx.write("text.txt", text, TEXT_TYPE)
    ctx.progress(1.0, "done")
    return _summary(metadata, pages, len(chunks), len(text), embedding)


def _read_pages(
    ctx: Context, params: IngestParams, share: float
) -> tuple[JSON, list[RawPage]] | None:
    """The metadata and the raw text of the selected pages; None when the job was cancelled."""
    with open_pdf(Path(ctx.input.path), params.password) as pdf:
        metadata = read_metadata(pdf)
        indexes = select_pages(params.pages, len(pdf))
        _check_page_limit(len(indexes), len(pdf), params)
        raw_pages: list[RawPage] = []
        for done, index in enumerate(indexes, start=1):
            if ctx.is_cancelled():
                return None
            raw_pages.append(read_page(pdf, index))
            ctx.progress(share * done / len(indexes), f"read page {done} of {len(indexes)}")
    return metadata, raw_pages


def _summary(
    metadata: JSON, pages: list[JSON], chunk_count: int, char_count: int, embedding: JSON | None
) -> JSON:
    """The job's result: small, with the full content left to document.json and text.txt."""
    summary: JSON = {
        "page_count": metadata["page_count"],
        "pages_read": len(pages),
        "pages_without_text": [page["number"] for page in pages if not page["has_text"]],
        "chunk_count": chunk_count,
        "char_count": char_count,
        "metadata": metadata,
        "outputs": ["document.json", "text.txt"],
    }
    if embedding is not None:
        summary["embedding"] = {key: embedding[key] for key in ("model", "dimension", "precision")}
    return summary


def _parse_params(raw: JSON) -> IngestParams:
    """The job's params, or an InputError listing what is wrong with them."""
    try:
        return IngestParams.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'params'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InputError(f"invalid params for 'ingest': {problems}") from None


def _check_page_limit(selected: int, page_count: int, params: IngestParams) -> None:
    """Refuse more pages than `max_pages`, naming the count and the limit."""
    if params.max_pages is None or selected <= params.max_pages:
        return
    chosen = f"{selected} selected pages of its {page_count}" if params.pages else "pages"
    count = selected if params.pages else page_count
    raise InputError(
        f"the PDF has {count} {chosen}, more than the limit of {params.max_pages} (max_pages); "
        'select fewer with params.pages (for example "1-50"), or split the document'
    )


def _embedding_progress(ctx: Context, read_share: float, done: int, total: int) -> bool:
    """Report embedding progress; False when the job was cancelled, to stop early."""
    ctx.progress(read_share + (0.95 - read_share) * done / total, f"embedded {done} of {total}")
    return not ctx.is_cancelled()


def _pages_json(raw_pages: list[RawPage], text: str, spans: list[PageSpan]) -> list[JSON]:
    """Each page read: number, whether it has a text layer, its clean text and where that lies
    in text.txt."""
    pages: list[JSON] = []
    for raw, span in zip(raw_pages, spans, strict=True):
        page: JSON = {"number": raw.number, "has_text": raw.has_text}
        if not raw.has_text:
            # A page without text but with images is most likely a scan: it needs OCR.
            page["has_images"] = raw.has_images
        page.update({"text": text[span.start : span.end], "start": span.start, "end": span.end})
        pages.append(page)
    return pages


def _chunks_json(chunks: list[Chunk], vectors: list[list[float]] | None) -> list[JSON]:
    """Chunks as JSON, each with its embedding when there are embeddings."""
    rows: list[JSON] = []
    for chunk in chunks:
        row: dict[str, Any] = {
            "index": chunk.index,
            "text": chunk.text,
            "start": chunk.start,
            "end": chunk.end,
            "pages": list(chunk.pages),
        }
        if vectors is not None:
            row["embedding"] = vectors[chunk.index]
        rows.append(row)
    return rows


INGEST = Processor(
    name="ingest",
    func=run_ingest,
    params_model=IngestParams,
    resources=(EMBEDDING_MODEL,),
    accepts=(PDF,),
    description=(
        "PDF in: clean text per page, metadata, chunks and (embed: true) chunk embeddings; "
        "outputs document.json and text.txt."
    ),
)


def register(registry: Registry) -> None:
    """Add the embedding model resource and the `ingest` operation to `registry`."""
    registry.resources[EMBEDDING_RESOURCE.name] = EMBEDDING_RESOURCE
    registry.add(INGEST)
