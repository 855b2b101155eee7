"""Scanned PDFs read by OCR (homer.reading.formats.ocr through homer.reading.sources.read_pdf): fixtures
made by real tools — a text PDF printed by Chromium (pypdf's own text operators where
Chromium is missing), rasterised at 300 dpi by Poppler's pdftoppm and wrapped back into a
PDF without a text layer by Pillow — then the page map, mixed PDFs, progress, every
refusal, and an upload through the worker to a focused answer whose source names the page."""

from __future__ import annotations

import html
import io
import re
import shutil
import subprocess
import time

import pytest
from conftest import tiny_tokenizer
from store_helpers import FAST, text_pdf

from app.ingest import IngestError, ingest_bytes
from app.settings import configured

PAGES = [  # page 1 holds over 60 words: one passage of the index of its own (storage.passages)
    "The lighthouse keeper Ada trimmed the wick every evening before the ships came home. "
    "Her lamp burned through the winter storms and the long grey autumn of that year. "
    "She wrote the weather in her log each morning, counted the barrels of oil in the cellar, "
    "and mended the nets that the fishermen left by her door. On clear nights she could see "
    "the lights of the town across the bay, and on foggy nights she rang the bell.",
    "The harbour master Bram kept a zyzzogeton in a glass jar on the windowsill of the "
    "customs house, and every sailor who landed asked him about it.",
    "At dawn the fishing boats went out past the breakwater, and the gulls followed them "
    "over the cold water until the sun was high.",
]


def _tesseract_ready() -> str | None:
    if shutil.which("tesseract") is None:
        return "Tesseract is not installed (Debian: tesseract-ocr tesseract-ocr-eng)"
    langs = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split()
    if "eng" not in langs:
        return "Tesseract has no English data (Debian: tesseract-ocr-eng)"
    if shutil.which("pdftoppm") is None:
        return "pdftoppm is not installed (Debian: poppler-utils), needed to make the scanned fixtures"
    return None


pytestmark = pytest.mark.skipif(_tesseract_ready() is not None, reason=_tesseract_ready() or "")


def printed_pdf(pages: list[str], folder) -> bytes:
    """A text PDF of ``pages`` (one per page) printed by headless Chromium from an HTML page;
    where Chromium is missing, pypdf's text operators (benchmarks.evaluation.pdf)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return text_pdf(pages, font_size=20)
    body = "".join(f'<p style="page-break-after: always">{html.escape(text)}</p>' for text in pages)
    source, out = folder / "pages.html", folder / "pages.pdf"
    source.write_text(f'<html><body style="font-family: serif; font-size: 20pt; margin: 1in">{body}</body></html>')
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--print-to-pdf={out}",
            source.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return out.read_bytes()


def scanned(pdf: bytes, folder, dpi: int = 300) -> bytes:
    """A scan of ``pdf``: the benchmark's own fixture maker (pdftoppm, then Pillow)."""
    from benchmarks.ocr import scan

    return scan(pdf, folder, dpi, timeout=120)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """(the printed 3-page text PDF, a scan of its first two pages, a mixed PDF: printed page
    1, scanned page 2, printed page 3)."""
    from pypdf import PdfReader, PdfWriter

    folder = tmp_path_factory.mktemp("ocr")
    printed = printed_pdf(PAGES, folder)
    assert len(PdfReader(io.BytesIO(printed)).pages) == 3
    first_two = PdfWriter()
    for page in PdfReader(io.BytesIO(printed)).pages[:2]:
        first_two.add_page(page)
    two = io.BytesIO()
    first_two.write(two)
    scan = scanned(two.getvalue(), folder)
    mixed = PdfWriter()
    text_pages, scan_pages = PdfReader(io.BytesIO(printed)).pages, PdfReader(io.BytesIO(scan)).pages
    for page in (text_pages[0], scan_pages[1], text_pages[2]):
        mixed.add_page(page)
    out = io.BytesIO()
    mixed.write(out)
    return printed, scan, out.getvalue()


@pytest.fixture(scope="module")
def read_scan(fixtures):
    """The scan ingested once, with tight ingest seconds (only the OCR allowance lets it
    through) and its progress messages."""
    _, scan, _ = fixtures
    seen = []
    # OCR of two pages takes longer than 1 s: the allowance extends it
    with configured(ingest={"ingest_seconds": 1, "ocr_page_seconds": 60}):
        started = time.monotonic()
        doc = ingest_bytes(scan, "scan.pdf", tiny_tokenizer(), progress=seen.append)
        seconds = time.monotonic() - started
    return doc, seen, seconds


