"""Turn one uploaded document (PDF, DOCX, plain text, Markdown, HTML) into plain text (issue 14).

The type is read from the bytes and must agree with the declared Content-Type and the filename's
extension. Every bound in `Limits` is checked before the work it guards: the page count before
any page is parsed, zip members' declared sizes before anything is decompressed. No Flask here:
the blueprint maps UnsupportedType, UnreadableDocument and DocumentTooLarge to 415, 422 and 413.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import time
import zipfile
import zlib

import docx
import pypdf
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from lxml import etree
from pypdf.errors import LimitReachedError, PyPdfError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PLAIN, MARKDOWN, HTML = "text/plain", "text/markdown", "text/html"
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one document may cost; the defaults suit a 2 GB worker."""

    max_bytes: int = 50 * MIB  # the upload itself
    max_pages: int = 2000
    max_objects: int = 200_000  # PDF: pypdf reads each object's header on opening, ~8 us apiece
    max_chars: int = 5_000_000  # of extracted text
    max_uncompressed: int = 100 * MIB  # DOCX: all zip members together, as their headers declare
    max_ratio: int = 200  # DOCX: one member's uncompressed / compressed size ...
    ratio_floor: int = MIB  # ... once it is larger than this (small XML parts compress well)
    max_xml: int = 32 * MIB  # DOCX: one XML part, since lxml holds several times its size
    max_members: int = 10_000  # DOCX: zip entries, each costing a ZipInfo before any check
    max_seconds: float = 30.0  # wall time, checked between PDF pages, DOCX blocks, HTML chunks


@dataclasses.dataclass(frozen=True)
class Extracted:
    """A document's text; a PDF's pages are separated by a form feed, as pdftotext does."""

    text: str
    media_type: str
    pages: int | None = None


