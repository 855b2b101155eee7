"""Real EPUB, DOCX, HTML and PDF files for the format tests, made by real tools — pandoc
(Markdown → EPUB, DOCX, HTML) and a headless Chromium (HTML → PDF) — from public-domain
text (the opening of Herman Melville's *Moby-Dick*, 1851), and the hostile variants made
from them with :mod:`zipfile`: DRM, zip bombs, lying zip directories, entity attacks,
wrong extensions, empty and password-protected documents."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest

PANDOC = shutil.which("pandoc")
CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
)
needs_pandoc = pytest.mark.skipif(
    PANDOC is None,
    reason="pandoc is not installed (Debian: apt-get install pandoc): "
    "the EPUB, DOCX and HTML fixtures are made with it",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium): the PDF fixture is printed with it",
)

# Melville, Moby-Dick (1851), chapters 1-3, shortened; public domain. Headings, a sub-heading
# per chapter, a table, a footnote, a link and a script (raw HTML: kept by pandoc in HTML and EPUB).
BOOK = """---
title: Moby-Dick; or, The Whale
author: Herman Melville
lang: en
---

# Chapter 1. Loomings

Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, and nothing
particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.[^1]
It is a way I have of driving off the spleen and regulating the circulation.

There now is your insular city of the Manhattoes, belted round by wharves as Indian isles by coral reefs; commerce
surrounds it with her surf.

## The Water-Gazers

Circumambulate the city of a dreamy Sabbath afternoon. Go from Corlears Hook to Coenties Slip, and from thence, by
Whitehall, northward. What do you see? Posted like silent sentinels all around the town, stand thousands upon
thousands of mortal men fixed in ocean reveries.

<script>var stolen = "SCRIPTMARKER";</script>

# Chapter 2. The Carpet-Bag

