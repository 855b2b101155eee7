"""Reading a document file into text, with the character offset where each page starts
(so kept tokens can be traced back to pages). PDF via pypdf, its scanned pages by OCR
(:mod:`homer.reading.formats.ocr`); EPUB, DOCX and HTML by :mod:`homer.reading.formats` (labelled sections);
text and Markdown with encoding detection (charset-normalizer)."""

from __future__ import annotations

from pathlib import Path

# Re-exported: callers import them from here (they live apart so that homer.reading.formats can use them).
from .source_document import DocumentError, SourceDocument  # noqa: F401

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text"}
# The sectioned formats, read by :mod:`homer.reading.formats` into text with labelled sections.
SECTIONED_SUFFIXES = {".epub": "epub", ".docx": "docx", ".html": "html", ".htm": "html", ".xhtml": "html"}
SUPPORTED_NAMES = "PDF, EPUB, DOCX, HTML, TXT or Markdown"


def open_pdf(data: bytes):
    """A pypdf reader over ``data``. An encrypted PDF whose *user* password is empty (only an
    owner password set, to forbid printing or copying — every viewer opens it without asking)
    is decrypted and read; one that needs a real password is refused. Raises
    :class:`DocumentError` with a one-line reason."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except DependencyError:
                raise DocumentError("the PDF is encrypted with AES, which this installation cannot decrypt") from None
            if not opened:
                raise DocumentError("the PDF is encrypted (password-protected)")
        return reader
    except DocumentError:
        raise
    except Exception as exc:  # pypdf raises several types on broken files
        raise DocumentError(f"the PDF is corrupt or unreadable ({type(exc).__name__})") from exc


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def _content_bytes(page) -> int:
    """Decoded size of a page's content stream(s): what extracting its text has to parse."""
    from pypdf.generic import ArrayObject

    contents = page.get("/Contents")
    if contents is None:
        return 0
    contents = contents.get_object()
    streams = contents if isinstance(contents, ArrayObject) else [contents]
    return sum(len(stream.get_object().get_data()) for stream in streams)


from dataclasses import dataclass, field  # noqa: E402  (for PdfSource)


@dataclass
class PdfSource(SourceDocument):
    """A PDF's :class:`SourceDocument`, with the pages whose text was read by OCR."""

    ocr_pages: list[int] = field(default_factory=list)  # 1-based pages that went through OCR (scans)


def _ocr_candidate(page, text: str) -> bool:
    """A page left for OCR: its text layer is (almost) empty and it draws something (a page
    without any content stream is blank: nothing to read)."""
    from .formats.ocr import needs_ocr

    if not needs_ocr(text):
        return False
    try:
        return _content_bytes(page) > 0
    except Exception:  # a content stream pypdf cannot decode: the renderer may still draw it
        return True


