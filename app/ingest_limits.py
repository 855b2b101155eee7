"""What one upload may cost, and what the document readers are told besides.

:class:`IngestLimits` bounds an upload — the file's size, a PDF's pages and each page's content
and text, the extracted characters, the tokens, the seconds, and the OCR of a scanned PDF —
each limit a setting (:class:`app.settings.IngestSettings`); :func:`ingest_limits` gives the
limits in force. :func:`zip_limits` bounds an EPUB's or DOCX's archive, and
:func:`reading_options` is the rest of what :func:`homer.reading.sources.read_document` is told
(OCR on or off, Tesseract, a page render's deadline). :mod:`app.ingest` reads uploads within them.
"""

from __future__ import annotations

from dataclasses import dataclass

from homer.reading.formats.zipsafe import ZipLimits

from .settings import Settings, load_settings

DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_MAX_PAGES = 2000
DEFAULT_MAX_CHARS = 4_000_000
DEFAULT_MAX_PAGE_CHARS = 100_000
DEFAULT_MAX_PAGE_CONTENT_MB = 16
DEFAULT_MAX_TOKENS = 1_000_000
DEFAULT_INGEST_SECONDS = 120.0
DEFAULT_OCR_MAX_PAGES = 200
DEFAULT_OCR_PAGE_SECONDS = 20.0
DEFAULT_OCR_EMPTY_PAGES = 8


def max_upload_bytes() -> int:
    """The size limit: ``HOMER_MAX_UPLOAD_MB`` (default 50 MB)."""
    return int(load_settings().ingest.max_upload_mb * 2**20)


