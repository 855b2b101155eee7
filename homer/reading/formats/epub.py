"""Reading an EPUB (2 or 3): the content documents in spine order, with the book's table of
contents as sections.

Why not ebooklib: it reads every member of the archive into memory on opening (images and
fonts included) before anything can be checked, and parses with its own settings. An EPUB
is a zip, one XML file naming the package (``META-INF/container.xml``), the package (OPF:
manifest, spine, metadata) and XHTML documents — few enough parts to read directly with
lxml under our own bounds: the archive through :class:`homer.reading.formats.zipsafe.SafeZip`
(zip-bomb limits checked on the directory, then enforced while reading), the XML through
:mod:`homer.reading.formats.markup` (no entities, no DTD, no network). Only the package, the table of
contents and the spine's documents are decompressed.

Sections: the entries of the table of contents (the EPUB 3 navigation document, else the
EPUB 2 NCX) start where they point — a document, or an element in it — labelled with
their path in the table ("Part One · Chapter 3"); a heading that opens an entry's text is
its printed title and starts nothing new, later headings inside are deeper sections
("Chapter 3 · The Storm"). Without a table of contents (or in a document it does not
list) the headings h1–h6 are the sections, the highest level in the book being the top.

Refused: a file that is not a zip; no ``META-INF/container.xml``, or a package that is
missing or not well-formed; DRM — ``META-INF/rights.xml`` (Adobe ADEPT), or an
``encryption.xml`` that encrypts anything but fonts (font obfuscation is not DRM) — with
the scheme named when its file is there (Readium LCP, Apple FairPlay); a book without text."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..source_document import DocumentError, SourceDocument
from .base import SectionedText, collapse
from .markup import NOTES_LABEL, Walker, attr, local, min_rank, parse_xhtml, parse_xml, plain_text
from .zipsafe import SafeZip, ZipLimits

CONTAINER = "META-INF/container.xml"
CONTENT_TYPES = ("application/xhtml+xml", "text/html", "application/xml", "text/xml", "application/x-dtbook+xml")
FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
FONT_SUFFIXES = (".ttf", ".otf", ".woff", ".woff2", ".ttc", ".pfb", ".pfm", ".afm")
DRM_FILES = {
    "META-INF/rights.xml": "Adobe ADEPT",
    "META-INF/license.lcpl": "Readium LCP",
    "META-INF/sinf.xml": "Apple FairPlay",
}
_HEADING_TAG = re.compile(rb"<(?:[A-Za-z0-9_-]+:)?h([1-6])[\s>/]", re.I)


@dataclass
class TocEntry:
    path: list[str]  # titles from the top of the table down to this entry
    document: str  # the archive member it points into
    fragment: str | None = None


@dataclass
class Package:
    opf: str
    title: str = ""
    spine: list[str] = field(default_factory=list)  # archive members in reading order
    toc: list[TocEntry] = field(default_factory=list)
    nav: str | None = None  # the navigation document's member (not read as text)


def _member(base: str, href: str) -> str | None:
    """The archive member ``href`` (relative to the file ``base``) points to; None for a URL."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None
    path = unquote(parts.path)
    if not path:
        return base
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), path)).lstrip("/")


def _fragment(href: str) -> str | None:
    return unquote(urlsplit(href).fragment) or None


def check_drm(archive: SafeZip) -> None:
    """Refuse a DRM-protected book: a rights file, or encrypted content other than fonts."""
    if archive.find("META-INF/rights.xml"):
        raise DocumentError(
            "the EPUB is DRM-protected (Adobe ADEPT: META-INF/rights.xml); only DRM-free books can be read"
        )
    found = archive.find("META-INF/encryption.xml")
    if not found:
        return
    root = parse_xml(archive.read(found), "the EPUB's META-INF/encryption.xml")
    encrypted = []
    for data in root.iter():
        if local(data) != "encrypteddata":
            continue
        method = next((el.get("Algorithm", "") for el in data.iter() if local(el) == "encryptionmethod"), "")
        uris = [el.get("URI", "") for el in data.iter() if local(el) == "cipherreference"]
        for uri in uris:
            if method in FONT_OBFUSCATION or unquote(uri).lower().endswith(FONT_SUFFIXES):
                continue  # fonts, obfuscated against extraction: the text is not touched
            encrypted.append(unquote(uri))
    if encrypted:
        scheme = next((f"{name}, " for member, name in DRM_FILES.items() if archive.find(member)), "")
        raise DocumentError(
            f"the EPUB is DRM-protected ({scheme}{len(encrypted)} encrypted file"
            f"{'s' if len(encrypted) != 1 else ''}, e.g. {encrypted[0]}); only DRM-free books can be read"
        )


