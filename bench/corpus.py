"""Generated text PDFs for bench/ingest.py: the same corpus on every run, and distinct copies.

Not a benchmark itself. Each page has a running header, about 3,900 characters of text and a
"Page n of m" footer, so the ingest processor's header and footer removal has work to do.
Two kinds:
- "plain" (tests/pdfs.py writes them): one line of made-up words after another in Helvetica,
  one text operation a line. The least work a PDF reader can have per character, so the
  ingest's own work per character weighs the most against it.
- "typeset" (Typst writes them): English words in two columns of justified, hyphenated
  paragraphs under headings, in embedded subset fonts with each glyph placed, as word
  processors and TeX make documents; with their typography too: curly quotes, apostrophes
  and em dashes, so that the text is not ASCII, as almost no document's is.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pdfs import build_pdf  # noqa: E402

#: Text in each document that `distinct_copy` overwrites, same length: a line on the first page
#: of a plain one, the keywords of a typeset one.
REFERENCE = "Reference 0000000000"
#: Lines of words on a page, between its header and its footer.
LINES_PER_PAGE = 45


def write_corpus(folder: Path, docs: int, pages: int, kind: str = "plain") -> list[Path]:
    """`docs` text PDFs of `pages` pages of `kind` ("plain" or "typeset") in `folder`, the
    same on every run."""
    writers: dict[str, Callable[[Path, int, int], list[Path]]] = {
        "plain": _plain_corpus,
        "typeset": _typeset_corpus,
    }
    folder.mkdir(parents=True)
    return writers[kind](folder, docs, pages)


def _plain_corpus(folder: Path, docs: int, pages: int) -> list[Path]:
    """Lines of made-up words in Helvetica, a text operation a line."""
    rng = random.Random(1234)
    letters = "abcdefghijklmnoprstuvwy"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(2000)]
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
    """The same PDF with its reference changed to `number` (same length, still valid), so that
    content addressing stores it anew."""
    return data.replace(REFERENCE.encode(), f"Reference {number:010d}".encode(), 1)


#: English words, the commonest first: a typeset page reads as English does (for the embedding
#: model's tokens too), its words drawn with Zipf's law over this order.
_ENGLISH = """
the of and to in a is that for it as with was on be by this are from or at which an have not
they their has been more one all will can were also would there other these its but about
when time new some into than only may most such over use first any after year work each made
system report quarter team customer service data process product market sales cost
operations review results growth plan project management support quality program business
information account performance increase level period contract supply change value order
revenue budget risk staff office region board policy center network delivery finance capital
share target analysis approach standard development company industry employee client
strategy measure demand production resource partner payment investment price rate general
schedule issue control agreement security training equipment facility inventory logistics
improved reduced delivered expected remained reported compared continued increased included
provided required completed reviewed approved planned measured recorded remaining following
significant additional current previous annual monthly overall several important different
available operational financial regional internal external technical commercial substantial
"""
ENGLISH = _ENGLISH.split()
#: Characters of running text on each page (the plain corpus has about 3,900 too).
TYPESET_CHARS_PER_PAGE = 3900


def _typeset_corpus(folder: Path, docs: int, pages: int) -> list[Path]:
    """Justified, hyphenated English paragraphs in two columns under headings, typeset by
    Typst, a page of text each then a page break."""
    import typst  # the bench extra; only this kind needs it

    rng = random.Random(1234)
    weights = [1 / rank for rank in range(1, len(ENGLISH) + 1)]
    paths = []
    for number in range(docs):
        title = f"Quarterly operations review {number + 1}"
        body = "\n#pagebreak()\n".join(
            _typeset_page(rng, weights, page) for page in range(1, pages + 1)
        )
        # The reference is in the keywords, which the PDF keeps as plain text: distinct_copy
        # finds it there. The date is fixed, so that each run writes the same bytes.
        source = f"""
#set document(title: "{title}", author: "bench/ingest.py", keywords: ("{REFERENCE}",),
  date: datetime(year: 2026, month: 1, day: 1))
#set page(paper: "a4", columns: 2,
  header: [{title} #h(1fr) Northwind Operations],
  footer: context [#h(1fr) Page #counter(page).display() of #counter(page).final().first()
    #h(1fr)])
#set text(lang: "en", size: 10pt, hyphenate: true)
#set par(justify: true)
{body}
"""
        data = typst.compile(source.encode())
        if (count := _page_count(data)) != pages:
            raise RuntimeError(f"a typeset document came out with {count} pages, not {pages}")
        path = folder / f"doc-{number:04d}.pdf"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _page_count(data: bytes) -> int:
    """The pages of the PDF `data`."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        return len(pdf)
    finally:
        pdf.close()


def _typeset_page(rng: random.Random, weights: list[float], page: int) -> str:
    """A page's Typst markup: a heading, then paragraphs of sentences."""
    parts = [f"= Section {page}: {' '.join(rng.choices(ENGLISH[40:], k=3)).title()}"]
    size = 0
    while size < TYPESET_CHARS_PER_PAGE:
        sentences = [_typeset_sentence(rng, weights) for _ in range(rng.randint(3, 7))]
        paragraph = " ".join(sentences)
        if size + len(paragraph) > TYPESET_CHARS_PER_PAGE:  # the page ends with a shorter one
            paragraph = paragraph[: TYPESET_CHARS_PER_PAGE - size].rsplit(" ", 1)[0] + "."
        size += len(paragraph)
        parts.append(paragraph)
    return "\n\n".join(parts)


def _typeset_sentence(rng: random.Random, weights: list[float]) -> str:
    """A sentence of English words, some with a quoted phrase, a possessive or a dash: Typst
    sets "..." as curly quotes, ' as an apostrophe and --- as an em dash."""
    words = rng.choices(ENGLISH, weights, k=rng.randint(8, 22))
    if rng.random() < 0.3:
        at = rng.randrange(1, len(words) - 1)
        words[at : at + 2] = [f'"{words[at]}', f'{words[at + 1]}"']
    if rng.random() < 0.3:
        words[rng.randrange(len(words) - 1)] += "'s"
    if rng.random() < 0.2:
        words.insert(rng.randrange(2, len(words)), "---")
    return " ".join(words).capitalize() + "."
