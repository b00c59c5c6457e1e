"""Raw page text to clean text: NFKC, words rejoined across line breaks, repeating headers and
footers removed, whitespace normalised."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from itertools import islice

#: A line break: PDFium ends lines with CRLF; a lone CR or LF counts too.
_BREAK = r"(?:\r\n?|\n)"
#: PDFium replaces a hyphen that ends a line, and the break, with U+FFFE (some builds: U+0002).
#: A pattern for each mark, so that each starts with one character and is found by a fast scan
#: for it: one pattern for both, starting with the set, was tried at every character (on a
#: typeset page with hyphenated words: 11 us against 1 us).
_PDFIUM_HYPHENS = {mark: re.compile(f"{mark}{_BREAK}?") for mark in ("\ufffe", "\x02")}
#: For each hyphen, the hyphen, a line break and a letter: a word split across lines when a
#: letter comes before the hyphen too (checked by _join_split_word, not by a look-behind: a
#: pattern that starts with one is tried at every character). A pattern for each hyphen, for the
#: same reason as above: one for all three was tried at every character (13 us a page, against 2).
_SPLIT_WORDS = {
    hyphen: re.compile(rf"{hyphen}[ \t]*{_BREAK}[ \t]*(?=[^\W\d_])")
    for hyphen in ("-", "\u00ad", "\u2010")
}
#: Characters that carry nothing a reader sees (soft hyphens, zero-width spaces, BOMs).
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
#: Blanks within a line (whitespace but the line breaks CR and LF) and control characters, each
#: to a space. (Every control character, U+0000-U+001F and U+007F-U+009F, and every other code
#: point that str.isspace() calls whitespace; tests/unit/test_text_cleaning.py checks the list.)
#: What str.splitlines() takes for a line break besides CR and LF is among them. In ASCII text
#: str.translate maps them in one pass (9 us a page, against 24 us for a pattern); in other text
#: it looks every character up in the table, and a pattern is the faster (13 us against 220): one
#: that also finds the invisible characters, to remove them in the same pass.
_TO_SPACE = dict.fromkeys(
    [
        *range(0x00, 0x20),
        *range(0x7F, 0xA1),
        0x1680,
        *range(0x2000, 0x200B),
        *(0x2028, 0x2029, 0x202F, 0x205F, 0x3000),
    ],
    " ",
)
del _TO_SPACE[ord("\n")], _TO_SPACE[ord("\r")]
_BLANK_OR_INVISIBLE = re.compile(f"[{re.escape(''.join(map(chr, _TO_SPACE)) + _INVISIBLE)}]")
#: Two spaces or more (a literal prefix, found by a fast scan).
_SPACE_RUN = re.compile("  +")
_DIGITS = re.compile(r"\d+")
#: Stands for the page's own printed number in a line's shape (clean lines hold no NULs).
_PAGE_MARK = "\x00"
#: The shape of a line that is only a page number: "7", "- 7 -", "Page 7", "Page 7 of 12", "7/12".
_PAGE_NUMBER = re.compile(r"[^\w\x00]*(?:page\s*)?\x00(?:\s*(?:of|/)\s*(?:\d+|\x00))?[^\w\x00]*")

#: How many lines at the top and at the bottom of a page may be a header or a footer.
EDGE_LINES = 3
#: Numbers taken from the start of an edge line when looking for the printed page number.
_NUMBERS_PER_LINE = 4
#: Fewest pages a header, footer or page numbering must be seen on (in a row, or in all).
MIN_RUN = 3


def clean_lines(raw: str) -> list[str]:
    """The lines of one page's raw text, cleaned, without blank ones at the ends or in runs."""
    text = unicodedata.normalize("NFKC", raw)
    for mark, pattern in _PDFIUM_HYPHENS.items():
        if mark in text:
            text = pattern.sub(_join_pdfium_hyphen, text)
    for hyphen, pattern in _SPLIT_WORDS.items():
        if hyphen in text:
            text = pattern.sub(_join_split_word, text)
    if text.isascii():
        text = text.translate(_TO_SPACE)
    else:
        text = _BLANK_OR_INVISIBLE.sub(_space_or_nothing, text)
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    lines: list[str] = []
    # Lines split at CRLF, CR or LF in one pass (replacing CRLF by LF first took 7 us a page).
    for line in text.splitlines():
        line = line.strip(" ")
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _join_pdfium_hyphen(match: re.Match[str]) -> str:
    """Join a word PDFium saw split across lines; before a capital keep the hyphen and the break."""
    following = match.string[match.end() : match.end() + 1]
    return "" if following.islower() else "-\n"


def _space_or_nothing(match: re.Match[str]) -> str:
    """A space for a blank, nothing for an invisible character."""
    return "" if match.group() in _INVISIBLE else " "


def _join_split_word(match: re.Match[str]) -> str:
    """Join a word split across lines (a letter before the hyphen), unless the next line starts
    with a capital (a name)."""
    text, start = match.string, match.start()
    before = text[start - 1] if start else ""
    is_letter = before.isalnum() and not before.isdecimal()  # [^\W\d_], as the pattern's
    return "" if is_letter and text[match.end()].islower() else match.group(0)


