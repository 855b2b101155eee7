"""Reading a Word document (DOCX): paragraphs and tables in body order, headings as sections.

python-docx (1.2) opens the package: it validates the main part's content type (a
macro-enabled .docm or a template is refused), follows the relationships and parses every
XML part with entities unresolved (its parser sets ``resolve_entities=False``). Its
paragraph API does not see text inside content controls (``w:sdt``), tracked insertions or
fields, and it has no footnotes, so the body's XML (python-docx's lxml tree) is walked
here: ``w:t`` text in document order; tabs and breaks; deleted text, field codes, hidden
runs and the fallback copy of alternate content left out; a footnote or endnote reference
becomes "[n]" and the note's text follows its paragraph as "[n] …".

A paragraph is a heading when its outline level says so (its own ``w:outlineLvl``, else
its style's, through the styles it is based on) or its style is named "Heading N"; level
1 is the top. Tables: one line per row, cells joined by " | ".

python-docx never sees the upload itself: it reads every part of a package with a plain
``zipfile`` read, images included, which a member that declares 1 000 bytes and inflates to
1 GiB turns into gigabytes. So the archive passes :class:`homer.reading.formats.zipsafe.SafeZip`
(zip-bomb limits on the directory), and python-docx is handed a package rebuilt in memory
(:func:`text_package`) holding only the parts it parses or this reader reads, each
decompressed through :meth:`SafeZip.read` (never past its declared size or the limits) and
checked: UTF-8 or UTF-16 as Office Open XML requires (libxml2 also reads UTF-32 or UTF-7, in
which a declaration is other bytes) and without a DOCTYPE (Word never writes one; a DTD is
how entity attacks come in). Every other part — images, fonts, embedded files, themes — is
there empty, so the relationships still resolve, and is never decompressed. What parsing
the kept parts will take is estimated from their bytes first (:func:`xml_nodes`) and
bounded by the limits' ``max_parse_bytes`` (384 MB; the app's ``HOMER_DOCX_MAX_PARSE_MB``):
64 MB of ``<a/><b/>…`` is within the zip limits but 13 million elements, 1.8 GB as an lxml
tree.

Refused with a reason: a password-protected DOCX (an OLE compound file holding an
``EncryptedPackage``, not a zip: "the DOCX is password-protected (encrypted)"); an old
.doc; a zip without ``word/document.xml`` (an Excel or PowerPoint file is named as such);
a macro-enabled document; malformed XML; a document without text."""

from __future__ import annotations

import io
import re
import zipfile

from ..locations import section_label
from ..source_document import DocumentError, SourceDocument
from .base import LINE_BREAK, SectionedText, collapse
from .markup import DOCTYPE, UNICODE_XML, holds, parse_xml, xml_encoding
from .zipsafe import SafeZip, ZipLimits, _mb

MAIN = "word/document.xml"
W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MACRO_TYPES = (
    "application/vnd.ms-word.document.macroEnabled.main+xml",
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml",
)
TEMPLATE_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml"
OTHER_OFFICE = {
    "xl/workbook.xml": "an Excel workbook (XLSX)",
    "ppt/presentation.xml": "a PowerPoint file (PPTX)",
    "content.xml": "an OpenDocument file (ODT, ODS…)",
    "META-INF/container.xml": "an EPUB",
}
# What libxml2 takes for one element or text node (measured: 80-120 bytes with python-docx's
# parser); an attribute is two (the attribute and its value's text node: 228 bytes measured).
NODE_BYTES = 120
# The parts read besides those python-docx parses itself (its part classes, added at run time).
NOTES_TYPES = frozenset(
    f"application/vnd.openxmlformats-officedocument.wordprocessingml.{kind}+xml" for kind in ("footnotes", "endnotes")
)
_HEADING_NAME = re.compile(r"^heading\s*([1-9])$", re.I)
SKIPPED = frozenset(
    {
        "del",
        "moveFrom",
        "instrText",
        "delText",
        "delInstrText",
        "pPr",
        "rPr",
        "Fallback",
        "commentReference",
        "annotationRef",
        "footnoteRef",
        "endnoteRef",
        "drawing",
        "pict",
        "object",
        "sectPr",
        "tblPr",
        "trPr",
        "tcPr",
    }
)


