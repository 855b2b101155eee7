"""Reading an HTML file: its main text, with headings h1–h6 as sections.

Why no article extractor: the well-kept ones are tuned for news pages and drop what a
document keeps. Measured on a pandoc-made book page (chapters, sub-headings, a table, a
footnote): trafilatura 2.3.1 (``favor_recall``, Markdown output) dropped every heading —
no sections at all — and pulls in about 14 packages (73 MB); readability-lxml 0.9 dropped
the table's header row, the footnote and its reference. So the page is parsed by lxml's
HTML parser (lxml is already needed for EPUB and DOCX) and boilerplate is removed by what
the markup says: when a page marks its main content (one ``<main>``, one
``role="main"``, else one ``<article>``) only that is read; ``<nav>``, the navigation,
banner, content-info and search landmarks, hidden elements, scripts, styles, images and
form controls are dropped everywhere (:mod:`homer.reading.formats.markup`). Links are kept as
their text.

The encoding: a byte-order mark, else the ``<meta charset>`` (or ``http-equiv``
Content-Type) in the first 4 KB, else UTF-8 when the bytes are valid UTF-8, else
detection (charset-normalizer, preferring cp1252 as browsers do for unlabelled pages)."""

from __future__ import annotations

import codecs
import re

from ..source_document import DocumentError, SourceDocument
from .base import SectionedText, collapse
from .markup import Walker, hidden, local, min_rank, parse_html, plain_text
from .zipsafe import WHAT_IT_IS, sniff

META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def check_html(data: bytes) -> None:
    """Refuse a file named .html that is something else (a PDF, a zip, an Office file, binary)."""
    kind = sniff(data)
    if kind in ("pdf", "zip", "ole", "ole-encrypted"):
        raise DocumentError(f"the file is {WHAT_IT_IS[kind]}, not an HTML file (wrong file extension?)")
    if b"\x00" in data[:4096] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("the file is binary, not HTML")


def declared_encoding(data: bytes) -> str | None:
    """The page's own encoding: its byte-order mark, else its meta charset (a name Python knows)."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name
    match = META_CHARSET.search(data[:4096])
    if match:
        try:
            name = codecs.lookup(match.group(1).decode("ascii")).name
        except (LookupError, UnicodeDecodeError):
            return None
        # as browsers do: a page labelled Latin-1 or ASCII is read as windows-1252, and a
        # page labelled UTF-16 that got this far without a byte-order mark is ASCII-compatible
        return {
            "latin-1": "cp1252",
            "iso8859-1": "cp1252",
            "ascii": "cp1252",
            "utf-16": "utf-8",
            "utf-16-le": "utf-8",
            "utf-16-be": "utf-8",
        }.get(name, name)
    return None


def decode_html(data: bytes) -> str:
    """The page's text (see the module docstring for the order of evidence)."""
    encoding = declared_encoding(data)
    if encoding:
        return data.decode(encoding, errors="replace").lstrip("\ufeff")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return data.decode("cp1252", errors="replace")
    for match in matches:
        if match.encoding == "cp1252" and ("cp1252" in best.could_be_from_charset or match.chaos <= best.chaos + 0.1):
            return str(match)
    return str(best)


def main_content(root):
    """The element holding the page's main text: one ``<main>`` / ``role="main"``, else
    one ``<article>``, else the body (or the whole page)."""
    for candidates in (
        [el for el in root.iter() if local(el) == "main" or (el.get("role") or "").lower() == "main"],
        [el for el in root.iter() if local(el) == "article"],
    ):
        visible = [el for el in candidates if not hidden(el) and collapse(plain_text(el))]
        outermost = [
            el for el in visible if not any(other is not el and el in other.iterdescendants() for other in visible)
        ]
        if len(outermost) == 1:
            return outermost[0]
    body = next((el for el in root if local(el) == "body"), None)
    return body if body is not None else root


def page_title(root) -> str:
    for el in root.iter():
        if local(el) == "title":
            return collapse(el.text_content() if hasattr(el, "text_content") else plain_text(el)).replace("\n", " ")
    return ""


def read_html(data: bytes, max_chars: int | None = None, deadline: float | None = None) -> SourceDocument:
    """The text of an HTML page with its headings as labelled sections."""
    check_html(data)
    text = decode_html(data)
    if max_chars is not None and len(text) > 20 * max_chars:  # markup is rarely 20× its text
        raise DocumentError(
            f"the HTML file is {len(text):,} characters long, too long for {max_chars:,} characters of text"
        )
    root = parse_html(text, "the HTML file")
    out = SectionedText("html", max_chars, deadline, preamble=page_title(root)[:200])
    content = main_content(root)
    Walker(out, top_rank=min_rank(content)).walk(content)
    out.check_time()
    return out.document()