def read_pdf(
    data: bytes,
    max_pages: int | None = None,
    max_chars: int | None = None,
    max_page_chars: int | None = None,
    max_page_content: int | None = None,
    deadline: float | None = None,
    ocr: bool | None = None,
    ocr_max_pages: int | None = None,
    ocr_page_seconds: float | None = None,
    ocr_empty_pages: int | None = None,
    progress=None,
    ocr_command: str | None = None,
    ocr_language: str | None = None,
    render_seconds: float | None = None,
) -> PdfSource:
    """The text of a PDF, page by page. The bounds (None: unbounded) keep a hostile file from
    holding a worker: ``max_pages`` is checked before any text is extracted; each page's
    decoded content stream is checked against ``max_page_content`` bytes *before* it is
    parsed (a single page can carry a content stream of tens of MB); after each page the
    page's and the running total of characters are checked against ``max_page_chars`` and
    ``max_chars``, and the clock against ``deadline`` (``time.monotonic()``). Many pages may
    share one content stream, so the totals are counted per page, repeats included.

    Scans: the pages whose text layer is (almost) empty but which draw something are then
    read by OCR (:mod:`homer.reading.formats.ocr`: Tesseract's ``ocr_command`` in ``ocr_language``,
    each page rendered within ``render_seconds``; None: the module's defaults), unless ``ocr`` is
    False (None: on): at most ``ocr_max_pages`` of them (more is refused before any is read); the
    deadline grows by ``ocr_page_seconds`` for each, and one page's Tesseract run is stopped
    after ``ocr_page_seconds`` (that page then keeps its text layer, and the others are
    read) or at the deadline (refused); when the first ``ocr_empty_pages`` of them all OCR to
    nothing (noise, photos), OCR stops there: a PDF without any other text is refused saying
    so, a mixed one keeps the text it has. ``progress(message)`` hears "OCR page 3/80" before
    each. The text pages of a mixed PDF keep their text layer. Where Tesseract
    is missing, a PDF without any text is refused saying what to install, and a mixed one is
    read without its scanned pages' text."""
    import time

    reader = open_pdf(data)
    try:
        pages = len(reader.pages)
    except Exception as exc:
        raise DocumentError(f"the PDF is corrupt or unreadable ({type(exc).__name__})") from exc
    if not pages:
        raise DocumentError("the PDF has no pages")
    if max_pages is not None and pages > max_pages:
        raise DocumentError(f"the PDF has {pages} pages, over the limit of {max_pages}")
    texts, total, scanned = [], 0, []
    for number in range(1, pages + 1):
        if deadline is not None and time.monotonic() > deadline:
            raise DocumentError(f"reading the PDF took too long (stopped at page {number} of {pages})")
        try:
            page = reader.pages[number - 1]
            if max_page_content is not None:
                size = _content_bytes(page)
                if size > max_page_content:
                    raise DocumentError(
                        f"page {number} has {_size(size)} of content, over the limit of "
                        f"{_size(max_page_content)} per page"
                    )
            text = page.extract_text() or ""
            if _ocr_candidate(page, text):
                scanned.append(number)
        except DocumentError:
            raise
        except Exception as exc:  # pypdf raises several types on broken files
            raise DocumentError(f"the PDF is corrupt or unreadable ({type(exc).__name__})") from exc
        _check_page_text(text, number, max_page_chars)
        total += len(text) + 2
        if max_chars is not None and total > max_chars:
            raise DocumentError(
                f"the PDF holds over {max_chars:,} characters of text (the limit; stopped at page {number} of {pages})"
            )
        texts.append(text)
    ocr_pages, slow = [], []
    if scanned:
        ocr_pages, slow = _ocr_pages(
            data,
            reader,
            texts,
            scanned,
            ocr,
            ocr_max_pages,
            ocr_page_seconds,
            deadline,
            max_page_chars,
            max_chars,
            progress,
            ocr_empty_pages,
            {"command": ocr_command, "language": ocr_language},
            render_seconds,
        )
    starts, parts, offset = [], [], 0
    for text in texts:
        starts.append(offset)
        parts.append(text + "\n\n")
        offset += len(text) + 2
    full = "".join(parts).rstrip()
    if not full.strip():
        if slow:
            named = ", ".join(map(str, slow[:5])) + (", …" if len(slow) > 5 else "")
            raise DocumentError(
                f"the PDF has no text layer, and the OCR of page{'s' if len(slow) > 1 else ''} "
                f"{named} took over {ocr_page_seconds:g} s (the limit per page)"
            )
        if ocr_pages:
            raise DocumentError(
                f"the PDF has no text layer and OCR found no text on its {len(ocr_pages)} "
                f"scanned page{'s' if len(ocr_pages) > 1 else ''}"
            )
        if scanned and not _ocr_on(ocr):
            raise DocumentError("the PDF has no text layer (scanned images only?) and OCR is turned off")
        raise DocumentError("the PDF has no text layer (scanned images only?)")
    return PdfSource(full, "pdf", starts, ocr_pages=ocr_pages)


def _check_page_text(text: str, number: int, max_page_chars: int | None) -> None:
    if max_page_chars is not None and len(text) > max_page_chars:
        raise DocumentError(
            f"page {number} holds {len(text):,} characters of text, over the limit of {max_page_chars:,} per page"
        )


def _ocr_on(ocr: bool | None) -> bool:
    return True if ocr is None else bool(ocr)


