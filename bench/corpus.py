"""Generated text PDFs for bench/ingest.py: the same corpus on every run, and distinct copies.

Not a benchmark itself. Each page has a running header, about 45 lines of words and a
"Page n of m" footer, so the ingest processor's header and footer removal has work to do;
tests/pdfs.py writes the PDFs.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pdfs import build_pdf  # noqa: E402

#: A line on the first page of each document that `distinct_copy` overwrites, same length.
REFERENCE = "Reference 0000000000"
#: Lines of words on a page, between its header and its footer.
LINES_PER_PAGE = 45


def write_corpus(folder: Path, docs: int, pages: int) -> list[Path]:
    """`docs` text PDFs of `pages` pages in `folder`, the same on every run."""
    rng = random.Random(1234)
    letters = "abcdefghijklmnoprstuvwy"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(2000)]
    folder.mkdir(parents=True)
    paths = []
    for number in range(docs):
        title = f"Quarterly operations review {number + 1}"
        document = []
        for page in range(1, pages + 1):
            lines = [title, ""] + [_sentence(rng, vocabulary) for _ in range(LINES_PER_PAGE)]
            if page == 1:
                lines.insert(1, REFERENCE)
            document.append([*lines, "", f"Page {page} of {pages}"])
        path = folder / f"doc-{number:04d}.pdf"
        path.write_bytes(build_pdf(document, {"Title": title, "Author": "bench/ingest.py"}))
        paths.append(path)
    return paths


def _sentence(rng: random.Random, vocabulary: list[str]) -> str:
    """About 85 characters of words, as one line of a page."""
    words: list[str] = []
    while sum(len(word) + 1 for word in words) < 80:
        words.append(rng.choice(vocabulary))
    return " ".join(words).capitalize() + "."


def distinct_copy(data: bytes, number: int) -> bytes:
    """The same PDF with its reference line changed to `number` (same length, still valid), so
    that content addressing stores it anew."""
    return data.replace(REFERENCE.encode(), f"Reference {number:010d}".encode(), 1)