class DocumentError(Exception):
    """A document the service refuses; `message` is written for the API user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UnsupportedType(DocumentError):
    """Not a type we read, or not the type its Content-Type or name claims (415)."""


class UnreadableDocument(DocumentError):
    """A supported type that cannot be read: encrypted, damaged, not UTF-8, no text (422)."""


class DocumentTooLarge(DocumentError):
    """Over one of the Limits (413)."""


_DECLARED = {"application/pdf": PDF, "application/x-pdf": PDF, DOCX: DOCX, PLAIN: PLAIN,
             MARKDOWN: MARKDOWN, "text/x-markdown": MARKDOWN, HTML: HTML, "application/xhtml+xml": HTML}
_UNSPECIFIC = {"", "application/octet-stream", "binary/octet-stream"}  # what curl -F and browsers send
_EXTENSIONS = {".pdf": PDF, ".docx": DOCX, ".txt": PLAIN, ".text": PLAIN, ".md": MARKDOWN,
               ".markdown": MARKDOWN, ".html": HTML, ".htm": HTML, ".xhtml": HTML}
_NAMES = {PDF: "a PDF", DOCX: "a DOCX", PLAIN: "plain text", MARKDOWN: "Markdown", HTML: "HTML",
          "zip": "a ZIP archive"}
_ACCEPTED = "PDF, DOCX, plain text (.txt), Markdown (.md) or HTML (.html)"
_BINARY = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF87a", "a GIF image"),
           (b"GIF89a", "a GIF image"), (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
           (b"Rar!\x1a\x07", "a RAR archive"), (b"\x7fELF", "an executable"), (b"{\\rtf", "an RTF document"),
           (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc, .xls)"))
# What pypdf raises on malformed files besides its own errors (found by fuzzers over the years).
_PDF_FAILURES = (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError,
                 RecursionError, OverflowError, ZeroDivisionError, struct.error, zlib.error)
_DOCX_FAILURES = (zipfile.BadZipFile, PackageNotFoundError, etree.LxmlError, KeyError, ValueError, TypeError,
                  AttributeError, IndexError, NotImplementedError, EOFError, zlib.error)


def extract(data: bytes, filename: str, declared_type: str | None, limits: Limits = Limits()) -> Extracted:
    """Return the text of one uploaded document, or raise the DocumentError that says why not."""
    if len(data) > limits.max_bytes:
        raise DocumentTooLarge(f"the file is {len(data):,} bytes; at most {limits.max_bytes:,} are accepted")
    media_type = detect(data, filename, declared_type)
    budget = _Budget(limits)
    pages = None
    if media_type == PDF:
        text, pages = _pdf_text(data, limits, budget)
    elif media_type == DOCX:
        text = _docx_text(data, limits, budget)
    else:
        decoded = _decode(data)
        text = budget.add(_html_text(decoded, budget) if media_type == HTML else decoded)
    if not text.strip():
        hint = " (a scanned PDF? text in images is not read)" if media_type == PDF else ""
        raise UnreadableDocument(f"the document contains no text{hint}")
    return Extracted(text, media_type, pages)


def detect(data: bytes, filename: str, declared_type: str | None) -> str:
    """Return the media type the bytes are, refusing one that contradicts the declared type or name."""
    claimed = _claim(filename, declared_type)
    head = data[:1024].lstrip()
    found = PDF if head.startswith(b"%PDF-") else "zip" if data.startswith((b"PK\x03\x04", b"PK\x05\x06")) else None
    if found:
        if claimed not in (None, PDF if found == PDF else DOCX):
            raise UnsupportedType(f"the file is {_NAMES[found]} but was sent as {_NAMES[claimed]}")
        return PDF if found == PDF else DOCX  # a ZIP that is not a DOCX is refused when it is opened
    for magic, name in _BINARY:
        if data.startswith(magic):
            raise UnsupportedType(f"the file is {name}; send {_ACCEPTED}")
    if claimed == PDF:
        raise UnreadableDocument("the file is not a valid PDF: it does not start with %PDF-")
    if claimed == DOCX:
        raise UnreadableDocument("the file is not a valid DOCX: a DOCX is a ZIP archive and this is not one")
    return claimed or PLAIN


def _claim(filename: str, declared_type: str | None) -> str | None:
    """Return the type the Content-Type and the extension claim together, or None if neither does."""
    declared = (declared_type or "").split(";")[0].strip().lower()
    if declared not in _UNSPECIFIC and declared not in _DECLARED:
        raise UnsupportedType(f"the Content-Type {declared!r} is not supported; send {_ACCEPTED}")
    by_type = _DECLARED.get(declared)
    base = re.split(r"[/\\]", filename or "")[-1]
    stem, dot, suffix = base.rpartition(".")
    extension = f".{suffix.lower()}" if dot and stem else ""
    by_name = _EXTENSIONS.get(extension)
    if extension and not by_name and not by_type:
        raise UnsupportedType(f"files named *{extension} are not supported; send {_ACCEPTED}")
    if by_type and by_name and by_type != by_name:
        # text/plain is the loosest claim: some clients send it for notes.md or page.html
        if PLAIN in (by_type, by_name) and {by_type, by_name} <= {PLAIN, MARKDOWN, HTML}:
            return by_name if by_type == PLAIN else by_type
        raise UnsupportedType(f"the Content-Type says {_NAMES[by_type]} but the name {base!r} says {_NAMES[by_name]}")
    return by_type or by_name


class _Budget:
    """The characters and the time one extraction has left."""

    def __init__(self, limits: Limits):
        self.limits, self.chars = limits, 0
        self.deadline = time.monotonic() + limits.max_seconds

    def add(self, text: str) -> str:
        """Count `text` against max_chars and return it."""
        self.chars += len(text)
        if self.chars > self.limits.max_chars:
            raise self.too_many_chars()
        return text

    def too_many_chars(self) -> DocumentTooLarge:
        """Return the error for text over max_chars."""
        return DocumentTooLarge(f"the document has more than {self.limits.max_chars:,} characters of text")

    def tick(self, where: str) -> None:
        """Refuse the document once max_seconds have passed."""
        if time.monotonic() > self.deadline:
            raise DocumentTooLarge(f"reading the document took longer than {self.limits.max_seconds:g} s ({where})")


def _pdf_text(data: bytes, limits: Limits, budget: _Budget) -> tuple[str, int]:
    """Return a PDF's text and page count, checking encryption and the page count first."""
    if data.count(b"endobj") > limits.max_objects:  # every object outside an object stream ends so
        raise DocumentTooLarge(f"the PDF is too complex: more than {limits.max_objects:,} objects")
    # The page tree walk stops after this many entries, so a /Count that lies costs no more.
    with pypdf.apply_configuration(page_tree_maximum_entries=2 * limits.max_pages + 1,
                                   zlib_maximum_output_length=min(75_000_000, limits.max_uncompressed)):
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                raise UnreadableDocument("the PDF is encrypted (password-protected): "
                                         "remove the protection and upload it again")
            tree = reader.root_object["/Pages"]
            count = tree["/Count"] if "/Count" in tree else 0  # noqa: SIM401 (pypdf's get() leaves it unresolved)
            if isinstance(count, int) and count > limits.max_pages:
                raise DocumentTooLarge(f"the PDF has {count:,} pages; at most {limits.max_pages:,} are accepted")
            try:
                pages = len(reader.pages)
            except LimitReachedError:
                pages = limits.max_pages + 1
            if pages > limits.max_pages:
                raise DocumentTooLarge(f"the PDF has more than {limits.max_pages:,} pages; that many are not accepted")
            texts = []
            for number, page in enumerate(reader.pages, 1):
                budget.tick(f"page {number} of {pages}")
                texts.append(budget.add(_newlines(page.extract_text())))
        except LimitReachedError as error:
            raise DocumentTooLarge(f"the PDF is over a safety limit: {error}") from None
        except _PDF_FAILURES as error:
            raise UnreadableDocument(f"the PDF is damaged and cannot be read ({_why(error)})") from None
    return "\f".join(texts), pages


