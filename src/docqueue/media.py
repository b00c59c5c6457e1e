"""Media types told from a file's first bytes, so that a client's label is never trusted alone."""

from __future__ import annotations

PDF = "application/pdf"
#: How many leading bytes to read before calling `sniff_media_type`.
SNIFF_BYTES = 1024
_PDF_MAGIC = b"%PDF-"


def sniff_media_type(head: bytes) -> str | None:
    """The media type told by a file's first bytes, for the types docqueue reads; else None.

    A PDF may carry up to 1024 bytes of junk before its `%PDF-` header (readers accept that), so the
    magic is looked for anywhere in the first `SNIFF_BYTES` bytes.
    """
    if _PDF_MAGIC in head[:SNIFF_BYTES]:
        return PDF
    return None
