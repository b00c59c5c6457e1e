"""Overlapping chunks of a document's text, cut on whitespace, each knowing the pages it spans."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: What separates two pages in the document text (and in text.txt).
PAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class PageSpan:
    """Where one page's text lies in the document text: [start, end) in characters."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Chunk:
    """A piece of the document text: [start, end) in characters, and the pages (from 1) it spans."""

    index: int
    text: str
    start: int
    end: int
    pages: tuple[int, ...]


def join_pages(pages: Sequence[tuple[int, str]]) -> tuple[str, list[PageSpan]]:
    """The document text from (page number, page text) pairs, and where each page lies in it."""
    parts: list[str] = []
    spans: list[PageSpan] = []
    offset = 0
    for number, text in pages:
        if parts:
            parts.append(PAGE_SEPARATOR)
            offset += len(PAGE_SEPARATOR)
        parts.append(text)
        spans.append(PageSpan(number, offset, offset + len(text)))
        offset += len(text)
    return "".join(parts), spans


def chunk_text(
    text: str,
    spans: Sequence[PageSpan],
    size: int,
    overlap: int,
    limit: Callable[[int], int] | None = None,
) -> list[Chunk]:
    """Cut `text` into chunks of at most `size` characters that overlap by about `overlap`.

    A chunk ends at the last whitespace in its second half (a word longer than that is cut), and
    the next one starts at a word boundary `overlap` characters before that end. `limit(start)`,
    when given, is the farthest end a chunk that begins at `start` may have (an embedding
    model's input window): the chunk is cut within it, in the same way.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap {overlap} must be at least 0 and less than size {size}")
    chunks: list[Chunk] = []
    starts = [span.start for span in spans]
    length = len(text)
    start = _skip_space(text, 0)
    while start < length:
        room = size if limit is None else max(1, min(size, limit(start) - start))
        end = _chunk_end(text, start, room)
        body = text[start:end].rstrip()
        chunks.append(
            Chunk(len(chunks), body, start, start + len(body), _pages(spans, starts, start, end))
        )
        if end >= length:
            break
        start = max(_next_start(text, start, end, overlap), start + 1)
        start = _skip_space(text, start)
    return chunks


def _chunk_end(text: str, start: int, size: int) -> int:
    """Where the chunk that begins at `start` ends: on whitespace when the text goes on."""
    end = start + size
    if end >= len(text):
        return len(text)
    floor = start + size // 2
    cut = end
    while cut > floor and not text[cut].isspace():
        cut -= 1
    return cut if cut > floor else end


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the chunk after [start, end) begins: `overlap` back from `end`, at a word start."""
    candidate = end - overlap
    if candidate <= start:
        return end
    while candidate < end and not text[candidate - 1].isspace():
        candidate += 1
    return candidate


def _skip_space(text: str, position: int) -> int:
    """The first position at or after `position` that is not whitespace."""
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _pages(
    spans: Sequence[PageSpan], starts: Sequence[int], start: int, end: int
) -> tuple[int, ...]:
    """Numbers of the pages whose text overlaps [start, end); `starts` are the spans' starts."""
    numbers: list[int] = []
    for index in range(max(bisect.bisect_right(starts, start) - 1, 0), len(spans)):
        span = spans[index]
        if span.start >= end:
            break
        if span.end > start and span.start < span.end:
            numbers.append(span.number)
    return tuple(numbers)