def open_epub(data: bytes, limits: ZipLimits | None = None) -> SafeZip:
    """The archive, checked: a zip within the limits, an EPUB at all, not DRM-protected."""
    archive = SafeZip(data, "EPUB", limits)
    if not archive.find(CONTAINER):
        if archive.find("word/document.xml"):
            raise DocumentError("the file is a Word document (DOCX), not an EPUB (wrong file extension?)")
        mimetype = archive.find("mimetype")
        kind = archive.read(mimetype)[:100].decode("ascii", "replace").strip() if mimetype else ""
        if kind and kind != "application/epub+zip":
            raise DocumentError(f"the file is not an EPUB (its mimetype is {kind})")
        raise DocumentError(f"the EPUB has no {CONTAINER} (not an EPUB, or a damaged one)")
    check_drm(archive)
    return archive


def check_epub(data: bytes, limits: ZipLimits | None = None) -> None:
    """The checks of an upload cheap enough for the request: the zip directory within the
    limits, ``META-INF/container.xml`` there, no DRM (two small members read at most)."""
    open_epub(data, limits)


def read_package(archive: SafeZip) -> Package:
    container = parse_xml(archive.read(archive.find(CONTAINER)), f"the EPUB's {CONTAINER}")
    rootfiles = [el for el in container.iter() if local(el) == "rootfile" and el.get("full-path")]
    preferred = [
        el
        for el in rootfiles
        if el.get("media-type", "application/oebps-package+xml") == "application/oebps-package+xml"
    ]
    if not (preferred or rootfiles):
        raise DocumentError(f"the EPUB's {CONTAINER} names no package file")
    opf = unquote((preferred or rootfiles)[0].get("full-path")).lstrip("/")
    found = archive.find(opf)
    if not found:
        raise DocumentError(f"the EPUB's package file {opf} is missing")
    root = parse_xml(archive.read(found), f"the EPUB's package file {opf}")
    if local(root) != "package":
        raise DocumentError(f"the EPUB's package file {opf} is not an OPF package (its root is <{local(root)}>)")
    package = Package(opf=found)
    manifest = {}  # id -> (member, media type, properties)
    for item in root.iter():
        tag = local(item)
        if tag == "item" and item.get("id") and item.get("href"):
            member = _member(found, item.get("href"))
            if member:
                manifest[item.get("id")] = (
                    archive.find(member) or member,
                    item.get("media-type", ""),
                    set((item.get("properties") or "").split()),
                )
        elif tag == "title" and not package.title and (item.text or "").strip():
            package.title = collapse(item.text)[:200]
    spine = next((el for el in root.iter() if local(el) == "spine"), None)
    if spine is None:
        raise DocumentError(f"the EPUB's package file {opf} has no spine (no reading order)")
    package.nav = next((m for m, _, props in manifest.values() if "nav" in props), None)
    for ref in spine:
        if local(ref) != "itemref" or ref.get("idref") not in manifest:
            continue
        member, media, _ = manifest[ref.get("idref")]
        if media in CONTENT_TYPES or (not media and member.lower().endswith((".xhtml", ".html", ".htm"))):
            if member != package.nav and member not in package.spine:
                package.spine.append(member)
    if not package.spine:
        raise DocumentError("the EPUB's spine lists no readable documents")
    ncx = manifest.get(spine.get("toc") or "", (None,))[0] or next(
        (m for m, media, _ in manifest.values() if media == "application/x-dtbncx+xml"), None
    )
    package.toc = read_toc(archive, package.nav, ncx, set(package.spine))
    return package


def read_toc(archive: SafeZip, nav: str | None, ncx: str | None, documents: set[str]) -> list[TocEntry]:
    """The table of contents, flattened in its order: the navigation document's ``toc`` nav,
    else the NCX's navMap; entries pointing outside the spine are dropped. A damaged table
    of contents is no reason to refuse the book: the headings are used instead."""
    for member, reader in ((nav, _nav_entries), (ncx, _ncx_entries)):
        if not member or not archive.find(member):
            continue
        try:
            entries = [e for e in reader(archive, archive.find(member)) if e.document in documents]
        except DocumentError as exc:
            if "entities" in str(exc):
                raise
            continue
        if entries:
            return entries
    return []


def _nav_entries(archive: SafeZip, member: str) -> list[TocEntry]:
    root = parse_xhtml(archive.read(member), f"the EPUB's navigation document {member}")
    navs = [el for el in root.iter() if local(el) == "nav"]
    toc = next((el for el in navs if "toc" in attr(el, "type").split()), navs[0] if navs else None)
    if toc is None:
        return []
    entries: list[TocEntry] = []

    def walk(ol, path: list[str]) -> None:
        for li in ol:
            if local(li) != "li":
                continue
            label = next((c for c in li if local(c) in ("a", "span")), None)
            title = collapse(plain_text(label)).replace("\n", " ") if label is not None else ""
            here = path + [title] if title else path
            href = label.get("href") if label is not None and local(label) == "a" else None
            target = _member(member, href) if href else None
            if target:
                entries.append(TocEntry(here, archive.find(target) or target, _fragment(href)))
            for child in li:
                if local(child) == "ol":
                    walk(child, here)

    for ol in (c for c in toc if local(c) == "ol"):
        walk(ol, [])
    return entries


