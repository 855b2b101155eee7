"""The sectioned formats — EPUB, DOCX, HTML — read into text with labelled sections, on real
files made by pandoc from public-domain text; and every hostile or broken variant refused
with its one-line reason, in the upload request and in the worker, with nothing stored."""

from __future__ import annotations

import time

import format_fixtures as fx
import pytest
from store_helpers import FAST, text_pdf

from app import library
from app.ingest import IngestError, ingest_bytes
from homer.reading.formats import read_sectioned
from homer.reading.formats.markup import parse_xml
from homer.reading.formats.zipsafe import ZipLimits
from homer.reading.sources import DocumentError, read_document
from storage import Store

pytestmark = fx.needs_pandoc


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The same chapters as EPUB 3, EPUB 2, DOCX and HTML, made by pandoc."""
    folder = tmp_path_factory.mktemp("book")
    return {to: fx.pandoc(fx.BOOK, to, folder) for to in ("epub", "epub2", "docx", "html")}


def read(kind: str, data: bytes, **bounds):
    return read_sectioned(kind, data, **bounds)


def refused(kind: str, data: bytes, **bounds) -> str:
    with pytest.raises(DocumentError) as caught:
        read(kind, data, **bounds)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


EPUB_LABELS = fx.BOOK_LABELS[:3] + ["Chapter 1. Loomings · Notes"] + fx.BOOK_LABELS[3:]  # notes end chapter 1


def assert_the_book(doc, labels: list[str], notes_label: str | None):
    """What every format must give of the book: sections, order, table rows, footnote, link text."""
    where = doc.locations
    text = doc.text
    assert doc.labels == labels
    assert doc.page_starts[0] == 0 and doc.page_starts == sorted(doc.page_starts)
    order = [
        text.index(s)
        for s in ("Call me Ishmael", "Circumambulate", "carpet-bag", "Spouter-Inn, you found", "Cape-Horner")
    ]
    assert order == sorted(order)  # reading order
    assert where.label_at(text.index("Call me Ishmael")) == "Chapter 1. Loomings"
    assert where.label_at(text.index("Circumambulate")) == "Chapter 1. Loomings · The Water-Gazers"
    assert where.label_at(text.index("carpet-bag")) == "Chapter 2. The Carpet-Bag"
    assert where.label_at(text.index("Cape-Horner")) == "Chapter 3. The Spouter-Inn · The Storm"
    assert "Place | Day | Errand" in text and "Manhatto | Saturday | leaving" in text
    assert "New Bedford | Saturday night | waiting for the packet" in text.splitlines()
    assert "damp, drizzly November in my soul" in text  # the footnote, kept as text
    assert "[1]" in text[text.index("watery part") : text.index("watery part") + 40]  # its reference
    if notes_label:
        assert where.label_at(text.index("damp, drizzly")) == notes_label
    assert "Project Gutenberg edition for the rest" in text and "gutenberg.org" not in text  # a link: its text
    assert "SCRIPTMARKER" not in text and "stolen" not in text  # scripts dropped
    assert "white-space" not in text and "{" not in text  # styles dropped
    assert "\ue000" not in text and "  " not in text


def test_epub_sections_follow_the_table_of_contents(book):
    doc = read("epub", book["epub"])
    assert doc.kind == "epub"
    assert_the_book(doc, EPUB_LABELS, "Chapter 1. Loomings · Notes")
    assert doc.text.startswith("Moby-Dick; or, The Whale")  # the title page, first in the spine


def test_epub2_uses_its_ncx_and_a_book_without_table_of_contents_uses_its_headings(book):
    assert_the_book(read("epub", book["epub2"]), EPUB_LABELS, "Chapter 1. Loomings · Notes")
    bare = fx.rewrite_zip(book["epub"], replace={"EPUB/nav.xhtml": None, "EPUB/toc.ncx": None})
    assert_the_book(read("epub", bare), EPUB_LABELS, "Chapter 1. Loomings · Notes")


def test_a_table_of_contents_title_names_the_section_and_the_printed_title_is_text(book):
    nav = fx.member(book["epub"], "EPUB/nav.xhtml").replace(b">Chapter 3. The Spouter-Inn<", b">III. The Inn<")
    doc = read("epub", fx.rewrite_zip(book["epub"], replace={"EPUB/nav.xhtml": nav}))
    assert doc.locations.label_at(doc.text.index("Cape-Horner")) == "III. The Inn · The Storm"
    assert doc.locations.label_at(doc.text.index("Spouter-Inn, you found")) == "III. The Inn"
    assert "Chapter 3. The Spouter-Inn\n\nEntering" in doc.text  # the heading as printed stays in the text


def test_docx_headings_tables_and_footnotes(book):
    doc = read("docx", book["docx"])
    assert doc.kind == "docx"
    assert_the_book(doc, fx.BOOK_LABELS, None)
    # the footnote follows the paragraph that cites it, in that paragraph's section
    at = doc.text.index("[1] Whenever it is a damp")
    assert doc.locations.label_at(at) == "Chapter 1. Loomings"
    assert doc.text.index("regulating the circulation") < at < doc.text.index("insular city")


def test_html_main_text_sections_and_what_is_dropped(book):
    doc = read("html", book["html"])
    assert doc.kind == "html"
    assert_the_book(doc, fx.BOOK_LABELS + ["Notes"], "Notes")
    page = book["html"].replace(
        b"<body>",
        b"""<body><nav><a href="/">NAVMARKER home</a></nav>
        <div hidden>HIDDENMARKER</div><div style="display: none">HIDDENMARKER</div>
        <form><input value="INPUTMARKER"><button>BUTTONMARKER</button></form><img alt="IMGMARKER" src="a.png">
        <style>p { color: red }</style><noscript>NOSCRIPTMARKER</noscript>""",
    )
    text = read("html", page).text
    for marker in (
        "NAVMARKER",
        "HIDDENMARKER",
        "INPUTMARKER",
        "BUTTONMARKER",
        "IMGMARKER",
        "NOSCRIPTMARKER",
        "color: red",
    ):
        assert marker not in text


def test_html_reads_only_the_main_content_when_the_page_marks_it():
    page = b"""<!doctype html><html><head><title>The Whale | Site</title></head><body>
    <header role="banner"><h1>SITE BANNER</h1></header><aside>SIDEBAR advert</aside>
    <main><h1>Loomings</h1><p>Call me Ishmael.</p><h2>The Water-Gazers</h2><p>Circumambulate the city.</p></main>
    <footer>FOOTER copyright</footer></body></html>"""
    doc = read("html", page)
    assert doc.text == "Loomings\n\nCall me Ishmael.\n\nThe Water-Gazers\n\nCircumambulate the city."
    assert doc.labels == ["Loomings", "Loomings · The Water-Gazers"]
    lists = b"""<html><body><h3>Stores</h3><ul><li>biscuit</li><li><p>rum</p><ul><li>grog</li></ul></li></ul>
    <ol start="1"><li>first</li><li>second<br>line two</li></ol><pre>  keep
      this</pre></body></html>"""
    assert read("html", lists).text == (
        "Stores\n\n- biscuit\n\n- rum\n\n- grog\n\n1. first\n\n2. second\nline two\n\n  keep\n      this"
    )


@pytest.mark.parametrize(
    "data,expected",
    [
        (
            '<html><head><meta charset="windows-1252"></head><body><p>caf\u00e9 na\u00efve \u2014 \u20ac5</p></body></html>'.encode(
                "cp1252"
            ),
            "caf\u00e9 na\u00efve \u2014 \u20ac5",
        ),
        (
            '<html><head><meta http-equiv="Content-Type" content="text/html; charset=koi8-r"></head><body><p>\u041a\u0438\u0442'
            "</p></body></html>".encode("koi8-r"),
            "\u041a\u0438\u0442",
        ),
        (
            "<html><body><p>Moby-Dick, caf\u00e9 \u00e0 la cr\u00e8me, na\u00efvet\u00e9 d\u00e9j\u00e0 vu, Th\u00e9r\u00e8se "
            "et No\u00ebl \u00e0 l'h\u00f4tel</p></body></html>".encode("cp1252"),
            "Moby-Dick, caf\u00e9 \u00e0 la cr\u00e8me, na\u00efvet\u00e9 d\u00e9j\u00e0 vu, Th\u00e9r\u00e8se et No\u00ebl "
            "\u00e0 l'h\u00f4tel",
        ),
        ("\ufeff<html><body><p>Ishmael \u00e9</p></body></html>".encode("utf-16"), "Ishmael \u00e9"),
        ("<html><body><p>Ishmael \u00e9 \u2014 UTF-8</p></body></html>".encode("utf-8"), "Ishmael \u00e9 \u2014 UTF-8"),
    ],
    ids=["meta-charset", "http-equiv", "detected", "utf16-bom", "utf8"],
)
def test_html_encoding_from_the_page_or_detection(data, expected):
    assert read("html", data).text == expected


# --- refusals ---------------------------------------------------------------------------------
def test_drm_is_refused_and_font_obfuscation_is_not(book):
    epub = book["epub"]
    drm = fx.rewrite_zip(epub, add={"META-INF/encryption.xml": fx.encryption_xml("EPUB/text/ch001.xhtml")})
    assert refused("epub", drm) == (
        "the EPUB is DRM-protected (1 encrypted file, e.g. EPUB/text/ch001.xhtml); only DRM-free books can be read"
    )
    adept = fx.rewrite_zip(epub, add={"META-INF/rights.xml": fx.ADEPT_RIGHTS})
    assert "DRM-protected (Adobe ADEPT: META-INF/rights.xml)" in refused("epub", adept)
    lcp = fx.rewrite_zip(
        epub,
        add={"META-INF/license.lcpl": b"{}", "META-INF/encryption.xml": fx.encryption_xml("EPUB/text/ch002.xhtml")},
    )
    assert "DRM-protected (Readium LCP, 1 encrypted file" in refused("epub", lcp)
    fonts = fx.rewrite_zip(
        epub,
        add={
            "EPUB/fonts/a.otf": b"\0" * 100,
            "META-INF/encryption.xml": fx.encryption_xml("EPUB/fonts/a.otf", "http://www.idpf.org/2008/embedding"),
        },
    )
    assert set(fx.BOOK_LABELS) <= set(read("epub", fonts).labels)


@pytest.mark.slow
def test_zip_bombs_are_refused_from_the_directory_before_decompressing(book, configure):
    bomb = fx.zip_bomb(book["epub"], "EPUB/text/bomb.xhtml")
    assert len(bomb) < 2 * 2**20  # 200 MB of zeros in a file of a few hundred KB
    started = time.monotonic()
    message = refused("epub", bomb)
    assert "bomb.xhtml expands" in message and "over the limit of 100" in message and "zip bomb" in message
    assert time.monotonic() - started < 2  # nothing was decompressed
    docx_bomb = fx.zip_bomb(book["docx"], "word/media/bomb.bin")
    assert "bomb.bin expands" in refused("docx", docx_bomb)
    limits = ZipLimits(max_ratio=100_000)  # the ratio allowed: the member's size still is not
    assert "bomb.xhtml is 200.0 MB uncompressed, over the limit of 64.0 MB" in refused("epub", bomb, limits=limits)
    limits = ZipLimits(max_ratio=100_000, max_member_bytes=1000 * 2**20, max_total_bytes=100 * 2**20)
    assert "is 200.0 MB uncompressed, over the limit of 100.0 MB (a zip bomb?)" in refused("epub", bomb, limits=limits)
    assert (
        refused("epub", fx.many_members(60), limits=ZipLimits(max_members=50))
        == "the EPUB holds 61 files, over the limit of 50"
    )
    # the app's settings (HOMER_ZIP_MAX_MEMBERS …) are the limits of its uploads, checked at upload and read
    configure(archives={"max_members": 50})
    for call in (
        lambda: library.check_upload(fx.many_members(60), "many.epub"),
        lambda: ingest_bytes(fx.many_members(60), "many.epub"),
    ):
        with pytest.raises(IngestError, match="^many.epub: the EPUB holds 61 files, over the limit of 50$"):
            call()


def test_a_zip_directory_that_lies_is_caught_while_reading(book):
    chapter = "EPUB/text/ch001.xhtml"
    big = fx.member(book["epub"], chapter).replace(b"<p>Call me", b"<p>" + b"Call me Ishmael. " * 250_000 + b"</p><p>")
    honest = fx.rewrite_zip(book["epub"], replace={chapter: big})
    liar = fx.lie_about_size(honest, chapter, 100_000)
    message = refused("epub", liar)  # 4 MB behind a directory that says 100 KB: the read stops at 100 KB
    assert message.startswith(f"the EPUB is a damaged zip archive ({chapter}: Bad CRC-32"), message
    # 1000 bytes declared for 11 KB of deflate: a lie the directory itself gives away
    assert refused("epub", fx.lie_about_size(honest, chapter, 1000)) == (
        f"the EPUB member {chapter} declares 1,000 bytes uncompressed but holds 11 KB compressed: its declared "
        f"size is false (a zip bomb?)"
    )


def test_malformed_epubs_are_refused_with_the_reason(book):
    epub = book["epub"]
    assert refused("epub", b"just some text") == ("the file is not an EPUB (an EPUB is a zip archive; this is not one)")
    assert refused("epub", fx.rewrite_zip(epub, replace={"META-INF/container.xml": None})) == (
        "the EPUB has no META-INF/container.xml (not an EPUB, or a damaged one)"
    )
    broken = fx.rewrite_zip(epub, replace={"EPUB/content.opf": b"<package><manifest><item></package>"})
    assert refused("epub", broken).startswith("the EPUB's package file EPUB/content.opf is not well-formed XML (")
    assert refused("epub", fx.rewrite_zip(epub, replace={"EPUB/content.opf": None})) == (
        "the EPUB's package file EPUB/content.opf is missing"
    )
    no_spine = fx.member(epub, "EPUB/content.opf").replace(b"<spine", b"<notspine").replace(b"</spine>", b"</notspine>")
    assert "has no spine" in refused("epub", fx.rewrite_zip(epub, replace={"EPUB/content.opf": no_spine}))
    truncated = epub[: len(epub) // 2]
    assert refused("epub", truncated).startswith("the EPUB is a damaged zip archive")
    # a chapter that is not well-formed XML is read as HTML, as reading systems do
    sloppy = fx.rewrite_zip(
        epub,
        replace={
            "EPUB/text/ch002.xhtml": b"<html><body><h1>Chapter 2. The Carpet-Bag"
            b"<p>I stuffed a shirt&nbsp;or two<p>into it"
        },
    )
    assert "I stuffed a shirt or two\n\ninto it" in read("epub", sloppy).text  # &nbsp; read, collapsed


def test_entity_attacks_are_refused(book):
    xxe = fx.rewrite_zip(book["epub"], replace={"EPUB/text/ch001.xhtml": fx.XXE_XHTML})
    assert refused("epub", xxe) == (
        "the EPUB's EPUB/text/ch001.xhtml declares XML entities, which are refused "
        "(they can read local files or expand without bound)"
    )
    started = time.monotonic()
    with pytest.raises(DocumentError, match="declares XML entities"):
        parse_xml(fx.BILLION_LAUGHS, "the test document")
    assert time.monotonic() - started < 1
    laughs = fx.rewrite_zip(book["docx"], replace={"word/document.xml": fx.BILLION_LAUGHS})
    assert refused("docx", laughs).startswith("the DOCX's word/document.xml carries a DOCTYPE or entity declarations")
    container = fx.member(book["epub"], "META-INF/container.xml").replace(
        b"<container", b'<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n<container'
    )
    assert "container.xml declares XML entities" in refused(
        "epub", fx.rewrite_zip(book["epub"], replace={"META-INF/container.xml": container})
    )
    page = read(
        "html", b'<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><html><body><p>a &xxe; b</p></body></html>'
    )
    assert "root:" not in page.text  # HTML has no entity declarations: nothing is read


def test_docx_that_is_not_one_is_refused(book):
    assert refused("docx", fx.password_protected_docx()) == "the DOCX is password-protected (encrypted)"
    assert refused("docx", fx.old_word_doc()).startswith("the file is an old Word document (.doc)")
    assert refused("docx", fx.rewrite_zip(book["docx"], replace={"word/document.xml": None})) == (
        "the DOCX has no word/document.xml (not a Word document, or a damaged one)"
    )
    types = fx.member(book["docx"], "[Content_Types].xml").replace(
        b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml",
        b"application/vnd.ms-word.document.macroEnabled.main+xml",
    )
    assert "macro-enabled Word document (.docm)" in refused(
        "docx", fx.rewrite_zip(book["docx"], replace={"[Content_Types].xml": types})
    )
    sheet = fx.rewrite_zip(book["docx"], rename={"word/document.xml": "xl/workbook.xml"})
    assert refused("docx", sheet) == "the file is an Excel workbook (XLSX), not a DOCX (wrong file extension?)"
    broken = fx.rewrite_zip(book["docx"], replace={"word/document.xml": b"<w:document><w:body><w:p>"})
    assert refused("docx", broken).startswith("the DOCX holds malformed XML")


def test_wrong_extensions_say_what_the_file_is(book):
    pdf = text_pdf(["Call me Ishmael."])
    assert refused("docx", pdf) == "the file is a PDF, not a DOCX (wrong file extension?)"
    assert refused("epub", pdf) == "the file is a PDF, not an EPUB (wrong file extension?)"
    assert refused("html", pdf) == "the file is a PDF, not an HTML file (wrong file extension?)"
    assert refused("docx", book["epub"]) == "the file is an EPUB, not a DOCX (wrong file extension?)"
    assert refused("epub", book["docx"]) == "the file is a Word document (DOCX), not an EPUB (wrong file extension?)"
    assert refused("html", book["docx"]) == "the file is a zip archive, not an HTML file (wrong file extension?)"
    assert refused("epub", book["html"]) == "the file is an HTML file, not an EPUB (wrong file extension?)"
    assert refused("html", b"\x89PNG\r\n\x1a\n\x00\x00\x00" * 50) == "the file is binary, not HTML"


def test_documents_without_text_are_refused(book, tmp_path):
    blank = b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head><body><img src="a.png"/></body></html>'
    chapters = {f"EPUB/text/{n}.xhtml": blank for n in ("title_page", "ch001", "ch002", "ch003")}
    assert refused("epub", fx.rewrite_zip(book["epub"], replace=chapters)) == "the EPUB holds no text"
    empty_docx = fx.pandoc("", "docx", tmp_path)
    assert refused("docx", empty_docx) == "the DOCX holds no text"
    assert (
        refused(
            "html",
            b"<html><head><title>Only a title</title><script>var a = 1;</script></head>"
            b"<body><img src='a.png'></body></html>",
        )
        == "the HTML file holds no text"
    )


def test_the_character_limit_and_the_deadline_are_kept(book):
    for kind in ("epub", "docx", "html"):
        assert refused(kind, book[kind], max_chars=300).endswith("holds over 300 characters of text (the limit)")
        assert "took too long" in refused(kind, book[kind], deadline=time.monotonic() - 1)
        assert read(kind, book[kind], max_chars=100_000, deadline=time.monotonic() + 60).text


def test_limits_from_the_environment_are_checked(monkeypatch):
    from app.ingest import zip_limits
    from app.settings import SettingsError, read_settings

    monkeypatch.setenv("HOMER_ZIP_MAX_MB", "lots")
    with pytest.raises(SettingsError, match="^HOMER_ZIP_MAX_MB must be a number, not 'lots'$"):
        read_settings()
    monkeypatch.setenv("HOMER_ZIP_MAX_MB", "100")
    monkeypatch.setenv("HOMER_DOCX_MAX_PARSE_MB", "64")
    assert zip_limits(read_settings()) == ZipLimits(max_total_bytes=100 * 2**20, max_parse_bytes=64 * 2**20)


# --- through the app ----------------------------------------------------------------------------
def test_read_document_and_ingest_keep_the_sections(book):
    for kind, name in (("epub", "moby.epub"), ("docx", "moby.docx"), ("html", "moby.htm")):
        source = read_document(name, data=book[kind])
        assert source.kind == kind and set(fx.BOOK_LABELS) <= set(source.labels)
        doc = ingest_bytes(book[kind], name)
        assert doc.kind == kind and doc.locations == source.labels and doc.page_starts == source.page_starts
        first = doc.passages[0]
        assert first[0] == 0 and first[2] == 1  # [start, end, first location, last location]
        assert doc.passages[-1][3] == len(doc.locations)


def test_a_large_epub_with_little_text_is_not_counted_by_its_bytes(book):
    """A book's images make its zip large: the character limit counts the text read, not a
    quarter of the archive's bytes."""
    import os

    data = fx.rewrite_zip(book["epub"], add={"EPUB/media/cover.bin": os.urandom(20 * 2**20)})
    assert len(data) > 20 * 2**20
    doc = ingest_bytes(data, "illustrated.epub")
    assert doc.kind == "epub" and len(doc.text) < 100_000


