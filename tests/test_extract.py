"""services/extract.py: text out of PDF, DOCX, HTML, Markdown and plain text, built here with known
content; and every bad upload refused with the right error, in bounded time and memory."""

from __future__ import annotations

import io
import random
import re
import time
import tracemalloc
import zipfile

import docx
import pypdf
import pytest
from fpdf import FPDF

from mlops_backend.services.extract import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    DocumentError,
    DocumentTooLarge,
    Extracted,
    Limits,
    UnreadableDocument,
    UnsupportedType,
    extract,
)

PAGES = [
    ["Quarterly report", "Revenue grew by 12% (from 1.2M to 1.35M).", "Caf\u00e9 sales were flat."],
    ["Page two begins here", "Second line: alpha, beta; gamma.", "Third line [bracketed] end"],
    ["Final page", "The last words are these."],
]


def lines(text: str) -> list[str]:
    """The non-blank lines of `text`, each with its whitespace collapsed: words and order stay exact."""
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def make_pdf(pages: list[list[str]]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for page in pages:
        pdf.add_page()
        for line in page:
            pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Project plan", level=1)
    paragraph = document.add_paragraph("The first paragraph has ")
    paragraph.add_run("bold").bold = True
    paragraph.add_run(" and ")
    paragraph.add_run("italic").italic = True
    paragraph.add_run(" words.")
    table = document.add_table(rows=3, cols=3)
    for row, values in zip(table.rows, [("Region", "Sales", "Trend"), ("North", "120", "up"), ("South", "", "")]):
        for cell, value in zip(row.cells, values):
            cell.text = value
    merged = table.cell(2, 1).merge(table.cell(2, 2))
    merged.text = "no figures yet"
    document.add_paragraph("A closing paragraph after the table.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return out.getvalue()


def many_pages(pages: int = 100_000, per_node: int = 1000, count: int | None = None) -> bytes:
    """A PDF of `pages` blank pages under intermediate /Pages nodes, built by hand with a correct xref;
    the root's /Count says `count` if given (a lie), else the truth."""
    nodes, first_page = pages // per_node, 3 + pages // per_node
    kids = b" ".join(b"%d 0 R" % (3 + n) for n in range(nodes))
    objects = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Count %d/Kids[%s]>>" % (count or pages, kids)]
    for n in range(nodes):
        kids = b" ".join(b"%d 0 R" % (first_page + n * per_node + k) for k in range(per_node))
        objects.append(b"<</Type/Pages/Parent 2 0 R/Count %d/Kids[%s]>>" % (per_node, kids))
    objects += [b"<</Type/Page/Parent %d 0 R/MediaBox[0 0 612 792]>>" % (3 + n // per_node) for n in range(pages)]
    out, offsets = io.BytesIO(b"%PDF-1.4\n"), []
    out.seek(0, io.SEEK_END)
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def refusal(data: bytes, filename: str, declared: str | None = None, traced: bool = True):
    """The error extract raises, its time in seconds and (in a second, traced run) its peak memory."""
    started = time.perf_counter()
    with pytest.raises(DocumentError) as caught:
        extract(data, filename, declared)
    elapsed = time.perf_counter() - started
    if not traced:  # tracemalloc makes pypdf several times slower
        return caught.value, elapsed, 0
    tracemalloc.start()
    try:
        with pytest.raises(DocumentError):
            extract(data, filename, declared)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return caught.value, elapsed, peak


@pytest.fixture(scope="module")
def pdf_bytes() -> bytes:
    return make_pdf(PAGES)


@pytest.fixture(scope="module")
def docx_bytes() -> bytes:
    return make_docx()


# --- what comes back -------------------------------------------------------------------------------------------------

def test_a_pdf_comes_back_page_by_page_word_for_word(pdf_bytes):
    result = extract(pdf_bytes, "report.pdf", "application/pdf")
    assert (result.media_type, result.pages) == (PDF, 3)
    assert [lines(page) for page in result.text.split("\f")] == PAGES


def test_a_pdf_is_known_by_its_bytes_when_nothing_is_declared(pdf_bytes):
    result = extract(pdf_bytes, "upload", "application/octet-stream")
    assert result.media_type == PDF and lines(result.text.split("\f")[2]) == PAGES[2]


def test_a_docx_gives_paragraphs_and_table_rows_in_document_order(docx_bytes):
    result = extract(docx_bytes, "plan.docx", DOCX)
    assert (result.media_type, result.pages) == (DOCX, None)
    assert result.text.split("\n") == [
        "Project plan",
        "The first paragraph has bold and italic words.",
        "Region\tSales\tTrend",
        "North\t120\tup",
        "South\tno figures yet",  # the merged cell once, not once per column
        "A closing paragraph after the table.",
    ]


def test_html_keeps_visible_text_and_its_blocks_and_drops_script_and_style():
    page = """<!DOCTYPE html><html><head><title>Release notes</title>
      <style>p { color: red }</style><script>document.write("<p>not text</p>")</script></head>
      <body><!-- a comment --><div class="outer"><div><h1>Version 2</h1>
      <p>Fixed   the <b>login</b>
         bug &amp; the <a href="#">export</a>.</p></div>
      <ul><li>one</li><li>two <span>and a half</span></li></ul></div>
      <table><tr><th>Name</th><th>Value</th></tr><tr><td>size</td><td>42</td></tr></table>
      <noscript>Enable JavaScript</noscript><p>Last<br>line</p></body></html>"""
    result = extract(page.encode(), "notes.html", "text/html; charset=utf-8")
    assert result.media_type == HTML
    assert result.text.split("\n") == ["Release notes", "Version 2", "Fixed the login bug & the export.", "one",
                                       "two and a half", "Name\tValue", "size\t42", "Last", "line"]


def test_markdown_comes_back_as_written_with_newlines_normalised():
    source = "# Title\r\n\r\nSome *emphasis* and `code`.\r\n- item\rlast"
    result = extract(source.encode(), "README.md", None)
    assert result == Extracted("# Title\n\nSome *emphasis* and `code`.\n- item\nlast", MARKDOWN, None)


def test_text_plain_for_a_markdown_name_is_markdown_and_a_bom_is_dropped():
    assert extract(b"\xef\xbb\xbfcaf\xc3\xa9 au lait", "notes.md", "text/plain") == Extracted(
        "caf\u00e9 au lait", MARKDOWN, None)
    assert extract("na\u00efve\r\ntext".encode("utf-16"), "a.txt", None).text == "na\u00efve\ntext"


# --- refused: the wrong type ----------------------------------------------------------------------------------------

def test_pdf_bytes_declared_as_html_or_named_docx_are_unsupported(pdf_bytes):
    with pytest.raises(UnsupportedType, match="is a PDF but was sent as HTML"):
        extract(pdf_bytes, "page", "text/html")
    with pytest.raises(UnsupportedType, match="is a PDF but was sent as a DOCX"):
        extract(pdf_bytes, "letter.docx", None)
    with pytest.raises(UnsupportedType, match="Content-Type says a PDF but the name 'a.docx' says a DOCX"):
        extract(pdf_bytes, "a.docx", "application/pdf")


def test_an_image_or_an_unknown_type_is_unsupported():
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    with pytest.raises(UnsupportedType, match="'image/png' is not supported"):
        extract(png, "photo.png", "image/png")
    with pytest.raises(UnsupportedType, match="is a PNG image"):
        extract(png, "notes.txt", "text/plain")
    with pytest.raises(UnsupportedType, match=r"\*\.xls are not supported"):
        extract(b"a,b\n", "sheet.xls", None)
    with pytest.raises(UnsupportedType, match="binary data, not text"):
        extract(b"abc\x00def", "x.txt", None)


def test_a_zip_that_is_not_a_docx_is_unsupported(docx_bytes):
    with pytest.raises(UnsupportedType, match="a ZIP archive, not a DOCX"):
        extract(zip_of({"hello.txt": b"hello"}), "archive.docx", None)
    sheet = zip_of({"[Content_Types].xml": b'<Types><Override ContentType="application/vnd.openxmlformats-'
                                           b'officedocument.spreadsheetml.sheet.main+xml"/></Types>'})
    with pytest.raises(UnsupportedType, match="an Office file but not a Word document"):
        extract(sheet, "book.docx", DOCX)
    with pytest.raises(UnsupportedType, match="is a ZIP archive but was sent as plain text"):
        extract(docx_bytes, "plan.txt", None)


# --- refused: unreadable --------------------------------------------------------------------------------------------

def test_an_encrypted_pdf_is_unreadable(pdf_bytes):
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf_bytes)))
    writer.encrypt("secret", algorithm="AES-256")  # AES: RC4 would go through a deprecated cryptography API
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(UnreadableDocument, match="encrypted"):
        extract(out.getvalue(), "secret.pdf", PDF)


@pytest.mark.parametrize("damage", ["truncated", "garbage after the header", "no startxref"])
def test_a_damaged_pdf_is_unreadable(pdf_bytes, damage):
    data = {"truncated": pdf_bytes[: len(pdf_bytes) // 2],
            "garbage after the header": b"%PDF-1.7\n" + random.Random(14).randbytes(4096),
            "no startxref": pdf_bytes.replace(b"startxref", b"startxxxx")}[damage]
    with pytest.raises(UnreadableDocument, match="the PDF is damaged and cannot be read"):
        extract(data, "broken.pdf", PDF)


def test_random_bytes_named_pdf_and_text_named_docx_are_unreadable():
    with pytest.raises(UnreadableDocument, match="not a valid PDF"):
        extract(b"\x01" + random.Random(1).randbytes(2048), "scan.pdf", None)
    with pytest.raises(UnreadableDocument, match="not a valid DOCX: a DOCX is a ZIP archive"):
        extract(b"Dear reader, this is text.", "letter.docx", DOCX)


def test_a_docx_without_its_document_part_is_unreadable(docx_bytes):
    with zipfile.ZipFile(io.BytesIO(docx_bytes)) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != "word/document.xml"}
    with pytest.raises(UnreadableDocument, match="no word/document.xml"):
        extract(zip_of(members), "plan.docx", None)


def test_text_that_is_not_utf8_is_unreadable_and_says_where():
    with pytest.raises(UnreadableDocument, match=r"not valid UTF-8 \(at byte offset 3\)"):
        extract("caf\u00e9".encode("latin-1"), "menu.txt", "text/plain")


def test_an_empty_document_is_unreadable():
    with pytest.raises(UnreadableDocument, match="contains no text"):
        extract(b" \n\n", "empty.txt", None)
    with pytest.raises(UnreadableDocument, match="contains no text"):
        extract(b"<html><script>x()</script></html>", "page.html", None)


# --- refused: too large, before the work it would cost ---------------------------------------------------------------

def test_a_100000_page_pdf_is_refused_fast_and_in_bounded_memory():
    data = many_pages()
    error, elapsed, peak = refusal(data, "huge.pdf", PDF)
    assert isinstance(error, DocumentTooLarge) and "100,000 pages" in error.message
    assert elapsed < 2.0, elapsed  # about 0.8 s: pypdf checks each of the 100,101 objects' headers on opening
    assert peak < 64 << 20, peak  # about 34 MiB for the 10 MB file, none of it per page


def test_a_pdf_whose_page_count_lies_is_still_refused_without_walking_every_page():
    error, elapsed, _ = refusal(many_pages(count=3), "liar.pdf", PDF, traced=False)
    assert isinstance(error, DocumentTooLarge) and "more than 2,000 pages" in error.message
    assert elapsed < 2.0, elapsed  # the walk stops after 2 * max_pages + 1 entries


def test_pages_objects_chars_and_bytes_have_limits(pdf_bytes):
    with pytest.raises(DocumentTooLarge, match="the PDF has 3 pages; at most 2"):
        extract(pdf_bytes, "report.pdf", None, Limits(max_pages=2))
    with pytest.raises(DocumentTooLarge, match="more than 5 objects"):
        extract(pdf_bytes, "report.pdf", None, Limits(max_objects=5))
    with pytest.raises(DocumentTooLarge, match="more than 100 characters"):
        extract(pdf_bytes, "report.pdf", None, Limits(max_chars=100))
    with pytest.raises(DocumentTooLarge, match="more than 10 characters"):
        extract(b"<p>" + b"word " * 20 + b"</p>", "page.html", None, Limits(max_chars=10))
    with pytest.raises(DocumentTooLarge, match="at most 1,000 are accepted"):
        extract(b"x" * 1001, "a.txt", None, Limits(max_bytes=1000))
    assert extract(b"x" * 1000, "a.txt", None, Limits(max_bytes=1000, max_chars=1000)).text == "x" * 1000


def test_the_time_limit_stops_a_pdf_between_pages(pdf_bytes):
    with pytest.raises(DocumentTooLarge, match=r"took longer than -1 s \(page 1 of 3\)"):
        extract(pdf_bytes, "report.pdf", None, Limits(max_seconds=-1))


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """A DOCX-named zip whose one member inflates to 1 GiB of zeros, written in 1 MiB chunks (about 1 MB)."""
    out, chunk = io.BytesIO(), bytes(1 << 20)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(1024):
                member.write(chunk)
    return out.getvalue()


def test_a_zip_bomb_is_refused_before_anything_is_decompressed(zip_bomb):
    assert len(zip_bomb) < 2 << 20
    error, elapsed, peak = refusal(zip_bomb, "bomb.docx", DOCX)
    assert isinstance(error, DocumentTooLarge) and "unpacks to more than 104,857,600 bytes" in error.message
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)  # about 2 ms and 30 KiB


def test_a_highly_compressed_part_under_the_total_is_refused_by_its_ratio():
    members = {"[Content_Types].xml": b"<Types/>", "word/media/blank.bin": bytes(50 << 20)}
    error, _, peak = refusal(zip_of(members), "ratio.docx", None)
    assert isinstance(error, DocumentTooLarge) and re.search(r"compressed [\d,]+:1", error.message), error.message
    assert "possible zip bomb" in error.message and peak < 1 << 20
    with pytest.raises(DocumentTooLarge, match="larger than 1,000 bytes"):
        extract(make_docx(), "plan.docx", None, Limits(max_xml=1000))
