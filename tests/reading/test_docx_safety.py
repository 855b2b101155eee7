"""A DOCX cannot take the machine through a part nobody reads, nor hide a DTD in an encoding
the entity check does not read (issue 22, findings 4 and 9).

python-docx used to read every member of an upload with a plain ``zipfile`` read, which
inflates a member whole before cutting it to its declared size: a picture declaring 1 000
bytes and inflating to 1 GiB took about 2 GB (2 078 MiB measured here, 2 466 MiB in the
report). The base documents are written by python-docx (with a PNG drawn by Pillow) and
pandoc, the hostile members by :mod:`zipfile`; peak memory is measured in a fresh process
that runs the upload check and the worker's ingest (the kernel's high-water mark)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile

import format_fixtures as fx
import pytest
from lxml import etree
from store_helpers import ROOT

from homer.reading.formats import check_sectioned_upload, read_sectioned
from homer.reading.sources import DocumentError

CHUNK = b"\0" * 2**20


def refused(kind: str, data: bytes) -> str:
    with pytest.raises(DocumentError) as caught:
        read_sectioned(kind, data)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def picture_docx() -> bytes:
    """A Word document with a heading, two paragraphs and a picture, written by python-docx."""
    import docx
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (24, 24), "navy").save(png, "PNG")
    png.seek(0)
    document = docx.Document()
    document.add_heading("Chapter 1. Loomings", 1)
    document.add_paragraph("Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail.")
    document.add_picture(png)
    document.add_paragraph("It is a way I have of driving off the spleen and regulating the circulation.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def picture_member(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return next(name for name in archive.namelist() if name.startswith("word/media/"))


@pytest.fixture(scope="module")
def bomb(picture_docx) -> tuple[bytes, str]:
    """The document with its picture replaced by 1 GiB of zeros, deflated in chunks by
    zipfile (level 1: a few seconds; about 4.5 MB), its sizes still true."""
    name = picture_member(picture_docx)
    out = io.BytesIO(fx.rewrite_zip(picture_docx, replace={name: None}))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(name, "w") as stream:
            for _ in range(1024):
                stream.write(CHUNK)
    return out.getvalue(), name


def compressed_size(data: bytes, name: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.getinfo(name).compress_size


READ = """
import sys, json
sys.path.insert(0, "tests")
from store_helpers import peak_rss_bytes
from homer.reading.formats import check_sectioned_upload
from homer.reading.formats.zipsafe import ZipLimits
from homer.reading.sources import DocumentError, read_document
data = open(sys.argv[1], "rb").read()
limits = ZipLimits(**json.loads(sys.argv[2]))
before = peak_rss_bytes()
out = {}
try:
    check_sectioned_upload("docx", data, limits)
    out["upload"] = "accepted"
    out["text"] = read_document("upload.docx", data=data, max_chars=4_000_000, zip_limits=limits).text
except DocumentError as exc:
    out["refused"] = str(exc)