def _ocr_pages(
    data: bytes,
    reader,
    texts: list[str],
    scanned: list[int],
    ocr: bool | None,
    max_pages: int | None,
    page_seconds: float | None,
    deadline: float | None,
    max_page_chars: int | None,
    max_chars: int | None,
    progress,
    empty_pages: int | None = None,
    tesseract: dict | None = None,
    render_seconds: float | None = None,
) -> tuple[list[int], list[int]]:
    """OCR the ``scanned`` pages (1-based) of the PDF into ``texts`` (in place) within the
    bounds of :func:`read_pdf`, by Tesseract's ``command`` in ``language`` (``tesseract``);
    returns (the pages that went through OCR — none when OCR is off or missing —, those of
    them stopped at the per-page limit)."""
    from .formats import ocr as engine

    if not _ocr_on(ocr):
        return [], []
    has_text = any(text.strip() for text in texts)
    try:
        engine.check_tesseract(**(tesseract or {}))
    except engine.OcrUnavailable as exc:
        if has_text:  # a mixed PDF is read as before, without its scanned pages
            return [], []
        raise DocumentError(f"this PDF is scanned (no text layer) and OCR is not available: {exc}") from None
    count = len(scanned)
    if max_pages is not None and count > max_pages:
        raise DocumentError(f"the PDF has {count} scanned pages (no text layer), over the OCR limit of {max_pages}")
    if deadline is not None and page_seconds is not None:
        deadline += count * page_seconds
    try:
        return _ocr_scanned(
            engine,
            data,
            reader,
            texts,
            scanned,
            page_seconds,
            deadline,
            max_page_chars,
            max_chars,
            progress,
            empty_pages,
            tesseract,
            render_seconds,
        )
    except engine.OcrError as exc:  # the renderer's refusals (they name the page)
        raise DocumentError(str(exc)) from None


def _ocr_scanned(
    engine,
    data: bytes,
    reader,
    texts: list[str],
    scanned: list[int],
    page_seconds: float | None,
    deadline: float | None,
    max_page_chars: int | None,
    max_chars: int | None,
    progress,
    empty_pages: int | None = None,
    tesseract: dict | None = None,
    render_seconds: float | None = None,
) -> tuple[list[int], list[int]]:
    """The loop of :func:`_ocr_pages`; returns the pages read and those stopped at the
    per-page limit."""
    import logging
    import subprocess
    import time

    count, slow, found = len(scanned), [], False
    total = sum(len(text) + 2 for text in texts)
    with engine.PageRenderer(data, seconds=render_seconds) as renderer:
        for done, number in enumerate(scanned, 1):
            if progress is not None:
                progress(f"OCR page {done}/{count}")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DocumentError(
                    f"reading the PDF took too long (stopped at the OCR of page {number}, "
                    f"{done} of {count} scanned pages)"
                )
            pixels = engine.image_pixels(reader.pages[number - 1])
            if pixels > engine.MAX_IMAGE_PIXELS:
                raise DocumentError(
                    f"page {number} holds images of {pixels / 1e6:.0f} million pixels, over the "
                    f"limit of {engine.MAX_IMAGE_PIXELS / 1e6:.0f} million per page"
                )
            image, dpi = renderer.render(number - 1)
            per_page = page_seconds is not None and (left is None or page_seconds <= left)
            try:
                text = engine.recognize(image, dpi, timeout=page_seconds if per_page else left, **(tesseract or {}))
            except subprocess.TimeoutExpired:
                if not per_page:
                    raise DocumentError(
                        f"reading the PDF took too long (stopped at the OCR of page {number}, "
                        f"{done} of {count} scanned pages)"
                    ) from None
                # a photo or noise, most likely: the page keeps its text layer
                logging.getLogger(__name__).warning(
                    "OCR of page %d stopped after %g s (the limit per page)", number, page_seconds
                )
                slow.append(number)
                text = ""
            except engine.OcrError as exc:
                raise DocumentError(f"page {number}: {exc}") from None
            except OSError as exc:  # Tesseract gone between the check and now
                raise DocumentError(
                    f"the OCR of page {number} could not run ({exc.strerror}): {engine.INSTALL}"
                ) from None
            found = found or engine.readable(text)
            if engine.real_chars(text) > engine.real_chars(texts[number - 1]):
                _check_page_text(text, number, max_page_chars)
                total += len(text) - len(texts[number - 1])
                if max_chars is not None and total > max_chars:
                    raise DocumentError(
                        f"the PDF holds over {max_chars:,} characters of text (the limit; "
                        f"stopped at the OCR of page {number})"
                    )
                texts[number - 1] = text
            if _nothing_yet(found, done, count, empty_pages, texts, progress):
                return scanned[:done], slow
    return scanned, slow


