"""Parsing the XML and HTML inside documents without trusting it, and walking (X)HTML into
paragraphs and headings.

XML is parsed by lxml with entities left unresolved (``resolve_entities=False``), no DTD
loaded, no network and libxml2's default size and depth bounds (``huge_tree=False``); a
document whose DTD declares entities is refused outright — an external entity reads local
files (XXE) and nested internal ones expand without bound ("billion laughs"). That is looked
for in the bytes before anything is parsed, in the encoding the parser will read them in
(:func:`xml_encoding`: libxml2 also reads UTF-32, UTF-7 or EBCDIC, in which ``<!ENTITY`` is
other bytes); XML in an encoding where it could hide is refused. HTML is parsed by lxml's
forgiving HTML parser, also without network.

:class:`Walker` turns an (X)HTML tree into :class:`homer.reading.formats.base.SectionedText` blocks:
paragraphs and list items as paragraphs, headings h1–h6 as sections (the reader decides
their depth), tables as one line per row (cells joined by " | "), links as their text, a
note reference as "[1]"; scripts, styles, images, forms, navigation and hidden elements are
skipped."""

from __future__ import annotations

import codecs
import re

from ..source_document import DocumentError
from .base import LINE_BREAK, SectionedText, collapse

XHTML_NS = "http://www.w3.org/1999/xhtml"
OPS_NS = "http://www.idpf.org/2007/ops"
MAX_DEPTH = 200  # deeper markup is read as plain text (libxml2 itself stops at 256 levels)

SKIP = frozenset(
    """script style noscript template head title meta link base svg img image picture video audio
source track canvas iframe frame frameset object embed param applet map area button input select option
optgroup textarea datalist output progress meter nav""".split()
)
BLOCK = frozenset(
    """address article aside blockquote body center dd details dialog dir div dl dt fieldset
figcaption figure footer form header hgroup hr html legend li listing main menu ol p plaintext pre section
summary ul xmp caption tbody thead tfoot tr td th""".split()
)
HEADINGS = {f"h{n}": n for n in range(1, 7)}
DROPPED_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "doc-backlink"})
NOTE_REF_TYPES = frozenset({"noteref", "doc-noteref"})
NOTES_TYPES = frozenset({"footnotes", "endnotes", "rearnotes", "doc-endnotes"})  # a block of the notes
NOTES_LABEL = "Notes"
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
# Byte-order marks, then the first bytes of "<?xml" without one (XML 1.0, appendix F); the
# longer patterns first (UTF-32-LE starts as UTF-16-LE does).
_BOMS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
)
_PATTERNS = (
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<", "utf-16-be"),
    (b"<\x00", "utf-16-le"),
    (b"\x4c\x6f\xa7\x94", "cp037"),
)  # the last: "<?xm" in EBCDIC
_DECLARED = re.compile(r"^\s*<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"'>]{1,40})[\"']")
UNICODE_XML = frozenset({"utf-8", "utf-16-le", "utf-16-be"})  # what Office Open XML allows
_WIDE = frozenset({"utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"})
# Encodings in which every ASCII character is its own byte and no byte stands for nothing, so
# a declaration shows as its ASCII bytes (unlike UTF-7, ISO-2022 or HZ, whose shifts can sit
# between its letters). Older EPUBs declare some of them.
_ASCII_BASED = frozenset(
    {
        "ascii",
        "utf-8",
        "shift_jis",
        "cp932",
        "euc_jp",
        "euc_kr",
        "cp949",
        "gb2312",
        "gbk",
        "gb18030",
        "big5",
        "big5hkscs",
        "cp950",
        "tis-620",
        "cp874",
    }
)
ENTITY = ("<!ENTITY",)
DOCTYPE = ("<!DOCTYPE", "<!ENTITY")


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def xml_parser(**extra):
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        **extra,
    )


def refuse_entities(tree, what: str) -> None:
    """Refuse a parsed document whose DTD declares entities."""
    for dtd in (tree.docinfo.internalDTD, tree.docinfo.externalDTD):
        if dtd is not None and any(True for _ in dtd.iterentities()):
            raise DocumentError(
                f"{what} declares XML entities, which are refused (they can read local files or expand without bound)"
            )