@pytest.mark.slow
def test_the_fixtures_are_a_scan_without_text_and_a_mixed_pdf(fixtures):
    from pypdf import PdfReader

    printed, scan, mixed = fixtures
    assert all(
        words(page.extract_text()) >= words(text) - {"s"}
        for page, text in zip(PdfReader(io.BytesIO(printed)).pages, PAGES)
    )
    assert [page.extract_text().strip() for page in PdfReader(io.BytesIO(scan)).pages] == ["", ""]
    assert [bool(page.extract_text().strip()) for page in PdfReader(io.BytesIO(mixed)).pages] == [True, False, True]


@pytest.mark.slow
def test_a_scanned_pdf_is_read_by_ocr_with_its_page_map_and_progress(read_scan):
    doc, seen, seconds = read_scan
    assert seconds > 1  # past HOMER_INGEST_SECONDS=1: the deadline grew by the OCR allowance
    assert doc.kind == "pdf" and len(doc.page_starts) == 2
    assert seen == ["OCR page 1/2", "OCR page 2/2"]
    page_one, page_two = doc.text[: doc.page_starts[1]], doc.text[doc.page_starts[1] :]
    assert words(PAGES[0]) <= words(page_one) and words(PAGES[1]) <= words(page_two), doc.text
    assert doc.page_of(doc.text.index("Ada")) == 1 and doc.page_of(doc.text.index("zyzzogeton")) == 2
    assert doc.passages and doc.passages[-1][3] == 2 and doc.token_count > 0


@pytest.mark.slow
def test_a_mixed_pdf_keeps_its_text_pages_and_reads_the_scanned_one(fixtures):
    from pypdf import PdfReader

    from homer.reading.sources import read_pdf

    printed, _, mixed = fixtures
    seen = []
    doc = read_pdf(mixed, progress=seen.append)
    assert doc.ocr_pages == [2] and seen == ["OCR page 1/1"] and len(doc.page_starts) == 3
    layer = [page.extract_text() for page in PdfReader(io.BytesIO(printed)).pages]
    pages = [doc.text[doc.page_starts[i] : doc.page_starts[i + 1]].rstrip("\n") for i in range(2)]
    assert pages[0] == layer[0]  # the text layer, untouched
    assert doc.text[doc.page_starts[2] :] == layer[2].rstrip()
    assert words(PAGES[1]) <= words(pages[1])


def test_the_upload_request_lets_a_scan_through_to_the_worker(fixtures):
    from app.library import check_upload

    check_upload(fixtures[1], "scan.pdf")  # no text layer is not a reason to refuse at upload


def test_without_tesseract_a_scan_is_refused_saying_what_to_install(fixtures, configure):
    from homer.reading.sources import read_pdf

    printed, scan, mixed = fixtures
    configure(ocr={"tesseract": "/nonexistent/tesseract"})
    with pytest.raises(IngestError) as info:
        ingest_bytes(scan, "scan.pdf")
    assert str(info.value) == (
        "scan.pdf: this PDF is scanned (no text layer) and OCR is not available: "
        "install Tesseract (Debian: tesseract-ocr tesseract-ocr-eng)"
    )
    # a mixed PDF is still read: its text pages, without the scanned one
    doc = read_pdf(mixed, ocr_command="/nonexistent/tesseract")
    assert doc.ocr_pages == [] and "Ada" in doc.text and "zyzzogeton" not in doc.text
    configure(ocr={"tesseract": "tesseract", "language": "xyz"})
    with pytest.raises(
        IngestError,
        match=r"OCR is not available: install Tesseract's xyz language data "
        r"\(Debian: tesseract-ocr-xyz\)$",
    ):
        ingest_bytes(scan, "scan.pdf")


def test_ocr_turned_off_refuses_a_scan_as_before(fixtures, configure):
    configure(ocr={"enabled": False})
    with pytest.raises(
        IngestError,
        match=r"^scan\.pdf: the PDF has no text layer \(scanned images only\?\) "
        r"and OCR is turned off$",
    ):
        ingest_bytes(fixtures[1], "scan.pdf")
    assert "zyzzogeton" not in ingest_bytes(fixtures[2], "mixed.pdf").text  # text pages only


def test_the_ocr_page_and_time_limits_refuse_a_long_scan(fixtures, configure):
    configure(ingest={"ocr_max_pages": 1})
    with pytest.raises(IngestError, match=r"the PDF has 2 scanned pages \(no text layer\), over the OCR limit of 1$"):
        ingest_bytes(fixtures[1], "scan.pdf")
    configure(ingest={"ocr_max_pages": 200, "ocr_page_seconds": 0.05})
    started = time.monotonic()
    with pytest.raises(
        IngestError,
        match=r"the PDF has no text layer, and the OCR of pages 1, 2 took over 0\.05 s "
        r"\(the limit per page\)$",
    ):
        ingest_bytes(fixtures[1], "scan.pdf")
    assert time.monotonic() - started < 10  # Tesseract was stopped, not waited for
    doc = ingest_bytes(fixtures[2], "mixed.pdf")  # a page stopped at the limit keeps its (empty) text layer
    assert "Ada" in doc.text and "zyzzogeton" not in doc.text and len(doc.page_starts) == 3


