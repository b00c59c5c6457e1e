"""The pure parts of `ingest`: cleaning page text, chunking, PDF dates and page selections."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from docqueue.errors import InputError
from docqueue.processors.chunking import chunk_text, join_pages
from docqueue.processors.cleaning import _TO_SPACE, clean_lines, remove_repeating_edges
from docqueue.processors.pdf import parse_page_ranges, parse_pdf_date, select_pages


def test_clean_lines_normalises_what_pdfium_gives() -> None:
    raw = (
        "Hello  world\r\n"
        "a docu\ufffement and New\ufffeYork\r\n"  # PDFium's mark for a hyphen that ended a line
        "an ex-\r\n  ample of\tthings\x00\r\n"
        "\r\n\r\n\r\n"
        "\ufb01ne soft\u00adhyphen \u2460\r\n\r\n"
    )
    assert clean_lines(raw) == [
        "Hello world",
        "a document and New-",
        "York",
        "an example of things",
        "",
        "fine softhyphen 1",
    ]


def test_every_blank_and_control_character_becomes_one_space() -> None:
    def blank(char: str) -> bool:
        return (char.isspace() and char != "\n") or unicodedata.category(char) == "Cc"

    # Line breaks (LF, CR) and the space itself are left to the split into lines.
    expected = {code for code in range(sys.maxunicode + 1) if blank(chr(code))} - {10, 13, 32}
    assert set(_TO_SPACE) == expected
    assert clean_lines("a\x01\x85b \u3000 c\u2028d\t\t e\x0b") == ["a b c d e"]
    # ASCII text and other text take different ways to the spaces: each is checked. (U+0002 is
    # one of PDFium's hyphen marks, taken before.)
    for code in _TO_SPACE.keys() - {0x02}:
        assert clean_lines(f"a{chr(code)}b") == ["a b"], hex(code)
        assert clean_lines(f"a{chr(code)}b \u00e9") == ["a b \u00e9"], hex(code)
    # Characters a reader cannot see go, in the same pass as the blanks.
    for invisible in "\u00ad\u200b\u200c\u200d\u2060\ufeff":
        assert clean_lines(f"a{invisible}b\tc \u00e9") == ["ab c \u00e9"], repr(invisible)


def test_a_hyphen_before_a_number_or_capital_stays() -> None:
    assert clean_lines("pages 10-\n12 and Jean-\nPaul") == ["pages 10-", "12 and Jean-", "Paul"]
    # A hyphen after a digit (or at the very start) is no split word, whatever follows.
    assert clean_lines("route 66-\nbis") == ["route 66-", "bis"]
    assert clean_lines("-\nbis") == ["-", "bis"]


def test_words_split_across_lines_join_alike_in_ascii_and_other_text() -> None:
    assert clean_lines("an ex-\n  ample, a dou-\t\nble") == ["an example, a double"]
    # Each hyphen is looked for on its own: each joins, and a name after it keeps it.
    for hyphen in ("-", "\u00ad", "\u2010"):
        assert clean_lines(f"an ex{hyphen}\nample \u00e9") == ["an example \u00e9"], repr(hyphen)
        kept = "" if hyphen == "\u00ad" else hyphen  # a soft hyphen is invisible: it goes
        assert clean_lines(f"Jean{hyphen}\nPaul") == [f"Jean{kept}", "Paul"], repr(hyphen)
    assert clean_lines("an ex-\n  ample, a dou-\t\nble \u00e9") == ["an example, a double \u00e9"]
    assert clean_lines("a soft ex\u00ad\nample") == ["a soft example"]


def test_every_kind_of_line_break_splits_lines_and_joins_split_words() -> None:
    # PDFium ends lines with CRLF; other producers with LF or a lone CR. Both searches for split
    # words, and PDFium's hyphen mark, take each.
    for newline in ("\r\n", "\r", "\n"):
        text = f"an ex-{newline}ample,{newline}a dou-{newline}ble"
        assert clean_lines(text) == ["an example,", "a double"], repr(newline)
        assert clean_lines(f"{text} \u00e9") == ["an example,", "a double \u00e9"], repr(newline)
        assert clean_lines(f"a docu\ufffe{newline}ment") == ["a document"], repr(newline)
        # Some PDFium builds mark the hyphen with U+0002; a page may hold both marks.
        both = f"a docu\x02{newline}ment, New\ufffeYork"
        assert clean_lines(both) == ["a document, New-", "York"], repr(newline)


def test_page_numbers_in_many_shapes_are_footers() -> None:
    pages = [["Report", f"body line {word}", f"- {n} -"] for n, word in enumerate("abcdef", 1)]
    cleaned = remove_repeating_edges(pages)
    assert cleaned == [[f"body line {word}"] for word in "abcdef"]


def test_running_chapter_headers_and_offset_page_numbers_go() -> None:
    pages = []
    for n in range(1, 9):
        chapter = "Chapter 1: Basics" if n < 4 else "Chapter 2: More"
        body = [f"text {'abcdefgh'[n - 1]} one", f"text {'abcdefgh'[n - 1]} two"]
        pages.append([f"{chapter} {n + 10}", *body] if n != 4 else ["Chapter 2", *body, "14"])
    cleaned = remove_repeating_edges(pages)
    assert cleaned[3] == ["Chapter 2", "text d one", "text d two"]
    assert all(lines == pages[n][1:] for n, lines in enumerate(cleaned) if n != 3)


def test_a_header_holding_a_page_number_goes_from_that_page_too() -> None:
    # "Review 1" heads every page; on page 1 its number is also the page number (the footers
    # number the pages), and it must go there as on the others.
    pages = [
        ["Review 1 Northwind", f"text {word} one", f"text {word} two", f"Page {n} of 5"]
        for n, word in enumerate("abcde", 1)
    ]
    cleaned = remove_repeating_edges(pages)
    assert cleaned == [[f"text {word} one", f"text {word} two"] for word in "abcde"]


def test_numbers_that_are_not_page_numbers_keep_their_lines() -> None:
    amounts = ["1,200.00", "950.10", "75.00", "3,001.99"]
    pages = [
        [f"Item {amount}", f"Subtotal {amount}", f"Page {n}"] for n, amount in enumerate(amounts, 1)
    ]
    cleaned = remove_repeating_edges(pages)
    assert cleaned == [[f"Item {amount}", f"Subtotal {amount}"] for amount in amounts]


def test_a_row_of_numbers_at_the_top_hides_no_page_number_below() -> None:
    # Each edge line gives its first few numbers only: a long row cannot crowd out the page
    # number (printed 10 more than the page's place) in the footer.
    pages = [
        [" ".join(str(n * 100 + k) for k in range(30)), f"body {word} one", f"{n + 10}"]
        for n, word in enumerate("abcdef", 1)
    ]
    cleaned = remove_repeating_edges(pages)
    assert cleaned == [lines[:2] for lines in pages]


def test_a_line_on_under_half_the_pages_stays() -> None:
    pages = [["Intro", "text one"], ["Intro", "text two"], ["Other", "text 3"], ["Else", "x y"]]
    pages += [["More", "text five"]]
    assert remove_repeating_edges(pages) == pages


def test_join_pages_records_where_each_page_lies() -> None:
    text, spans = join_pages([(1, "one"), (2, ""), (3, "three")])
    assert text == "one\n\n\n\nthree"
    assert [(s.number, text[s.start : s.end]) for s in spans] == [(1, "one"), (2, ""), (3, "three")]


def test_chunks_cover_the_text_without_overlap_when_asked() -> None:
    text, spans = join_pages([(1, " ".join(f"w{n:03d}" for n in range(200)))])
    chunks = chunk_text(text, spans, size=100, overlap=0)
    assert " ".join(chunk.text for chunk in chunks) == text
    assert all(len(chunk.text) <= 100 for chunk in chunks)


def test_a_limit_ends_chunks_sooner_than_their_size() -> None:
    text, spans = join_pages([(1, " ".join(f"w{n:03d}" for n in range(200)))])
    chunks = chunk_text(text, spans, size=100, overlap=0, limit=lambda start: start + 30)
    assert " ".join(chunk.text for chunk in chunks) == text
    assert all(len(chunk.text) <= 30 for chunk in chunks)
    assert len(chunks) > len(chunk_text(text, spans, size=100, overlap=0))


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    text, spans = join_pages([(1, "x" * 250 + " tail")])
    chunks = chunk_text(text, spans, size=100, overlap=10)
    assert [len(chunk.text) for chunk in chunks][:2] == [100, 100]
    assert chunks[-1].text.endswith("tail")


def test_no_text_no_chunks() -> None:
    text, spans = join_pages([(1, ""), (2, "")])
    assert chunk_text(text, spans, size=100, overlap=10) == []


def test_chunk_overlap_must_be_less_than_size() -> None:
    with pytest.raises(ValueError, match="less than size"):
        chunk_text("text", [], size=10, overlap=10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("D:20240102030405+01'00'", "2024-01-02T03:04:05+01:00"),
        ("D:20240102030405-05'30", "2024-01-02T03:04:05-05:30"),
        ("D:20240102030405Z", "2024-01-02T03:04:05+00:00"),
        ("D:20240102030405Z00'00'", "2024-01-02T03:04:05+00:00"),
        ("D:2024", "2024-01-01T00:00:00"),
        ("20240102", "2024-01-02T00:00:00"),
        ("D:20241302", None),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_pdf_dates(value: str | None, expected: str | None) -> None:
    assert parse_pdf_date(value) == expected


def test_page_selections() -> None:
    assert parse_page_ranges("1-3, 7 ,10-") == [(1, 3), (7, 7), (10, None)]
    assert select_pages("2,1-2,5-", 6) == [0, 1, 4, 5]
    assert select_pages(None, 3) == [0, 1, 2]
    for bad in ["", "0", "3-1", "1,,2", "a-b", "-3"]:
        with pytest.raises(ValueError):
            parse_page_ranges(bad)
    with pytest.raises(InputError, match="asks for page 7, but the PDF has 6 pages"):
        select_pages("7", 6)