def local(el) -> str:
    """A WordprocessingML element's local name, case kept ("" for comments and the like)."""
    return el.tag.rpartition("}")[2] if isinstance(el.tag, str) else ""


def _w(name: str) -> str:
    return f"{{{W_NS}}}{name}"


def open_docx(data: bytes, limits: ZipLimits | None = None) -> SafeZip:
    """The archive, checked: a zip within the limits that is a Word document."""
    archive = SafeZip(data, "DOCX", limits)
    if not archive.find(MAIN):
        for member, what in OTHER_OFFICE.items():
            if archive.find(member):
                raise DocumentError(f"the file is {what}, not a DOCX (wrong file extension?)")
        raise DocumentError(f"the DOCX has no {MAIN} (not a Word document, or a damaged one)")
    types = archive.find("[Content_Types].xml")
    if types:
        raw = archive.read(types)
        if any(t.encode() in raw for t in MACRO_TYPES) or archive.find("word/vbaProject.bin"):
            raise DocumentError(
                "the file is a macro-enabled Word document (.docm): save it as .docx (macros are not run or read)"
            )
        if TEMPLATE_TYPE.encode() in raw:
            raise DocumentError("the file is a Word template (.dotx): save it as a .docx document")
    return archive


def check_docx(data: bytes, limits: ZipLimits | None = None) -> None:
    """The checks of an upload cheap enough for the request: the zip directory within the
    limits, ``word/document.xml`` there, not macro-enabled (one small member read)."""
    open_docx(data, limits)


def checked_xml(archive: SafeZip, member: str) -> bytes:
    """The member's bytes, read within the limits; refused unless UTF-8 or UTF-16 XML
    without a DOCTYPE."""
    raw = archive.read(member)
    encoding = xml_encoding(raw)
    if encoding not in UNICODE_XML:
        raise DocumentError(
            f"the DOCX's {member} is XML in {encoding.upper()}, not UTF-8 or UTF-16 as a DOCX must "
            f"be: refused (in other encodings an entity declaration can hide)"
        )
    if holds(raw, encoding, DOCTYPE):
        raise DocumentError(
            f"the DOCX's {member} carries a DOCTYPE or entity declarations, which Word never "
            f"writes: refused (XML entities can read local files or expand without bound)"
        )
    return raw


def content_types(archive: SafeZip) -> tuple[dict[str, str], dict[str, str]]:
    """``[Content_Types].xml``: the content type of a part by its name (lower case, with
    its leading "/") and by its extension (lower case), as python-docx looks them up."""
    found = archive.find("[Content_Types].xml")
    if not found:
        return {}, {}
    root = parse_xml(checked_xml(archive, found), "the DOCX's [Content_Types].xml")
    overrides, defaults = {}, {}
    for el in root:
        name = local(el)
        if name == "Override" and el.get("PartName"):
            overrides[el.get("PartName").lower()] = el.get("ContentType", "")
        elif name == "Default" and el.get("Extension"):
            defaults[el.get("Extension").lower()] = el.get("ContentType", "")
    return overrides, defaults


def xml_nodes(raw: bytes) -> int:
    """About how many nodes libxml2 makes of the XML ``raw`` (UTF-8 or UTF-16), from its
    bytes alone: an element or text node for each "<", two for each "=" (an attribute and
    its value). A part costs about three times its bytes (the package python-docx is given,
    its read of the part, the tree's text) and :data:`NODE_BYTES` a node."""
    encoding = xml_encoding(raw)
    return raw.count("<".encode(encoding)) + 2 * raw.count("=".encode(encoding))


