"""Parsing the XML and HTML inside documents without trusting it, and walking (X)HTML into
paragraphs and headings.

XML is parsed by lxml with entities left unresolved (``resolve_entities=False``), no DTD
loaded, no network and libxml2's default size and depth bounds (``huge_tree=False``); a
document whose DTD declares entities is refused outright — an external entity reads local
files (XXE) and nested internal ones expand without bound ("billion laughs"). HTML is parsed
by lxml's forgiving HTML parser, also without network.

:class:`Walker` turns an (X)HTML tree into :class:`homer.formats.base.SectionedText` blocks:
paragraphs and list items as paragraphs, headings h1–h6 as sections (the reader decides
their depth), tables as one line per row (cells joined by " | "), links as their text, a
note reference as "[1]"; scripts, styles, images, forms, navigation and hidden elements are
skipped."""

from __future__ import annotations

import re

from ..source_document import DocumentError
from .base import LINE_BREAK, SectionedText, collapse

XHTML_NS = "http://www.w3.org/1999/xhtml"
OPS_NS = "http://www.idpf.org/2007/ops"
MAX_DEPTH = 200  # deeper markup is read as plain text (libxml2 itself stops at 256 levels)

SKIP = frozenset("""script style noscript template head title meta link base svg img image picture video audio
source track canvas iframe frame frameset object embed param applet map area button input select option
optgroup textarea datalist output progress meter nav""".split())
BLOCK = frozenset("""address article aside blockquote body center dd details dialog dir div dl dt fieldset
figcaption figure footer form header hgroup hr html legend li listing main menu ol p plaintext pre section
summary ul xmp caption tbody thead tfoot tr td th""".split())
HEADINGS = {f"h{n}": n for n in range(1, 7)}
DROPPED_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "doc-backlink"})
NOTE_REF_TYPES = frozenset({"noteref", "doc-noteref"})
NOTES_TYPES = frozenset({"footnotes", "endnotes", "rearnotes", "doc-endnotes"})  # a block of the notes
NOTES_LABEL = "Notes"
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_ENTITY_BYTES = (b"<!ENTITY", "<!ENTITY".encode("utf-16-le"), "<!ENTITY".encode("utf-16-be"))


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def xml_parser(**extra):
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_comments=True, remove_pis=True, **extra)


def refuse_entities(tree, what: str) -> None:
    """Refuse a parsed document whose DTD declares entities."""
    for dtd in (tree.docinfo.internalDTD, tree.docinfo.externalDTD):
        if dtd is not None and any(True for _ in dtd.iterentities()):
            raise DocumentError(f"{what} declares XML entities, which are refused (they can read local files "
                                f"or expand without bound)")


def declares_entities(data: bytes) -> bool:
    """A cheap look at raw bytes for an entity declaration (in UTF-8 or UTF-16)."""
    return any(marker in data for marker in _ENTITY_BYTES)


def parse_xml(data: bytes, what: str):
    """The root element of well-formed XML ``data``; ``what`` names it in the reasons
    ("the EPUB's package file content.opf")."""
    from lxml import etree

    if declares_entities(data):
        raise DocumentError(f"{what} declares XML entities, which are refused (they can read local files "
                            f"or expand without bound)")
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

    if declares_entities(data):
        raise DocumentError(f"{what} declares XML entities, which are refused (they can read local files "
                            f"or expand without bound)")
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
            cells = [collapse(plain_text(cell)).replace("\n", " ") for cell in row if local(cell) in ("td", "th")
                     and not hidden(cell)]
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