def _docx_text(data: bytes, limits: Limits, budget: _Budget) -> str:
    """Return a DOCX's paragraphs and tables in document order, after checking every zip member."""
    # Each central-directory entry becomes a ZipInfo when the zip is opened: count them first.
    if data.count(b"PK\x01\x02") > limits.max_members:
        raise DocumentTooLarge(f"the DOCX has more than {limits.max_members:,} parts")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_members(archive.infolist(), limits)
            names = set(archive.namelist())
            content_types = archive.read("[Content_Types].xml") if "[Content_Types].xml" in names else b""
    except zipfile.BadZipFile as error:
        raise UnreadableDocument(f"the DOCX is not a readable ZIP archive ({error})") from None
    if b"wordprocessingml.document.main+xml" not in content_types:
        what = "an Office file but not a Word document" if content_types else "a ZIP archive, not a DOCX"
        raise UnsupportedType(f"the file is {what}; send {_ACCEPTED}")
    if not any(re.fullmatch(r"word/document\d*\.xml", name) for name in names):  # Word names some document2.xml
        raise UnreadableDocument("the DOCX is damaged: it has no word/document.xml")
    try:
        # zipfile stops at each member's declared size and checks its CRC, so the sizes above hold.
        document = docx.Document(io.BytesIO(data))
        lines = list(_blocks(document, budget))
    except _DOCX_FAILURES as error:
        raise UnreadableDocument(f"the DOCX is damaged and cannot be read ({_why(error)})") from None
    return "\n".join(lines)