def test_a_page_claiming_huge_images_is_refused_before_it_is_rendered():
    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, NumberObject, StreamObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    image = StreamObject()
    image.set_data(b"\x00" * 64)
    image.update(
        {
            NameObject("/Type"): NameObject("/XObject"),
            NameObject("/Subtype"): NameObject("/Image"),
            NameObject("/Width"): NumberObject(40000),
            NameObject("/Height"): NumberObject(40000),
            NameObject("/ColorSpace"): NameObject("/DeviceGray"),
            NameObject("/BitsPerComponent"): NumberObject(8),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/XObject"): DictionaryObject({NameObject("/Im0"): writer._add_object(image)})}
    )
    content = StreamObject()
    content.set_data(b"q 612 0 0 792 0 0 cm /Im0 Do Q")
    page[NameObject("/Contents")] = writer._add_object(content)
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(IngestError, match=r"page 1 holds images of 1600 million pixels, over the limit of 150 million"):
        ingest_bytes(out.getvalue(), "bomb.pdf")


def test_the_benchmark_character_error_rate_on_one_page(read_scan):
    from benchmarks.ocr import cer, normalise

    assert cer("abcd", "abed") == 0.25 and cer("a  b\n c", "a b c") == 0.0
    assert normalise(" The\n\nkeeper  lit\tit ") == "The keeper lit it"
    doc, _, _ = read_scan
    assert cer(PAGES[0], doc.text[: doc.page_starts[1]]) <= 0.03


@pytest.mark.slow
def test_a_scanned_upload_is_answered_with_its_page_as_the_source(fixtures, tmp_path, model_dir, monkeypatch):
    from app import tasks
    from app.chat import ChatService
    from homer.generation import GenerationSettings
    from storage import Store

    store = Store(tmp_path / "store")
    seen = []
    progress = tasks.Heartbeat.progress

    def recording(self, fraction, message, force=False):  # the real heartbeat, its messages kept
        seen.append(message)
        return progress(self, fraction, message, force)

    monkeypatch.setattr(tasks.Heartbeat, "progress", recording)
    job = tasks.submit_file(store, lambda job_id: None, fixtures[1], "harbour.pdf", str(model_dir), FAST)
    assert tasks.run_build(store, job["id"]) == "done", store.jobs.get(job["id"])
    assert [m for m in seen if m.startswith("OCR")] == ["OCR page 1/2", "OCR page 2/2"]
    assert seen.index("reading the document") < seen.index("OCR page 1/2")
    document_id = store.jobs.get(job["id"])["document_id"]
    assert store.document(document_id)["pages"] == 2
    service = ChatService(store)
    *_, (shown, stats) = service.ask(
        "s",
        document_id,
        "Where was the zyzzogeton kept?",
        str(model_dir),
        GenerationSettings(max_new_tokens=4),
        focus="passages",
    )
    sources = shown.split("\n\nSources:\n", 1)[1]
    first = sources.splitlines()[0]
    assert "p. 2" in first and "zyzzogeton" in first, shown
    assert stats["passages"][0]["page"] == 2


def noise_pdf(pages: int, side: int = 730, size: float = 216) -> bytes:
    """``pages`` pages of ``size`` points square, each drawing the one shared image of
    ``side``² gray noise (Flate: noise does not compress, so 730² is 533 KB for all pages)."""
    import random
    import zlib

    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, NumberObject, StreamObject

    writer = PdfWriter()
    image = StreamObject()
    image._data = zlib.compress(random.Random(0).randbytes(side * side))
    image.update(
        {
            NameObject("/Type"): NameObject("/XObject"),
            NameObject("/Subtype"): NameObject("/Image"),
            NameObject("/Width"): NumberObject(side),
            NameObject("/Height"): NumberObject(side),
            NameObject("/ColorSpace"): NameObject("/DeviceGray"),
            NameObject("/BitsPerComponent"): NumberObject(8),
            NameObject("/Filter"): NameObject("/FlateDecode"),
        }
    )
    image_ref = writer._add_object(image)
    content = StreamObject()
    content.set_data(f"q {size} 0 0 {size} 0 0 cm /Im0 Do Q".encode())
    content_ref = writer._add_object(content)
    for _ in range(pages):
        page = writer.add_blank_page(size, size)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/XObject"): DictionaryObject({NameObject("/Im0"): image_ref})}
        )
        page[NameObject("/Contents")] = content_ref
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.slow
def test_a_scan_of_noise_stops_after_its_first_empty_pages(fixtures, tmp_path, model_dir, monkeypatch):
    """200 pages sharing one 533 KB noise image held a build lane for about 8 minutes before
    OCR found nothing; now the build stops after the first ``HOMER_OCR_EMPTY_PAGES`` (8) and
    says so in one line. A mixed PDF whose scanned pages are noise keeps its text pages."""
    from pypdf import PdfReader, PdfWriter

    from app import tasks
    from app.library import check_upload
    from homer.reading.formats.ocr import readable
    from homer.reading.sources import read_pdf
    from storage import Store

    noise = noise_pdf(200)
    assert len(noise) < 600_000
    check_upload(noise, "noise.pdf")  # passes the upload request, as before: the build lane decides
    store = Store(tmp_path / "store")
    seen = []
    progress = tasks.Heartbeat.progress

    def recording(self, fraction, message, force=False):  # the real heartbeat, its messages kept
        seen.append(message)
        return progress(self, fraction, message, force)

    monkeypatch.setattr(tasks.Heartbeat, "progress", recording)
    job = tasks.submit_file(store, lambda job_id: None, noise, "noise.pdf", str(model_dir), FAST)
    started = time.monotonic()
    assert tasks.run_build(store, job["id"]) == "failed"
    seconds = time.monotonic() - started
    error = store.jobs.get(job["id"])["error"]
    assert error == (
        "noise.pdf: the PDF has no text layer and OCR found no text on the first 8 of its 200 scanned "
        "pages (noise or photos?): stopped there"
    ), error
    assert [m for m in seen if m.startswith("OCR")] == [f"OCR page {i}/200" for i in range(1, 9)]
    assert seconds < 120, seconds  # 8 pages (about 2 s each here), not 200 (8 minutes)
    assert store.documents() == []

    # a text page, then noise: OCR stops after the first 2 noise pages, the text page is kept
    mixed = PdfWriter()
    mixed.add_page(PdfReader(io.BytesIO(fixtures[0])).pages[0])
    for page in PdfReader(io.BytesIO(noise_pdf(5))).pages:
        mixed.add_page(page)
    out = io.BytesIO()
    mixed.write(out)
    heard = []
    doc = read_pdf(out.getvalue(), ocr_empty_pages=2, progress=heard.append)
    assert heard == ["OCR page 1/5", "OCR page 2/5", "OCR stopped: no text on the first 2 of 5 scanned pages"]
    assert doc.ocr_pages == [2, 3] and len(doc.page_starts) == 6 and "Ada" in doc.text
    # what counts as text: a caption does, OCR's fragments of noise do not
    assert readable("Figure 3: The harbour in 1890")
    assert not readable('r\n1\nio\nia\naa\nre.\nee\nie\nants\ni\n"a tet\nis\nwu\n“et\nr\n7\nqe\n1\nre\n> Tr')


