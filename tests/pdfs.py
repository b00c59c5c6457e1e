"""Real PDFs for tests, written byte by byte (text in Helvetica, optional images, metadata)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from pypdf import PdfReader, PdfWriter


@dataclass(frozen=True)
class Page:
    """One page: lines of text from the top, and optionally an image (a scan has only that)."""

    lines: Sequence[str] = ()
    image: bool = False


def build_pdf(pages: Sequence[Page | Sequence[str]], info: dict[str, str] | None = None) -> bytes:
    """A PDF with the given pages; a page given as a list of strings is lines of text."""
    objects: list[bytes] = [b"", b""]  # 1: catalog, 2: page tree, filled in at the end
    objects.append(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    font = len(objects)
    objects.append(
        _stream(
            b"\x00\x80\xff\x40" * 64,
            b"/Type /XObject /Subtype /Image /Width 16 /Height 16 "
            b"/ColorSpace /DeviceGray /BitsPerComponent 8",
        )
    )
    image = len(objects)
    kids: list[int] = []
    for spec in pages:
        page = spec if isinstance(spec, Page) else Page(lines=tuple(spec))
        objects.append(_stream(_content(page)))
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> /XObject << /Im1 %d 0 R >> >> "
            b"/Contents %d 0 R >>" % (font, image, content)
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % kid for kid in kids),
        len(kids),
    )
    info_ref = None
    if info:
        entries = b" ".join(
            b"/%s %s" % (key.encode(), _literal(value)) for key, value in info.items()
        )
        objects.append(b"<< " + entries + b" >>")
        info_ref = len(objects)
    return _serialise(objects, info_ref)


def encrypt_pdf(data: bytes, user_password: str, owner_password: str | None = None) -> bytes:
    """The same PDF encrypted (RC4-128) so that `user_password` opens it."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _content(page: Page) -> bytes:
    """The page's drawing operators: the image, then the text lines 14 points apart."""
    ops: list[bytes] = []
    if page.image:
        ops.append(b"q 300 0 0 300 150 300 cm /Im1 Do Q")
    if page.lines:
        ops.append(b"BT /F1 11 Tf 14 TL 72 740 Td")
        ops.extend(_literal(line) + b" Tj T*" for line in page.lines)
        ops.append(b"ET")
    return b"\n".join(ops)


def _literal(text: str) -> bytes:
    """A PDF literal string in WinAnsi encoding."""
    raw = text.encode("cp1252")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _stream(data: bytes, entries: bytes = b"") -> bytes:
    """A stream object body."""
    return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (entries, len(data), data)


def _serialise(objects: list[bytes], info_ref: int | None) -> bytes:
    """Header, numbered objects, cross-reference table and trailer."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    info = b" /Info %d 0 R" % info_ref if info_ref else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info,
        xref,
    )
    return bytes(out)
