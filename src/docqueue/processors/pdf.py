"""Reading PDFs with PDFium: opening with errors a person can act on, metadata, raw page text."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from docqueue.errors import InputError
from docqueue.media import PDF, SNIFF_BYTES, sniff_media_type
from docqueue.models import JSON

_PDF_DATE = re.compile(
    r"^(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?"
    r"(?:\s*(Z|[+-])(?:(\d{2})'?(?:(\d{2})'?)?)?)?"
)
#: Metadata strings are cut to this length, so that the job's result stays small.
_MAX_METADATA_CHARS = 2000
_PAGE_RANGE = re.compile(r"^\s*(\d+)?\s*(-)?\s*(\d+)?\s*$")


@dataclass(frozen=True)
class RawPage:
    """One page as PDFium reads it: its number (from 1), its text, whether it shows images."""

    number: int
    text: str
    has_images: bool

    @property
    def has_text(self) -> bool:
        """True when the page has a text layer with anything but whitespace in it."""
        return bool(self.text.strip())


@contextmanager
def open_pdf(path: Path, password: str | None = None) -> Iterator[pdfium.PdfDocument]:
    """Open the PDF at `path`, or raise an InputError that says what is wrong with it."""
    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
    if not head:
        raise InputError("the file is empty (0 bytes); upload the PDF again")
    if sniff_media_type(head) != PDF:
        raise InputError(
            f"the file is not a PDF: no '%PDF-' header in its first {SNIFF_BYTES} bytes "
            f"(it starts with {head[:16]!r}); send a PDF document"
        )
    try:
        pdf = pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as exc:
        raise _open_error(exc, password) from None
    try:
        yield pdf
    finally:
        pdf.close()


def _open_error(exc: pdfium.PdfiumError, password: str | None) -> InputError:
    """The InputError for a PDF that PDFium refused to open."""
    code = getattr(exc, "err_code", None)
    if code == pdfium_c.FPDF_ERR_PASSWORD and password is None:
        return InputError("the PDF is encrypted; pass its password as params.password")
    if code == pdfium_c.FPDF_ERR_PASSWORD:
        return InputError(
            "the password given in params.password does not open this PDF; check it and submit again"
        )
    if code == pdfium_c.FPDF_ERR_SECURITY:
        return InputError(
            "the PDF uses an encryption scheme that cannot be read; save it without encryption"
        )
    return InputError(
        f"the PDF is corrupt or truncated and cannot be read ({exc}); "
        "check that the whole file was sent, or export it again"
    )


def read_metadata(pdf: pdfium.PdfDocument) -> JSON:
    """Title, author and the like, with dates as ISO strings when they parse, and page facts."""
    info = pdf.get_metadata_dict()
    version = pdf.get_version()
    return {
        "title": _clean_value(info.get("Title")),
        "author": _clean_value(info.get("Author")),
        "subject": _clean_value(info.get("Subject")),
        "keywords": _clean_value(info.get("Keywords")),
        "creator": _clean_value(info.get("Creator")),
        "producer": _clean_value(info.get("Producer")),
        "creation_date": parse_pdf_date(info.get("CreationDate")),
        "modification_date": parse_pdf_date(info.get("ModDate")),
        "page_count": len(pdf),
        "encrypted": pdfium_c.FPDF_GetSecurityHandlerRevision(pdf.raw) != -1,
        "pdf_version": f"{version // 10}.{version % 10}" if version else None,
    }


def read_page(pdf: pdfium.PdfDocument, index: int) -> RawPage:
    """The text of page `index` (from 0) as PDFium lays it out, lines separated by CRLF."""
    try:
        page = pdf[index]
    except pdfium.PdfiumError as exc:
        raise InputError(
            f"page {index + 1} of the PDF is damaged and cannot be read ({exc})"
        ) from None
    try:
        textpage = page.get_textpage()
        try:
            text: str = textpage.get_text_range()
        finally:
            textpage.close()
        has_images = False
        if not text.strip():
            images = page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])
            has_images = next(images, None) is not None
        return RawPage(number=index + 1, text=text, has_images=has_images)
    finally:
        page.close()


def select_pages(spec: str | None, page_count: int) -> list[int]:
    """Page indexes (from 0) named by `spec` such as "1-3,7,10-"; every page when spec is None."""
    if spec is None:
        return list(range(page_count))
    chosen: set[int] = set()
    for first, last in parse_page_ranges(spec):
        last = page_count if last is None else last
        if first > page_count or last > page_count:
            raise InputError(
                f"params.pages {spec!r} asks for page {max(first, last)}, "
                f"but the PDF has {page_count} pages"
            )
        chosen.update(range(first - 1, last))
    return sorted(chosen)


def parse_page_ranges(spec: str) -> list[tuple[int, int | None]]:
    """Parse "1-3,7,10-" into [(1, 3), (7, 7), (10, None)]; pages count from 1."""
    ranges: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        match = _PAGE_RANGE.match(part)
        if not part.strip() or match is None or match.group(1) is None:
            raise ValueError(
                f"{spec!r} is not a page selection; write pages from 1 like '1-3,7,10-'"
            )
        first = int(match.group(1))
        last: int | None = first
        if match.group(2):
            last = int(match.group(3)) if match.group(3) else None
        if first < 1 or (last is not None and last < first):
            raise ValueError(f"{part.strip()!r} in {spec!r} is not a range of pages counted from 1")
        ranges.append((first, last))
    return ranges


def parse_pdf_date(value: str | None) -> str | None:
    """A PDF date such as "D:20240102030405+01'00'" as ISO 8601, or None when it does not parse."""
    if not value:
        return None
    match = _PDF_DATE.match(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, sign, tz_hours, tz_minutes = match.groups()
    try:
        tz: timezone | None = None
        if sign == "Z":
            tz = UTC
        elif sign:
            offset = timedelta(hours=int(tz_hours or 0), minutes=int(tz_minutes or 0))
            tz = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None
    return moment.isoformat()


def _clean_value(value: str | None) -> str | None:
    """A metadata string stripped of padding and NULs; None when nothing is left."""
    if value is None:
        return None
    cleaned = unicodedata.normalize("NFKC", value).replace("\x00", "").strip()
    return cleaned[:_MAX_METADATA_CHARS] or None