@pytest.mark.slow
def test_a_scanned_page_that_takes_minutes_to_draw_is_refused_at_the_render_deadline(tmp_path, configure):
    """A page without a text layer drawing 20 000 page-sized fills goes to OCR, whose 300 dpi
    render took 22 s (200 000 fills) holding the process's one PDFium lock; now it is killed
    at the render deadline (``HOMER_RENDER_SECONDS``, 2 here) and refused in one line, and a
    reader's page renders meanwhile."""
    import threading

    from format_fixtures import fills_pdf

    from homer.reading.formats import render

    configure(render={"seconds": 2})
    other = tmp_path / "other.pdf"
    other.write_bytes(text_pdf(["A page anyone may read while the drawing is cut off."]))
    outcome, drawing = {}, threading.Event()

    def ingest():
        started = time.monotonic()
        try:
            ingest_bytes(fills_pdf(20_000, text=""), "drawing.pdf", progress=lambda message: drawing.set())
        except IngestError as exc:
            outcome["error"] = str(exc)
        outcome["seconds"], outcome["at"] = time.monotonic() - started, time.monotonic()

    worker = threading.Thread(target=ingest)
    worker.start()
    assert drawing.wait(30)  # "OCR page 1/1": the page is being drawn for OCR now
    time.sleep(0.5)
    started = time.monotonic()
    page = render.render_page(other, 0, width=500, max_pixels=4_000_000, text=True)
    meanwhile, done = time.monotonic() - started, time.monotonic()
    worker.join(60)
    assert outcome["error"] == "drawing.pdf: page 1 took over 2 s to render for OCR (the limit per page)"
    assert outcome["seconds"] < 20, outcome  # the deadline, not the minutes the page would take
    assert "anyone may read" in page.text and page.width == 500 and meanwhile < 5
    assert done < outcome["at"]  # not held behind the drawing