def _ncx_entries(archive: SafeZip, member: str) -> list[TocEntry]:
    root = parse_xml(archive.read(member), f"the EPUB's table of contents {member}")
    nav_map = next((el for el in root.iter() if local(el) == "navmap"), None)
    entries: list[TocEntry] = []

    def walk(parent, path: list[str]) -> None:
        for point in parent:
            if local(point) != "navpoint":
                continue
            label = next((c for c in point if local(c) == "navlabel"), None)
            text = next((t for t in label.iter() if local(t) == "text"), None) if label is not None else None
            title = collapse(plain_text(text)).replace("\n", " ") if text is not None else ""
            here = path + [title] if title else path
            content = next((c for c in point if local(c) == "content"), None)
            src = content.get("src") if content is not None else None
            target = _member(member, src) if src else None
            if target:
                entries.append(TocEntry(here, archive.find(target) or target, _fragment(src)))
            walk(point, here)

    if nav_map is not None:
        walk(nav_map, [])
    return entries


def _same_title(a: str, b: str) -> bool:
    a, b = (re.sub(r"\W+", " ", t).strip().casefold() for t in (a, b))
    return bool(a and b) and (a == b or a in b or b in a)


class EpubWalker(Walker):
    """Headings and table-of-contents anchors of one book, across its documents."""

    def __init__(self, out: SectionedText, top_rank: int):
        super().__init__(out, top_rank)
        self.entries: dict[str, list[TocEntry]] = {}  # anchors of the document being read
        self.anchor_level: int | None = None  # depth of the last table-of-contents entry opened
        self.anchor_rank: int | None = None  # the rank of its printed title (a heading), once seen
        self.pending: str | None = None  # the entry's title, while no text has followed it
        self.doc_rank = 1  # the highest heading rank of the document being read
        self.listed = False  # the table of contents points into the document being read
        self.doc_level: int | None = None  # the depth of its first entry (its chapter)

    def start_document(self, root, entries: list[TocEntry]) -> None:
        self.doc_rank, self.listed = min_rank(root), bool(entries)
        self.doc_level = self.anchor_level if not entries else None
        ids = {attr(el, key) for el in root.iter() for key in ("id", "name") if attr(el, key)}
        self.entries = {}
        for i, entry in enumerate(entries):
            if entry.fragment in ids:
                self.entries.setdefault(entry.fragment, []).append(entry)
            elif entry.fragment is None or i == 0:  # the document itself, or a lost anchor: its start
                self.open(entry)
        self.anchors = set(self.entries)

    def open(self, entry: TocEntry) -> None:
        for depth, title in enumerate(entry.path, start=1):
            self.out.heading(depth, title)
        self.anchor_level, self.anchor_rank, self.pending = len(entry.path), None, entry.path[-1]
        if self.doc_level is None:
            self.doc_level = self.anchor_level

    def on_anchor(self, anchor: str) -> None:
        for entry in self.entries.pop(anchor, []):
            self.open(entry)

    def on_heading(self, rank: int, title: str) -> None:
        if (
            not self.listed and self.anchor_rank is not None and rank <= self.anchor_rank and not self.entries
        ):  # a document the table leaves out, titled as its chapters are
            self.anchor_level = self.anchor_rank = self.pending = None
        if self.anchor_level is None:  # no table of contents (yet): the headings are the sections
            super().on_heading(rank, title)
            return
        if self.pending is not None and (_same_title(title, self.pending) or rank <= self.doc_rank):
            self.anchor_rank, self.pending = rank, None  # the entry's printed title
            return
        self.pending = None
        base = self.anchor_rank if self.anchor_rank is not None else self.doc_rank - 1
        self.out.heading(self.anchor_level + max(1, rank - base), title)

    def on_text(self) -> None:
        self.pending = None

    def on_notes(self) -> None:
        self.out.heading((self.doc_level or 1) + 1, NOTES_LABEL)


def read_epub(
    data: bytes, max_chars: int | None = None, deadline: float | None = None, limits: ZipLimits | None = None
) -> SourceDocument:
    """The text of an EPUB in reading order, with its table of contents as sections."""
    archive = open_epub(data, limits)
    package = read_package(archive)
    out = SectionedText("epub", max_chars, deadline, preamble=package.title)
    documents = []
    for number, member in enumerate(package.spine, start=1):
        out.check_time(f"document {number} of {len(package.spine)}")
        if not archive.find(member):
            continue  # listed but absent: the rest of the book is still read
        documents.append((member, archive.read(member)))
    ranks = [int(m.group(1)) for _, raw in documents for m in _HEADING_TAG.finditer(raw)]
    walker = EpubWalker(out, top_rank=min(ranks) if ranks else 1)
    by_document: dict[str, list[TocEntry]] = {}
    for entry in package.toc:
        by_document.setdefault(entry.document, []).append(entry)
    for number, (member, raw) in enumerate(documents, start=1):
        out.check_time(f"document {number} of {len(documents)}")
        root = parse_xhtml(raw, f"the EPUB's {member}")
        body = next((el for el in root.iter() if local(el) == "body"), root)
        walker.start_document(root, by_document.get(member, []))
        walker.walk(body)
    return out.document()