def _codec(name: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return name.lower()


def xml_encoding(data: bytes) -> str:
    """The encoding an XML parser reads ``data`` in, by the rules it follows (XML 1.0,
    appendix F): a byte-order mark, else the pattern of the first bytes ("<" in two or four
    bytes: UTF-16 or UTF-32; "<?xm" in EBCDIC), else, for a start in ASCII, the encoding its
    declaration names, else UTF-8 (libxml2 keeps to a byte-order mark or a UTF-16/32 start
    whatever the declaration says). Python's name for it ("utf-8", "utf-16-le", "utf-32-be",
    "cp037", "iso8859-1", "utf-7"…; an unknown one lower-cased)."""
    found = next((name for mark, name in _BOMS if data.startswith(mark)), None)
    if found is not None:
        return found
    found = next((name for mark, name in _PATTERNS if data.startswith(mark)), None)
    if found is not None:
        return found  # EBCDIC: which code page, the declaration says; refused whichever
    declared = _DECLARED.match(data[:512].decode("ascii", "replace"))
    return _codec(declared.group(1).strip()) if declared else "utf-8"


def ascii_based(encoding: str) -> bool:
    """Whether ``encoding`` writes ASCII as ASCII bytes and nothing in between (see
    :data:`_ASCII_BASED`): the ISO 8859 and Windows code pages, KOI8, UTF-8, the common CJK
    ones."""
    return encoding in _ASCII_BASED or encoding.startswith(("iso8859-", "cp125", "koi8", "mac-"))


def holds(data: bytes, encoding: str, markers: tuple[str, ...] = ENTITY) -> bool:
    """Whether ``data``, read in ``encoding`` (UTF-16 or UTF-32 of a known byte order, or
    one that is :func:`ascii_based`), holds one of ``markers`` (:data:`ENTITY`, :data:`DOCTYPE`),
    looked for in its bytes."""
    codec = "ascii" if ascii_based(encoding) else encoding
    return any(marker.encode(codec) in data for marker in markers)


def _encoding_refused(what: str, encoding: str) -> DocumentError:
    return DocumentError(
        f"{what} is XML in {encoding.upper()}, which is refused (only UTF-8, UTF-16, UTF-32 and "
        f"ASCII-based encodings are read: in others an entity declaration can hide)"
    )


def declares_entities(data: bytes, what: str = "the document") -> bool:
    """A cheap look at raw bytes for an entity declaration, in the encoding the parser will
    read them in; :class:`DocumentError` for an encoding where one could hide."""
    encoding = xml_encoding(data)
    if not (ascii_based(encoding) or encoding in _WIDE):
        raise _encoding_refused(what, encoding)
    return holds(data, encoding)


def parse_xml(data: bytes, what: str):
    """The root element of well-formed XML ``data``; ``what`` names it in the reasons
    ("the EPUB's package file content.opf")."""
    from lxml import etree

    if declares_entities(data, what):
        raise DocumentError(
            f"{what} declares XML entities, which are refused (they can read local files or expand without bound)"
        )
    try:
        root = etree.fromstring(data, xml_parser())
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"{what} is not well-formed XML ({_short(exc)})") from None
    except ValueError as exc:
        raise DocumentError(f"{what} is not XML ({_short(exc)})") from None
    if root is None:
        raise DocumentError(f"{what} is empty")
    refuse_entities(root.getroottree(), what)
    return root


def html_parser(encoding: str | None = None):
    import lxml.html

    return lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True, encoding=encoding)


def parse_html(markup, what: str, encoding: str | None = None):
    """The root of an HTML document (``markup``: text, or bytes in ``encoding``, detected
    from the document when None); forgiving, as browsers are."""
    import lxml.html
    from lxml import etree

    if isinstance(markup, str):
        markup = re.sub(r"^\s*<\?xml[^>]*\?>", "", markup, count=1)  # lxml refuses text with an encoding declaration
    try:
        return lxml.html.document_fromstring(markup, parser=html_parser(encoding))
    except (etree.ParserError, etree.XMLSyntaxError, ValueError) as exc:
        if "empty" in str(exc).lower():
            raise DocumentError(f"{what} holds no text") from None
        raise DocumentError(f"{what} cannot be parsed as HTML ({_short(exc)})") from None