@dataclass(frozen=True)
class IngestLimits:
    """What one upload may cost. Defaults fit a long book comfortably (a 300k-token book is
    about 1.3 M characters) and refuse what would hold a worker for tens of minutes:

    * ``max_bytes`` — the file (``HOMER_MAX_UPLOAD_MB``, 50);
    * ``max_pages`` — a PDF's pages, checked before extraction (``HOMER_MAX_PAGES``, 2000);
    * ``max_chars`` — the extracted text (``HOMER_MAX_CHARS``, 4 000 000);
    * ``max_page_chars`` — one PDF page's text (``HOMER_MAX_PAGE_CHARS``, 100 000; a dense
      printed page holds about 5 000);
    * ``max_page_content`` — one PDF page's decoded content stream, checked before its text
      is extracted (``HOMER_MAX_PAGE_CONTENT_MB``, 16);
    * ``max_tokens`` — the document in the model's tokens (``HOMER_MAX_TOKENS``, 1 000 000);
    * ``seconds`` — reading, counting and splitting together (``HOMER_INGEST_SECONDS``, 120);
    * ``ocr_max_pages`` — a PDF's pages without a text layer that are read by OCR
      (``HOMER_OCR_MAX_PAGES``, 200), counted after the text layer is read and before any
      page is OCR'd: more is refused;
    * ``ocr_page_seconds`` — the time allowed for OCR per scanned page
      (``HOMER_OCR_PAGE_SECONDS``, 20);
    * ``ocr_empty_pages`` — OCR stops when this many first scanned pages gave no text
      (``HOMER_OCR_EMPTY_PAGES``, 8): a PDF without other text is then refused, a mixed one
      kept with the text it has.

    OCR and the time limit: OCR costs 3–5 s a page at 300 dpi here (2 CPU cores shared with
    other jobs; ``benchmarks/results/ocr.json``: 4.4 s), so an 80-page scan needs 4–6
    minutes, past the 120 s of ``seconds``. So once the scanned pages are counted, the
    deadline grows by ``ocr_page_seconds`` for each of them (an 80-page scan: 120 + 80 × 20
    s), and one page's Tesseract run is stopped after ``ocr_page_seconds`` (that page keeps
    its empty text layer — most likely a photo or noise — and the others are read). The most
    a hostile scan can hold a worker is thus ``seconds + ocr_max_pages × ocr_page_seconds``
    (120 + 200 × 20 s ≈ 69 minutes at the defaults; lower either to shorten it) — for a scan
    whose pages all hold text. A scan of noise or photos, which OCR reads as nothing, stops
    after ``ocr_empty_pages``: 200 pages sharing one 533 KB noise image held a build lane for
    about 8 minutes before OCR gave up, and now cost 8 pages (at most 8 × 20 s; about 3 s a
    page here). Scanned pages count against ``ocr_max_pages`` per upload.
    ``HOMER_OCR=0`` turns OCR off: a PDF without any text layer is then refused."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pages: int = DEFAULT_MAX_PAGES
    max_chars: int = DEFAULT_MAX_CHARS
    max_page_chars: int = DEFAULT_MAX_PAGE_CHARS
    max_page_content: int = DEFAULT_MAX_PAGE_CONTENT_MB * 2**20
    max_tokens: int = DEFAULT_MAX_TOKENS
    seconds: float = DEFAULT_INGEST_SECONDS
    ocr_max_pages: int = DEFAULT_OCR_MAX_PAGES
    ocr_page_seconds: float = DEFAULT_OCR_PAGE_SECONDS
    ocr_empty_pages: int = DEFAULT_OCR_EMPTY_PAGES

    @classmethod
    def from_settings(cls, settings: Settings | None = None, max_bytes: int | None = None) -> "IngestLimits":
        """The limits of ``settings`` (default: the process's); ``max_bytes`` overrides the size."""
        ingest = (settings or load_settings()).ingest
        return cls(
            max_bytes=int(ingest.max_upload_mb * 2**20) if max_bytes is None else max_bytes,
            max_pages=ingest.max_pages,
            max_chars=ingest.max_chars,
            max_page_chars=ingest.max_page_chars,
            max_page_content=int(ingest.max_page_content_mb * 2**20),
            max_tokens=ingest.max_tokens,
            seconds=ingest.ingest_seconds,
            ocr_max_pages=ingest.ocr_max_pages,
            ocr_page_seconds=ingest.ocr_page_seconds,
            ocr_empty_pages=ingest.ocr_empty_pages,
        )

    def pdf(self, deadline: float | None) -> dict:
        """The keyword bounds of :func:`homer.reading.sources.read_pdf`."""
        return {
            "max_pages": self.max_pages,
            "max_chars": self.max_chars,
            "max_page_chars": self.max_page_chars,
            "max_page_content": self.max_page_content,
            "deadline": deadline,
            "ocr_max_pages": self.ocr_max_pages,
            "ocr_page_seconds": self.ocr_page_seconds,
            "ocr_empty_pages": self.ocr_empty_pages,
        }


def ingest_limits(max_bytes: int | None = None) -> IngestLimits:
    """The limits in force: the process's settings (:func:`app.settings.load_settings`)."""
    return IngestLimits.from_settings(max_bytes=max_bytes)


def zip_limits(settings: Settings | None = None) -> ZipLimits:
    """What an EPUB's or DOCX's archive may hold (``HOMER_ZIP_*``, ``HOMER_DOCX_MAX_PARSE_MB``;
    default: the process's settings)."""
    archives = (settings or load_settings()).archives
    return ZipLimits(
        max_members=archives.max_members,
        max_total_bytes=int(archives.max_mb * 2**20),
        max_member_bytes=int(archives.max_member_mb * 2**20),
        max_ratio=archives.max_ratio,
        max_parse_bytes=int(archives.docx_max_parse_mb * 2**20),
    )


def reading_options(settings: Settings | None = None) -> dict:
    """What :func:`homer.reading.sources.read_document` is told besides the limits of an
    upload: the archive limits, OCR on or off, Tesseract's program and languages, and the
    deadline of one page's render (``HOMER_OCR``, ``HOMER_TESSERACT``, ``HOMER_OCR_LANG``,
    ``HOMER_RENDER_SECONDS``; default: the process's settings)."""
    settings = settings or load_settings()
    return {
        "zip_limits": zip_limits(settings),
        "ocr": settings.ocr.enabled,
        "ocr_command": settings.ocr.tesseract,
        "ocr_language": settings.ocr.language,
        "render_seconds": settings.render.seconds,
    }


__all__ = ["IngestLimits", "ingest_limits", "max_upload_bytes", "reading_options", "zip_limits"]