def remove_repeating_edges(
    pages: Sequence[list[str]], numbers: Sequence[int] | None = None
) -> list[list[str]]:
    """Drop header and footer lines from the top and bottom `EDGE_LINES` of each page.

    First the page numbering is found: the offset between the page order (`numbers`, from 1) and
    numbers printed near the edges, if one holds on enough pages. Lines are then compared
    lowercased with the page's own printed number masked, so "Page 3 of 10" and "Page 4 of 10"
    match while "Total 1,200" and "Total 950" do not. A line is a header (or footer) when it
    repeats in the same zone on more than half of the pages, or on `MIN_RUN` pages in a row (a
    chapter's running header; two in a row when it holds the page number); a line that is only
    the page number ("7", "- 7 -") goes too.
    Only pages with two lines or more take part: a one-line page is all body.
    """
    numbers = list(numbers) if numbers is not None else list(range(1, len(pages) + 1))
    eligible = [index for index, lines in enumerate(pages) if _two_lines_or_more(lines)]
    if len(eligible) < MIN_RUN:
        return [list(lines) for lines in pages]
    offset = _page_number_offset([(numbers[index], pages[index]) for index in eligible])
    shapes = {
        index: _edge_shapes(pages[index], None if offset is None else numbers[index] + offset)
        for index in eligible
    }
    headers = _repeating([_zone(pages[i], shapes[i], top=True) for i in eligible])
    footers = _repeating([_zone(pages[i], shapes[i], top=False) for i in eligible])
    cleaned = [list(lines) for lines in pages]
    for index in eligible:
        cleaned[index] = _strip_edges(pages[index], shapes[index], headers, footers)
    return cleaned


def _edge_shapes(lines: list[str], printed: int | None) -> dict[int, tuple[str, ...]]:
    """The shapes of each line in the page's top and bottom `EDGE_LINES`, by position."""
    edges = {*_zone_positions(len(lines), top=True), *_zone_positions(len(lines), top=False)}
    return {position: _shapes(lines[position], printed) for position in edges}


def _zone(lines: list[str], shapes: dict[int, tuple[str, ...]], *, top: bool) -> set[str]:
    """The shapes of the non-blank lines in the page's top (or bottom) `EDGE_LINES`."""
    return {
        shape
        for position in _zone_positions(len(lines), top=top)
        if lines[position]
        for shape in shapes[position]
    }


def _zone_positions(count: int, *, top: bool) -> range:
    """The positions of the top (or bottom) `EDGE_LINES` lines of a page of `count` lines."""
    return range(min(EDGE_LINES, count)) if top else range(max(count - EDGE_LINES, 0), count)


def _page_number_offset(pages: list[tuple[int, list[str]]]) -> int | None:
    """How the numbers printed near the edges differ from the page order, if alike on enough
    pages (at least `MIN_RUN` and a third of them); None when pages show no numbering."""
    offsets: Counter[int] = Counter()
    for number, lines in pages:
        edges = lines[:EDGE_LINES] + lines[-EDGE_LINES:]
        # The first few numbers of each line: a table there could hold hundreds.
        values = {
            int(digits) for line in edges for digits in _DIGITS.findall(line)[:_NUMBERS_PER_LINE]
        }
        offsets.update({value - number for value in values})
    if not offsets:
        return None
    offset, count = offsets.most_common(1)[0]
    return offset if count >= max(MIN_RUN, len(pages) // 3) else None


def _repeating(zones: list[set[str]]) -> set[str]:
    """Shapes found in more than half of the zones, or in `MIN_RUN` zones in a row (two when
    they hold the page number)."""
    needed = max(MIN_RUN, len(zones) // 2 + 1)
    counts: Counter[str] = Counter()
    longest: dict[str, int] = {}
    run: dict[str, int] = {}
    for shapes in zones:
        counts.update(shapes)
        run = {shape: run.get(shape, 0) + 1 for shape in shapes}
        for shape, length in run.items():
            if length > longest.get(shape, 0):
                longest[shape] = length
    return {
        shape
        for shape in counts
        if counts[shape] >= needed or longest[shape] >= (2 if _PAGE_MARK in shape else MIN_RUN)
    }


def _strip_edges(
    lines: list[str], shapes: dict[int, tuple[str, ...]], headers: set[str], footers: set[str]
) -> list[str]:
    """One page's lines without the headers, footers and its own page number in its edge zones
    (`shapes`: the edge lines' shapes by position, see `_shapes`)."""
    count = len(lines)

    def dropped(position: int) -> bool:
        shapes_there = shapes[position]
        if (position < EDGE_LINES and not headers.isdisjoint(shapes_there)) or (
            position >= count - EDGE_LINES and not footers.isdisjoint(shapes_there)
        ):
            return True
        masked = shapes_there[-1]
        return _PAGE_MARK in masked and _PAGE_NUMBER.fullmatch(masked) is not None

    # Only the edge zones are looked at: [0, body) and [tail, count).
    body = min(EDGE_LINES, count)
    tail = max(count - EDGE_LINES, body)
    kept = [lines[position] for position in range(body) if not dropped(position)]
    kept += lines[body:tail]
    kept += [lines[position] for position in range(tail, count) if not dropped(position)]
    while kept and not kept[0]:
        kept.pop(0)
    while kept and not kept[-1]:
        kept.pop()
    return kept


def _two_lines_or_more(lines: list[str]) -> bool:
    """True when at least two of `lines` are not blank (looking no further than the second)."""
    return len(list(islice(filter(None, lines), 2))) == 2


def _shapes(line: str, printed: int | None) -> tuple[str, ...]:
    """A line as compared across pages: lowercase; and when it holds the page's printed number,
    also with that number masked, last. Both count: "Page 3 of 10" repeats masked, while
    "Review 1" on every page repeats as it is, also on page 1, where 1 is the page number."""
    lowered = line.lower()
    # A run of digits worth `printed` (leading zeros or not) holds its decimal text.
    if printed is None or str(printed) not in lowered:
        return (lowered,)
    masked = _DIGITS.sub(lambda m: _PAGE_MARK if int(m.group()) == printed else m.group(), lowered)
    return (lowered, masked) if masked != lowered else (lowered,)


def page_text(lines: Sequence[str]) -> str:
    """A page's clean lines as one text."""
    return "\n".join(lines)