def parse_xhtml(data: bytes, what: str):
    """An EPUB content document: XHTML, parsed as XML; one that is not well-formed (an
    HTML entity such as ``&nbsp;`` without its DTD, an unclosed tag) is read by the HTML
    parser instead, as reading systems do. Entity declarations are refused either way."""
    from lxml import etree

    if declares_entities(data, what):
        raise DocumentError(
            f"{what} declares XML entities, which are refused (they can read local files or expand without bound)"
        )
    try:
        root = etree.fromstring(data, xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        return parse_html(data, what)
    if root is None:
        raise DocumentError(f"{what} is empty")
    refuse_entities(root.getroottree(), what)
    return root


def local(el) -> str:
    """An element's tag without its namespace, in lower case ("" for comments, entities…)."""
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    if tag.startswith("{"):
        tag = tag.rpartition("}")[2]
    return tag.rpartition(":")[2].lower()


def attr(el, name: str) -> str:
    """An attribute by local name, whatever its namespace ("type" finds ``epub:type``)."""
    value = el.get(name)
    if value is not None:
        return value
    for key, value in el.attrib.items():
        if key.rpartition("}")[2].rpartition(":")[2] == name:
            return value
    return ""


def hidden(el) -> bool:
    if el.get("hidden") is not None or (el.get("aria-hidden") or "").lower() == "true":
        return True
    if set((el.get("role") or "").lower().split()) & DROPPED_ROLES:
        return True
    style = el.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


def note_ref(el) -> bool:
    """A link to a footnote: ``epub:type="noteref"``, ``role="doc-noteref"`` or pandoc's class."""
    kinds = set(attr(el, "type").lower().split()) | set((el.get("role") or "").lower().split())
    return bool(kinds & NOTE_REF_TYPES) or "footnote-ref" in (el.get("class") or "").split()


def notes_block(el) -> bool:
    """The block holding a document's notes: ``role="doc-endnotes"``, ``epub:type="footnotes"``
    (or endnotes, rearnotes), or pandoc's ``class="footnotes"``."""
    kinds = set(attr(el, "type").lower().split()) | set((el.get("role") or "").lower().split())
    return bool(kinds & NOTES_TYPES) or "footnotes" in (el.get("class") or "").split()


def back_link(el) -> bool:
    return "footnote-back" in (el.get("class") or "").split() or "doc-backlink" in (el.get("role") or "")


def heading_rank(el) -> int | None:
    return HEADINGS.get(local(el))


def min_rank(root) -> int:
    """The highest heading level (1 for h1) used under ``root``; 1 when it has none."""
    ranks = [heading_rank(el) for el in root.iter() if heading_rank(el)]
    return min(ranks) if ranks else 1


def plain_text(el) -> str:
    """All the text under ``el`` (skipped elements left out, breaks between blocks),
    iteratively: for headings, table cells and markup nested deeper than :data:`MAX_DEPTH`."""
    parts = [el.text] if el.text else []
    stack = [(child, False) for child in reversed(el)]
    while stack:
        node, closing = stack.pop()
        if closing:
            if node.tail:
                parts.append(node.tail)
            continue
        stack.append((node, True))
        tag = local(node)
        if not tag or tag in SKIP or hidden(node) or back_link(node):
            continue
        if tag == "br":
            parts.append(LINE_BREAK)
        elif tag in BLOCK or tag in HEADINGS:
            parts.append(" ")
        if node.text:
            parts.append(node.text)
        stack.extend((child, False) for child in reversed(node))
    return "".join(parts)


class Walker:
    """Walks an (X)HTML tree into ``out``. Subclasses decide what a heading does
    (:meth:`on_heading`) and what an element with one of ``anchors`` as its id does
    (:meth:`on_anchor`: the EPUB reader starts its table-of-contents entries there)."""

    def __init__(self, out: SectionedText, top_rank: int = 1):
        self.out = out
        self.top_rank = top_rank
        self.anchors: set[str] = set()
        self.buffer: list[str] = []
        self.prefix = ""  # a list item's bullet, put before its first text
        self.list_counters: list[int | None] = []

    # --- what a subclass changes --------------------------------------------------------
    def on_heading(self, rank: int, title: str) -> None:
        self.out.heading(max(1, rank - self.top_rank + 1), title)

    def on_anchor(self, anchor: str) -> None:
        pass

    def on_notes(self) -> None:
        """A block of notes starts: its own section ("Notes")."""
        self.out.heading(1, NOTES_LABEL)

    def on_text(self) -> None:
        """Called when a paragraph of text was added."""

    # --- the walk -----------------------------------------------------------------------
    def flush(self) -> None:
        text = collapse("".join(self.buffer))
        self.buffer = []
        if text:
            self.out.block(self.prefix + text)
            self.prefix = ""
            self.on_text()

    def walk(self, root) -> None:
        self.visit(root, 0)
        self.flush()

    def visit(self, el, depth: int) -> None:
        tag = local(el)
        if not tag or tag in SKIP or hidden(el) or back_link(el):
            return
        if self.anchors:
            for key in ("id", "name"):
                anchor = attr(el, key)
                if anchor and anchor in self.anchors:
                    self.flush()
                    self.on_anchor(anchor)
        if depth > MAX_DEPTH:
            self.buffer.append(plain_text(el))
            return
        rank = HEADINGS.get(tag)
        if rank is not None:
            self.flush()
            title = collapse(plain_text(el)).replace("\n", " ")
            if title:
                self.on_heading(rank, title)
                self.out.block(title)
            return
        if tag == "table":
            self.flush()
            self.table(el)
            return
        if tag == "pre":
            self.flush()
            raw = plain_text(el).replace(LINE_BREAK, "\n")
            text = "\n".join(line.rstrip() for line in raw.strip("\n").split("\n"))
            if text.strip():
                self.out.block(text)
                self.on_text()
            return
        if tag == "br":
            self.buffer.append(LINE_BREAK)
            return
        if tag == "a" and note_ref(el):
            mark = collapse(plain_text(el)).strip("[]() ")
            self.buffer.append(f"[{mark}]" if mark else "")
            return
        block = tag in BLOCK
        if block:
            self.flush()
            if tag not in ("li", "p", "td", "th", "tr") and notes_block(el):
                self.on_notes()
        if tag in ("ul", "ol", "menu", "dir"):
            self.list_counters.append(0 if tag == "ol" else None)
        if tag == "li":
            self.prefix = self.bullet(el)
        if el.text:
            self.buffer.append(el.text)
        for child in el:
            self.visit(child, depth + 1)
            if child.tail:
                self.buffer.append(child.tail)
        if tag in ("ul", "ol", "menu", "dir"):
            self.list_counters.pop()
        if block:
            self.flush()
        if tag == "li":
            self.prefix = ""

    def bullet(self, el) -> str:
        if not self.list_counters:
            return "- "
        if self.list_counters[-1] is None:
            return "- "
        value = el.get("value")
        self.list_counters[-1] = int(value) if value and value.isdigit() else self.list_counters[-1] + 1
        return f"{self.list_counters[-1]}. "

    def table(self, table) -> None:
        lines = []
        caption = next((c for c in table if local(c) == "caption"), None)
        if caption is not None:
            text = collapse(plain_text(caption)).replace("\n", " ")
            if text:
                lines.append(text)
        for row in rows(table):
            cells = [
                collapse(plain_text(cell)).replace("\n", " ")
                for cell in row
                if local(cell) in ("td", "th") and not hidden(cell)
            ]
            if any(cells):
                lines.append(" | ".join(cells))
        if lines:
            self.out.block("\n".join(lines))
            self.on_text()


def rows(table):
    """The rows of ``table`` (not of tables nested in its cells), in order."""
    for child in table:
        tag = local(child)
        if tag == "tr":
            yield child
        elif tag in ("thead", "tbody", "tfoot"):
            yield from (row for row in child if local(row) == "tr")