def text_package(archive: SafeZip, budget: int | None = None) -> bytes:
    """The package python-docx is given: every member of ``archive`` by its name, those it
    parses (the content types of its part classes), the notes, the relationships and
    ``[Content_Types].xml`` read through :func:`checked_xml`, the rest empty; refused when
    what parsing them would take (:func:`xml_nodes`) exceeds ``budget`` (default: the
    archive's limits, :attr:`ZipLimits.max_parse_bytes`).
    Stored, not deflated: python-docx's reads are copies of bytes already checked."""
    from docx.opc.part import PartFactory  # docx's import registers its part classes

    budget = archive.limits.max_parse_bytes if budget is None else budget
    read_types = NOTES_TYPES | set(PartFactory.part_type_for)
    overrides, defaults = content_types(archive)
    cost = 0
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as package:
        for member, info in archive.members.items():
            if info.is_dir():
                continue
            lowered = member.lower()
            base = lowered.rpartition("/")[2]
            kind = overrides.get("/" + lowered) or defaults.get(base.rpartition(".")[2] if "." in base else "")
            if not (lowered.endswith(".rels") or lowered == "[content_types].xml" or kind in read_types):
                package.writestr(member, b"")
                continue
            raw = checked_xml(archive, member)
            nodes = xml_nodes(raw)
            cost += 3 * len(raw) + NODE_BYTES * nodes
            if cost > budget:
                raise DocumentError(
                    f"the DOCX's XML would take about {_mb(cost)} of memory to read ({member}: "
                    f"{_mb(len(raw))}, {nodes:,} elements and attributes), over the limit of "
                    f"{_mb(budget)}"
                )
            package.writestr(member, raw)
            del raw
    return out.getvalue()


class Styles:
    """Paragraph styles by id: their heading level (None: not a heading) and names."""

    def __init__(self, styles_root):
        self.styles = {}
        if styles_root is None:
            return
        for style in styles_root.iter(_w("style")):
            style_id = style.get(_w("styleId"))
            if not style_id:
                continue
            name = style.find(_w("name"))
            based = style.find(_w("basedOn"))
            outline = style.find(f"{_w('pPr')}/{_w('outlineLvl')}")
            self.styles[style_id] = (
                name.get(_w("val"), "") if name is not None else "",
                based.get(_w("val")) if based is not None else None,
                outline.get(_w("val")) if outline is not None else None,
            )

    def level(self, style_id: str | None) -> int | None:
        seen = set()
        while style_id and style_id in self.styles and style_id not in seen and len(seen) < 20:
            seen.add(style_id)
            name, based, outline = self.styles[style_id]
            if outline is not None:
                return _outline_level(outline)
            match = _HEADING_NAME.match(name.strip())
            if match:
                return int(match.group(1))
            style_id = based
        return None

    def name(self, style_id: str | None) -> str:
        return self.styles.get(style_id or "", ("",))[0]


def _outline_level(value: str | None) -> int | None:
    try:
        level = int(value or "")
    except ValueError:
        return None
    return level + 1 if 0 <= level <= 8 else None  # 9: body text


def _notes(root, tag: str) -> dict[str, object]:
    """Note id -> its ``w:footnote`` / ``w:endnote`` element (separators left out)."""
    if root is None:
        return {}
    return {note.get(_w("id")): note for note in root.iter(_w(tag)) if note.get(_w("type")) in (None, "normal")}


class DocxReader:
    def __init__(self, out: SectionedText, styles: Styles, footnotes: dict, endnotes: dict):
        self.out, self.styles = out, styles
        self.notes = {"footnoteReference": footnotes, "endnoteReference": endnotes}
        self.numbered = 0
        self.pending_notes: list[str] = []

    def body(self, parent) -> None:
        for child in parent:
            tag = local(child)
            if tag == "p":
                self.paragraph(child)
            elif tag == "tbl":
                self.table(child)
            elif tag == "sdt":  # a content control: its content
                content = child.find(_w("sdtContent"))
                if content is not None:
                    self.body(content)
            elif tag in ("customXml", "ins", "moveTo", "smartTag"):
                self.body(child)

    def paragraph(self, p) -> None:
        text = collapse(self.text_of(p))
        level = self.heading_level(p)
        if text:
            if level is not None:
                self.out.heading(level, text.replace("\n", " "))
            self.out.block(text)
        for note in self.pending_notes:
            self.out.block(note)
        self.pending_notes = []

    def heading_level(self, p) -> int | None:
        ppr = p.find(_w("pPr"))
        if ppr is None:
            return None
        outline = ppr.find(_w("outlineLvl"))
        if outline is not None:
            return _outline_level(outline.get(_w("val")))
        style = ppr.find(_w("pStyle"))
        return self.styles.level(style.get(_w("val")) if style is not None else None)

    def text_of(self, element, notes: bool = True) -> str:
        """The text under ``element``, in document order (iteratively: no depth limit)."""
        parts, stack = [], [element]
        while stack:
            node = stack.pop()
            tag = local(node)
            if not tag or tag in SKIPPED:
                continue
            if tag == "r" and _hidden_run(node):
                continue
            if tag == "t":
                parts.append(node.text or "")
            elif tag in ("tab", "ptab") and local(node.getparent()) == "r":
                parts.append(" ")
            elif tag in ("br", "cr"):
                parts.append(LINE_BREAK)
            elif tag == "noBreakHyphen":
                parts.append("-")
            elif tag == "p" and node is not element:
                parts.append(LINE_BREAK)  # a paragraph inside (a text box, a cell)
            elif tag == "tbl" and node is not element:
                parts.append(LINE_BREAK)
            elif tag in self.notes and notes:
                parts.append(self.note(tag, node.get(_w("id"))))
                continue
            stack.extend(reversed(node))
        return "".join(parts)

    def note(self, kind: str, note_id: str | None) -> str:
        note = self.notes[kind].get(note_id)
        if note is None:
            return ""
        self.numbered += 1
        text = collapse(self.text_of(note, notes=False)).replace("\n", " ")
        if text:
            self.pending_notes.append(f"[{self.numbered}] {text}")
        return f"[{self.numbered}]"

    def table(self, tbl) -> None:
        lines = []
        for row in _children(tbl, "tr"):
            cells = [collapse(self.text_of(cell)).replace("\n", " ") for cell in _children(row, "tc")]
            if any(cells):
                lines.append(" | ".join(cells))
        if lines:
            self.out.block("\n".join(lines))
        for note in self.pending_notes:
            self.out.block(note)
        self.pending_notes = []