I stuffed a shirt or two into my old carpet-bag, tucked it under my arm, and started for Cape Horn and the Pacific.
See the [Project Gutenberg edition](https://www.gutenberg.org/ebooks/2701) for the rest.

| Place | Day | Errand |
|---|---|---|
| Manhatto | Saturday | leaving |
| New Bedford | Saturday night | waiting for the packet |

# Chapter 3. The Spouter-Inn

Entering that gable-ended Spouter-Inn, you found yourself in a wide, low, straggling entry with old-fashioned
wainscots.

## The Storm

It's the Cape-Horner in a great hurricane; the half-foundered ship weltering there with its three dismantled masts
alone visible.

[^1]: Whenever it is a damp, drizzly November in my soul, I account it high time to get to sea.
"""

BOOK_LABELS = [
    "Moby-Dick; or, The Whale",
    "Chapter 1. Loomings",
    "Chapter 1. Loomings · The Water-Gazers",
    "Chapter 2. The Carpet-Bag",
    "Chapter 3. The Spouter-Inn",
    "Chapter 3. The Spouter-Inn · The Storm",
]

EXTENSIONS = {"epub": "epub", "epub2": "epub", "docx": "docx", "html": "html"}


def pandoc(source: str, to: str, folder: Path, *args: str) -> bytes:
    """``source`` (pandoc Markdown, smart punctuation off) converted by pandoc to ``to``."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "source.md"
    src.write_text(source, encoding="utf-8")
    out = folder / f"out-{to}.{EXTENSIONS.get(to, to)}"
    subprocess.run(
        [PANDOC, str(src), "-f", "markdown-smart", "-t", to, "-s", "-o", str(out), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.read_bytes()


def pdf_from_html(html: bytes, folder: Path) -> bytes:
    """An HTML page printed to PDF by headless Chromium, each ``<h1>`` starting a page."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "print.html"
    page.write_bytes(b"<style>h1 { break-before: page; }</style>\n" + html)
    out = folder / "print.pdf"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={folder / 'chromium-profile'}",
            f"--print-to-pdf={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return out.read_bytes()


# --- variants of a zip ------------------------------------------------------------------------
def rewrite_zip(
    data: bytes,
    replace: dict[str, bytes | None] | None = None,
    add: dict[str, bytes] | None = None,
    rename: dict[str, str] | None = None,
) -> bytes:
    """The archive with members replaced (None: removed), renamed or added."""
    replace, add, rename = replace or {}, add or {}, rename or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            name = info.filename
            if name in replace and replace[name] is None:
                continue
            content = replace.get(name, source.read(name))
            compression = zipfile.ZIP_STORED if name == "mimetype" else zipfile.ZIP_DEFLATED
            target.writestr(rename.get(name, name), content, compress_type=compression)
        for name, content in add.items():
            target.writestr(name, content)
    return out.getvalue()


def member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(name)


def encryption_xml(uri: str, algorithm: str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" xmlns:enc="http://www.w3.org/2001/04/xmlenc#">
  <enc:EncryptedData>
    <enc:EncryptionMethod Algorithm="{algorithm}"/>
    <enc:CipherData><enc:CipherReference URI="{uri}"/></enc:CipherData>
  </enc:EncryptedData>
</encryption>""".encode()


ADEPT_RIGHTS = b"""<?xml version="1.0"?><adept:rights xmlns:adept="http://ns.adobe.com/adept"><adept:licenseToken/>
</adept:rights>"""


def zip_bomb(data: bytes, name: str, size: int = 200 * 2**20) -> bytes:
    """The archive with one more member: ``size`` bytes of zeros, deflated (about 1000:1),
    written in chunks (the zeros are never all in memory)."""
    out = io.BytesIO(rewrite_zip(data))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=size > 2**31) as stream:
            chunk = b"\0" * 2**20
            for _ in range(size // len(chunk)):
                stream.write(chunk)
    return out.getvalue()


def lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """The archive with ``name``'s uncompressed size declared as ``declared`` in both its
    local header and the central directory (the deflated data left as it is)."""
    raw = bytearray(data)
    encoded = name.encode()
    for signature, size_at, name_length_at, name_at in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        at = raw.find(signature)
        while at >= 0:
            length = struct.unpack_from("<H", raw, at + name_length_at)[0]
            if bytes(raw[at + name_at : at + name_at + length]) == encoded:
                struct.pack_into("<I", raw, at + size_at, declared)
            at = raw.find(signature, at + 4)
    return bytes(raw)


def many_members(count: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        for i in range(count):
            archive.writestr(f"EPUB/{i}.xhtml", "x")
    return out.getvalue()


# --- hostile XML ------------------------------------------------------------------------------
XXE_XHTML = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title></head>
<body><h1>Chapter 1. Loomings</h1><p>Call me &xxe; Ishmael.</p></body></html>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r>
<w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"""


# --- not zips at all --------------------------------------------------------------------------
def ole_file(streams: tuple[str, ...]) -> bytes:
    """The start of an OLE compound file (the container of an encrypted Office file and of
    an old .doc): its signature and header, then directory entries naming ``streams``
    (UTF-16LE names, as the format stores them)."""
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 16 + struct.pack("<HHH", 0x3E, 3, 0xFFFE) + b"\0" * 474
    entries = b""
    for name in ("Root Entry", *streams):
        encoded = name.encode("utf-16-le") + b"\0\0"
        entries += encoded.ljust(64, b"\0") + struct.pack("<H", len(encoded)) + b"\x02\x01" + b"\0" * 60
    return header + entries.ljust(4096, b"\0")


def password_protected_docx() -> bytes:
    return ole_file(("EncryptionInfo", "EncryptedPackage", "\x06DataSpaces"))


def old_word_doc() -> bytes:
    return ole_file(("WordDocument", "1Table", "\x05SummaryInformation"))


def fills_pdf(fills: int, text: str = "The harbour chart: every buoy, light and sounding of the bay.") -> bytes:
    """One page of ``fills`` nearly page-sized filled rectangles (``re f``), then a line of
    text: a few hundred KB that PDFium takes minutes to draw (200 000 of them, 3.8 MB: 115 s
    in the reader). ``fills=0``: the same page without them."""
    import io
    import random

    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    draw = random.Random(0)
    ops = [
        b"%d %d %d %d re f"
        % (draw.randrange(30), draw.randrange(30), 560 + draw.randrange(50), 740 + draw.randrange(50))
        for _ in range(fills)
    ]
    ops.append(f"0 g BT /F1 14 Tf 72 720 Td ({text}) Tj ET".encode())
    content = StreamObject()
    content.set_data(b"\n".join(ops))
    page[NameObject("/Contents")] = writer._add_object(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