def test_a_pdf_named_as_a_sectioned_format_is_refused_in_the_worker_too(book, tmp_path):
    pdf = fx.pdf_from_html(b"<h1>Report</h1><p>Quarterly figures.</p>", tmp_path)
    with pytest.raises(DocumentError, match="is a PDF, not a DOCX"):
        read_document("report.docx", data=pdf)


def bad_uploads(book) -> dict[str, tuple[bytes, str]]:
    """Upload name -> (bytes, a piece of the reason)."""
    return {
        "drm.epub": (
            fx.rewrite_zip(book["epub"], add={"META-INF/encryption.xml": fx.encryption_xml("EPUB/text/ch001.xhtml")}),
            "DRM-protected",
        ),
        "bomb.epub": (fx.zip_bomb(book["epub"], "EPUB/text/bomb.xhtml"), "zip bomb"),
        "bomb.docx": (fx.zip_bomb(book["docx"], "word/media/zeros.bin"), "zip bomb"),
        "notzip.epub": (b"<html>plain</html>", "not an EPUB"),
        "locked.docx": (fx.password_protected_docx(), "password-protected"),
        "old.docx": (fx.old_word_doc(), "old Word document"),
        "pdf.docx": (text_pdf(["Call me Ishmael."]), "is a PDF, not a DOCX"),
        "nomain.docx": (fx.rewrite_zip(book["docx"], replace={"word/document.xml": None}), "no word/document.xml"),
        "zip.html": (book["docx"], "not an HTML file"),
    }