def _nothing_yet(found: bool, done: int, count: int, empty_pages: int | None, texts: list[str], progress) -> bool:
    """Whether OCR stops after ``done`` of ``count`` scanned pages: the first ``empty_pages``
    gave no readable text (:func:`homer.reading.formats.ocr.readable`: a scan of noise or photos; the
    rest would cost minutes for nothing). A PDF
    without any other text is refused, saying so; a mixed one is kept with the text it has."""
    if found or empty_pages is None or done != empty_pages or done >= count:
        return False
    from .formats.ocr import needs_ocr

    if all(needs_ocr(text) for text in texts):  # no page holds text worth keeping
        raise DocumentError(
            f"the PDF has no text layer and OCR found no text on the first {done} of its {count} "
            f"scanned pages (noise or photos?): stopped there"
        )
    import logging

    logging.getLogger(__name__).warning("OCR stopped: no text on the first %d of %d scanned pages", done, count)
    if progress is not None:
        progress(f"OCR stopped: no text on the first {done} of {count} scanned pages")
    return True


def decode_text(data: bytes) -> str:
    from charset_normalizer import from_bytes

    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError("the file is binary, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        matches = from_bytes(data)
        best = matches.best()
        if best is None:
            raise DocumentError("the file is not text in any known encoding") from None
        # charset-normalizer often ranks a Baltic / Central European code page first for short
        # Western text; prefer cp1252 (a superset of Latin-1's printable range) when it fits as well.
        for match in matches:
            if match.encoding == "cp1252" and (
                "cp1252" in best.could_be_from_charset or match.chaos <= best.chaos + 0.1
            ):
                return str(match)
        return str(best)


def read_document(
    path: str | Path, data: bytes | None = None, progress=None, zip_limits=None, **pdf_limits
) -> SourceDocument:
    """Read a PDF, EPUB, DOCX, HTML, TXT or Markdown file. Raises :class:`DocumentError` with a
    reason. ``pdf_limits``: the bounds (and OCR settings) of :func:`read_pdf`; the sectioned
    formats honour ``max_chars`` and ``deadline`` of them, and an EPUB's or DOCX's archive
    ``zip_limits`` (:class:`homer.reading.formats.zipsafe.ZipLimits`; None: its defaults). Text
    files are bounded by their caller."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    suffix = path.suffix.lower()
    if not data.strip():
        raise DocumentError("the file is empty")
    if suffix in SECTIONED_SUFFIXES:  # before the PDF magic: a PDF named .docx is refused as the upload check does
        from .formats import read_sectioned

        return read_sectioned(
            SECTIONED_SUFFIXES[suffix],
            data,
            max_chars=pdf_limits.get("max_chars"),
            deadline=pdf_limits.get("deadline"),
            limits=zip_limits,
        )
    if suffix == ".pdf" or data.startswith(b"%PDF-"):
        return read_pdf(data, progress=progress, **pdf_limits)  # progress: "OCR page 3/80" of a scan
    if suffix in TEXT_SUFFIXES or suffix == "":
        text = decode_text(data)
        if not text.strip():
            raise DocumentError("the file holds no text")
        if suffix in (".md", ".markdown"):
            from .formats.markdown import markdown_sections

            sections = markdown_sections(text)
            if sections is not None:
                return SourceDocument(text, "markdown", sections[0], sections[1])
            return SourceDocument(text, "markdown")
        return SourceDocument(text, "text")
    raise DocumentError(f"unsupported file type {suffix!r}: use {SUPPORTED_NAMES}")