out["grew_mib"] = (peak_rss_bytes() - before) / 2**20
out["peak_mib"] = peak_rss_bytes() / 2**20
print(json.dumps(out))
"""


def read_in_a_process(data: bytes, tmp_path, **limits) -> dict:
    """The upload request's check of ``data`` (as ``app.library.check_upload`` runs it for a
    .docx) and the worker's reading of it (``homer.reading.sources.read_document``, as
    ``app.ingest.ingest_bytes`` calls it), within the archive ``limits`` (fields of
    :class:`ZipLimits`; the defaults otherwise), in a fresh process: what came of it, and its
    peak memory (``grew_mib``: above what the imports took)."""
    upload = tmp_path / "upload.docx"
    upload.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-c", READ, str(upload), json.dumps(limits)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- finding 4: a zip bomb in a part python-docx read -----------------------------------------
@pytest.mark.slow
def test_a_picture_that_declares_1000_bytes_and_inflates_to_1_gib_is_refused_at_upload(bomb, tmp_path):
    data, name = bomb
    liar = fx.lie_about_size(data, name, 1000)
    assert len(liar) < 8 * 2**20  # under the 50 MB upload limit
    figures = read_in_a_process(liar, tmp_path)
    # refused in the upload request, from the zip directory alone: nothing was inflated
    assert figures.get("refused") == (
        f"the DOCX member {name} declares 1,000 bytes uncompressed but holds "
        f"{compressed_size(liar, name) / 2**20:.1f} MB compressed: its declared size is false (a zip bomb?)"
    ), figures
    assert "upload" not in figures
    assert figures["grew_mib"] < 64, figures  # it peaked at 2 078 MiB inside python-docx's zipfile read


def test_a_picture_bomb_with_a_plausible_size_is_never_inflated(bomb, tmp_path):
    """The picture declares as many bytes as it carries compressed (ratio 1: nothing for the
    directory to catch) and still inflates to 1 GiB: python-docx is given the package without
    it, so the document reads and the memory stays flat."""
    data, name = bomb
    plausible = fx.lie_about_size(data, name, compressed_size(data, name))
    figures = read_in_a_process(plausible, tmp_path)
    assert figures.get("upload") == "accepted" and "refused" not in figures, figures
    assert "Call me Ishmael" in figures["text"] and "regulating the circulation" in figures["text"]
    assert figures["grew_mib"] < 128 and figures["peak_mib"] < 1024, figures


def test_an_xml_part_that_inflates_past_its_declared_size_is_refused_while_reading(picture_docx):
    """The parts python-docx parses are read through the bounded reader: one that declares
    what it carries compressed but inflates to 12 MB stops at its declared size (and the
    checksum of what it yielded then fails)."""
    body = fx.member(picture_docx, "word/document.xml").replace(b"<w:body>", b"<w:body>" + b"<w:p/>" * 2_000_000)
    bloated = fx.rewrite_zip(picture_docx, replace={"word/document.xml": body})
    liar = fx.lie_about_size(bloated, "word/document.xml", compressed_size(bloated, "word/document.xml"))
    check_sectioned_upload("docx", liar)  # the directory is consistent: the upload check cannot tell
    assert refused("docx", liar).startswith("the DOCX is a damaged zip archive (word/document.xml: Bad CRC-32")


def tiny_elements(count: int, seed: int = 7) -> bytes:
    """``count`` empty elements with random two-letter names (``<qx/>``): 5 bytes each,
    about 120 bytes each as a tree; random enough to deflate only about 3:1."""
    import random

    letters = random.Random(seed).randbytes(2 * count).translate(bytes(97 + i % 26 for i in range(256)))
    out = bytearray(b"<xx/>" * count)
    out[1::5] = letters[0::2]
    out[2::5] = letters[1::2]
    return bytes(out)


@pytest.mark.slow
def test_xml_dense_with_elements_is_refused_before_it_is_parsed(picture_docx, tmp_path):
    """Within every zip limit, 64 MB of ``<qx/>`` is 13 million elements and 1.8 GB as a
    tree: what the parts would take is estimated from their bytes and bounded. Here 4 MB
    (800 000 elements, about 100 MB as a tree) against a limit lowered to 64 MB."""
    body = fx.member(picture_docx, "word/document.xml").replace(b"<w:body>", b"<w:body>" + tiny_elements(800_000))
    dense = fx.rewrite_zip(picture_docx, replace={"word/document.xml": body})
    figures = read_in_a_process(dense, tmp_path, max_parse_bytes=64 * 2**20)  # the app's HOMER_DOCX_MAX_PARSE_MB=64
    assert figures.get("upload") == "accepted", figures
    message = figures["refused"]
    assert re.fullmatch(
        r"the DOCX's XML would take about 10\d\.\d MB of memory to read \(word/document\.xml: "
        r"3\.8 MB, 800,\d{3} elements and attributes\), over the limit of 64\.0 MB",
        message,
    ), message
    assert figures["grew_mib"] < 64, figures
    assert "Call me Ishmael" in read_sectioned("docx", dense).text  # under the default limit it is read


# --- finding 9: the entity check reads the bytes in the parser's encoding -----------------------
XXE = '<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


def reencoded(xml: bytes, encoding: str, declared: str, doctype: str = "") -> bytes:
    """The UTF-8 part ``xml`` in ``encoding`` (Python's codec; "utf-32" and "utf-16" write a
    byte-order mark), declaring ``declared``, with ``doctype`` after the declaration."""
    declaration, _, rest = xml.decode("utf-8").partition("?>")
    declaration, found = re.subn(r"""encoding=["']UTF-8["']""", f'encoding="{declared}"', declaration)
    assert found == 1, declaration
    return (declaration + "?>" + doctype + rest).encode(encoding)


def test_a_utf32_docx_with_a_doctype_is_refused(picture_docx):
    xml = fx.member(picture_docx, "word/document.xml")
    hostile = reencoded(xml, "utf-32", "UTF-32", XXE)
    # what the report saw: libxml2 reads the UTF-32 part, DTD and all, and the bytes show no
    # "<!DOCTYPE" in UTF-8 or UTF-16 — the old check's only markers
    tree = etree.fromstring(hostile, etree.XMLParser(resolve_entities=False)).getroottree()
    assert tree.docinfo.internalDTD is not None
    assert not any(
        marker.encode(codec) in hostile
        for marker in ("<!DOCTYPE", "<!ENTITY")
        for codec in ("utf-8", "utf-16-le", "utf-16-be")
    )
    docx = fx.rewrite_zip(picture_docx, replace={"word/document.xml": hostile})
    assert refused("docx", docx) == (
        "the DOCX's word/document.xml is XML in UTF-32-LE, not UTF-8 or UTF-16 as a DOCX "
        "must be: refused (in other encodings an entity declaration can hide)"
    )
    # not only with a DOCTYPE: a part must be UTF-8 or UTF-16 (big-endian, or without a mark, alike)
    for codec in ("utf-32-be", "utf-32-le"):
        plain = fx.rewrite_zip(picture_docx, replace={"word/document.xml": reencoded(xml, codec, "UTF-32")})
        assert f"is XML in {codec.upper()}, not UTF-8 or UTF-16" in refused("docx", plain)
    # UTF-7 starts as ASCII: the declaration decides, and "<!" may be written "+ADwAIQ-" in it
    head, _, rest = reencoded(fx.member(picture_docx, "word/styles.xml"), "utf-7", "UTF-7").partition(b"?>")
    styles = head + b"?>" + XXE.replace("<!", "+ADwAIQ-").encode("ascii") + rest
    assert b"<!" not in styles
    assert etree.fromstring(styles, etree.XMLParser(resolve_entities=False)).getroottree().docinfo.internalDTD
    utf7 = fx.rewrite_zip(picture_docx, replace={"word/styles.xml": styles})
    assert refused("docx", utf7).startswith("the DOCX's word/styles.xml is XML in UTF-7, not UTF-8 or UTF-16")
    # a DOCTYPE in the relationships or the content types is looked for there too
    rels = fx.member(picture_docx, "word/_rels/document.xml.rels")
    sixteen = fx.rewrite_zip(
        picture_docx,
        replace={
            "word/_rels/document.xml.rels": reencoded(rels, "utf-16-be", "UTF-16", '<!DOCTYPE r [<!ENTITY x "y">]>')
        },
    )
    assert refused("docx", sixteen).startswith("the DOCX's word/_rels/document.xml.rels carries a DOCTYPE")


def test_utf16_docx_parts_are_still_read(picture_docx):
    """UTF-16 is allowed by Office Open XML: with a byte-order mark either way, it reads."""
    for codec in ("utf-16", "utf-16-be"):
        xml = reencoded(fx.member(picture_docx, "word/document.xml"), codec, "UTF-16")
        if codec == "utf-16-be":
            xml = b"\xfe\xff" + xml
        doc = read_sectioned("docx", fx.rewrite_zip(picture_docx, replace={"word/document.xml": xml}))
        assert "Call me Ishmael" in doc.text and doc.labels == ["Chapter 1. Loomings"]


@fx.needs_pandoc
def test_epub_parts_in_other_encodings_are_checked_in_them(tmp_path):
    """An EPUB is read through the bounded reader only (nothing else opens it); its XML is
    looked at in the parser's encoding too: an entity declaration in UTF-32 is found, and
    UTF-7 — where it could hide — is refused."""
    epub = fx.pandoc(fx.BOOK, "epub", tmp_path)
    chapter = "EPUB/text/ch001.xhtml"
    xxe32 = fx.XXE_XHTML.decode().encode("utf-32")
    assert refused("epub", fx.rewrite_zip(epub, replace={chapter: xxe32})) == (
        f"the EPUB's {chapter} declares XML entities, which are refused (they can read local files or expand "
        f"without bound)"
    )
    utf7 = fx.XXE_XHTML.decode().replace('encoding="UTF-8"', 'encoding="UTF-7"').encode("utf-7")
    assert refused("epub", fx.rewrite_zip(epub, replace={chapter: utf7})) == (
        f"the EPUB's {chapter} is XML in UTF-7, which is refused (only UTF-8, UTF-16, UTF-32 and ASCII-based "
        f"encodings are read: in others an entity declaration can hide)"
    )
    latin = fx.member(epub, chapter).decode().replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    assert (
        "Call me Ishmael"
        in read_sectioned("epub", fx.rewrite_zip(epub, replace={chapter: latin.encode("latin-1", "replace")})).text
    )  # an ASCII-based declared encoding still reads