def _check_members(members: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Refuse a zip bomb from the sizes its headers declare, before decompressing anything."""
    total = 0
    for member in members:
        total += member.file_size
        if total > limits.max_uncompressed:
            raise DocumentTooLarge(f"the DOCX unpacks to more than {limits.max_uncompressed:,} bytes")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > limits.ratio_floor and ratio > limits.max_ratio:
            raise DocumentTooLarge(f"the DOCX part {member.filename!r} is compressed {ratio:,.0f}:1 "
                                   f"(at most {limits.max_ratio}:1): refused as a possible zip bomb")
        if member.filename.endswith((".xml", ".rels")) and member.file_size > limits.max_xml:
            raise DocumentTooLarge(f"the DOCX part {member.filename!r} is larger than {limits.max_xml:,} bytes")


def _blocks(container, budget: _Budget):
    """Yield a paragraph's text, or a table row's cells joined by tabs, for each block in order."""
    for block in container.iter_inner_content():
        budget.tick("DOCX")
        if not isinstance(block, Table):
            yield budget.add(block.text)
            continue
        for row in block.rows:
            cells = row.cells
            # A horizontally merged cell is the same object once per grid column: keep it once. A
            # vertically merged one is a new object per row, so its text is repeated on each row.
            unique = [cell for index, cell in enumerate(cells) if not index or cell is not cells[index - 1]]
            yield "\t".join(" ".join(t for t in _blocks(cell, budget) if t.strip()) for cell in unique).rstrip("\t")


def _decode(data: bytes) -> str:
    """Return text as UTF-8 (with or without a BOM) or BOM-marked UTF-16, newlines normalised."""
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    try:
        text = data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableDocument(f"the text is not valid {'UTF-16' if utf16 else 'UTF-8'} "
                                 f"(at byte offset {error.start:,}); save it as UTF-8 and upload it again") from None
    if "\x00" in text:
        raise UnsupportedType(f"the file contains NUL characters: it is binary data, not text; send {_ACCEPTED}")
    return _newlines(text)


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _why(error: Exception) -> str:
    return str(error) or type(error).__name__


_HIDDEN = frozenset({"script", "style", "template", "noscript"})
_BLOCK = frozenset({"address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "div",
                    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
                    "h6", "header", "hr", "html", "legend", "li", "main", "nav", "ol", "p", "pre", "section",
                    "summary", "table", "tbody", "tfoot", "thead", "title", "tr", "ul"})
# Markers for our own line and cell breaks, told apart from the page's whitespace until the page's is
# collapsed: NUL cannot occur, as _decode refuses it.
_LINE, _CELL = "\x00n", "\x00t"


class _HTMLText:
    """Collect the visible text of HTML as an lxml parser target: no tree is built, so memory stays
    proportional to the text; each callback only appends, as there is one per tag and text run."""

    def __init__(self):
        self.out, self.hidden, self.pre, self.chars = [], 0, 0, 0

    def start(self, tag, attrib):
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCK:
            self.pre += tag == "pre"
            self.out.append(_LINE)

    def end(self, tag):
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in ("td", "th"):
            self.out.append(_CELL)
        elif tag in _BLOCK:
            self.pre = max(0, self.pre - (tag == "pre"))
            self.out.append(_LINE)

    def data(self, data):
        if not self.hidden:
            self.chars += len(data)
            self.out.append(data.replace("\n", _LINE) if self.pre else data)

    def close(self) -> str:
        text = re.sub(r"\s+", " ", "".join(self.out))
        text = re.sub(r" ?\x00t ?", "\t", re.sub(r" ?\x00n ?", "\n", text))
        lines = (line.strip(" ").rstrip("\t") for line in text.split("\n"))
        return "\n".join(line for line in lines if line)


def _html_text(text: str, budget: _Budget, chunk: int = 1 << 16) -> str:
    """Return the visible text of an HTML document, one block a line, cells split by tabs."""
    # libxml2's parser, not html.parser: CPython 3.11.7's takes minutes on some hostile inputs.
    target = _HTMLText()
    parser = etree.HTMLParser(target=target, no_network=True, remove_comments=True, remove_pis=True)
    try:
        for start in range(0, len(text), chunk):
            budget.tick("HTML")
            if target.chars > budget.limits.max_chars:  # before the pieces cost more memory
                raise budget.too_many_chars()
            parser.feed(text[start:start + chunk])
        return parser.close()
    except etree.LxmlError as error:
        raise UnreadableDocument(f"the HTML cannot be read ({error})") from None