def _children(parent, tag: str):
    """``parent``'s children named ``tag``, looking through content controls and custom XML."""
    for child in parent:
        name = local(child)
        if name == tag:
            yield child
        elif name in ("sdt", "sdtContent", "customXml"):
            yield from _children(child, tag)


def _hidden_run(run) -> bool:
    vanish = run.find(f"{_w('rPr')}/{_w('vanish')}")
    return vanish is not None and vanish.get(_w("val"), "true").lower() not in ("0", "false", "off")


def _part_root(document, reltype: str):
    for rel in document.part.rels.values():
        if rel.reltype == reltype and not rel.is_external:
            part = rel.target_part
            element = getattr(part, "element", None)
            if element is not None:
                return element
            return parse_xml(part.blob, f"the DOCX's {str(part.partname).lstrip('/')}")
    return None


def read_docx(
    data: bytes, max_chars: int | None = None, deadline: float | None = None, limits: ZipLimits | None = None
) -> SourceDocument:
    """The text of a Word document, with its headings as labelled sections."""
    archive = open_docx(data, limits)
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE as RT
    from docx.opc.exceptions import PackageNotFoundError
    from lxml import etree

    package = text_package(archive)
    try:
        document = docx.Document(io.BytesIO(package))
        del package
        styles = Styles(document.styles.element)
        footnotes = _notes(_part_root(document, RT.FOOTNOTES), "footnote")
        endnotes = _notes(_part_root(document, RT.ENDNOTES), "endnote")
        title = (document.core_properties.title or "").strip()
    except DocumentError:
        raise
    except etree.XMLSyntaxError as exc:
        raise DocumentError(f"the DOCX holds malformed XML ({' '.join(str(exc).split())[:160]})") from None
    except ValueError as exc:
        raise DocumentError(f"the file is not a Word document ({' '.join(str(exc).split())[:160]})") from None
    except (PackageNotFoundError, KeyError) as exc:
        raise DocumentError(f"the DOCX is damaged: a part it names is missing ({exc})") from None
    except Exception as exc:  # python-docx raises several types on broken packages
        raise DocumentError(
            f"the DOCX is damaged or unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        ) from None
    out = SectionedText("docx", max_chars, deadline, preamble=title[:200])
    body = document.element.body
    reader = DocxReader(out, styles, footnotes, endnotes)
    for child in body:  # the title paragraph names the text before the first heading
        if local(child) == "p" and reader.heading_level(child) is None:
            style = child.find(f"{_w('pPr')}/{_w('pStyle')}")
            if style is not None and styles.name(style.get(_w("val"))).lower() == "title" and not title:
                out.labels[0] = section_label([collapse(reader.text_of(child, notes=False))])
                break
        elif local(child) == "p":
            break
    reader.body(body)
    out.check_time()
    return out.document()