def worker_only(book) -> dict[str, tuple[bytes, str]]:
    """Bad files whose fault lies past the cheap checks: the worker refuses them."""
    return {
        "xxe.epub": (fx.rewrite_zip(book["epub"], replace={"EPUB/text/ch001.xhtml": fx.XXE_XHTML}), "XML entities"),
        "broken.epub": (
            fx.rewrite_zip(book["epub"], replace={"EPUB/content.opf": b"<package><manifest>"}),
            "not well-formed XML",
        ),
        "laughs.docx": (fx.rewrite_zip(book["docx"], replace={"word/document.xml": fx.BILLION_LAUGHS}), "DOCTYPE"),
        "empty.html": (b"<html><body><script>x()</script></body></html>", "holds no text"),
    }


@pytest.mark.slow
def test_bad_uploads_are_refused_in_the_request_and_nothing_is_stored(book, tmp_path):
    store = Store(tmp_path / "store")

    class Queue:
        def __init__(self):
            self.store, self.calls = store, 0

        def submit_file(self, *args):
            self.calls += 1
            raise AssertionError("a bad file reached the queue")

    queue = Queue()
    for name, (data, reason) in bad_uploads(book).items():
        with pytest.raises(IngestError, match=reason):
            library.check_upload(data, name)
        [line] = library.submit_uploads(queue, [(name, data)], "tiny")
        assert line.startswith(f"✗ {name}: ") and reason in line and "\n" not in line, line
    assert queue.calls == 0 and store.documents() == [] and store.jobs.list() == []
    with pytest.raises(IngestError, match="unsupported file type .docm: use PDF, EPUB, DOCX, HTML, TXT or Markdown"):
        library.check_upload(book["docx"], "macros.docm")
    for name in ("moby.epub", "moby.docx", "moby.html", "moby.xhtml"):  # good files pass the quick check
        library.check_upload(book[name.rsplit(".", 1)[1].replace("xhtml", "html")], name)


@pytest.mark.slow
def test_the_worker_fails_bad_files_with_their_reason_and_stores_nothing(book, tmp_path, model_dir):
    from app import tasks

    store = Store(tmp_path / "store")
    queued = []
    cases = {**bad_uploads(book), **worker_only(book)}
    # a PDF named .docx is refused at upload (above) and in the worker alike
    for name, (data, reason) in cases.items():
        job = tasks.submit_file(store, queued.append, data, name, str(model_dir), FAST)
        assert tasks.run_build(store, job["id"]) == "failed"
        job = store.jobs.get(job["id"])
        assert job["state"] == "failed" and job["error"].startswith(f"{name}: ") and reason in job["error"], job
        assert "\n" not in job["error"]
    assert store.documents() == [] and list((store.root / "uploads").iterdir()) == []
    good = tasks.submit_file(store, queued.append, book["epub"], "moby.epub", str(model_dir), FAST)
    assert tasks.run_build(store, good["id"]) == "done"
    [doc] = store.documents()
    where = store.location_map(doc["id"])
    text = store.document_text(doc["id"])
    assert where.label_at(text.index("Cape-Horner")) == "Chapter 3. The Spouter-Inn · The Storm"
