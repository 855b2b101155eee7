"""OCR of PDF pages without a text layer (scans), page by page, with Tesseract.

:func:`homer.reading.sources.read_pdf` extracts the text layer of every page first; only the pages
left (almost) empty go through here: each is rendered to a grayscale bitmap at 300 dpi by
PDFium (the ``pypdfium2`` wheel) and read by the ``tesseract`` program (a Debian package,
``tesseract-ocr`` with ``tesseract-ocr-eng``), one process per page, with a time limit.

Why these and not the others that were on the table:

* **ocrmypdf** is a whole-file pipeline: it writes a new PDF with an OCR text layer (through
  pikepdf and, for some steps, Ghostscript), which would then be read again with pypdf. It
  can skip pages that have text, but it works on the file as a whole: no progress per page
  that a job can show without a plugin, one time limit for all of it, and a second copy of
  the document on disk.
* **pytesseract** is a thin wrapper over the same ``tesseract`` program, but it keeps the
  program's path in a module global, always passes the process's whole environment to the
  child, caches the version check, and exits the interpreter (``SystemExit``) on a version
  string it cannot parse. The environment matters: Tesseract's OpenMP threads must be
  limited for it alone — on 2 CPU cores shared with other jobs a page took 2–5 s with
  ``OMP_THREAD_LIMIT=1`` and 10–80 s with two threads — and setting that in ``os.environ``
  would reach every other child process too. Running the program ourselves is a dozen
  lines: the image goes in on stdin, the text comes out on stdout, and
  ``subprocess.run(timeout=...)`` kills a page that runs too long.
* **Renderer: pypdfium2** (PDFium, the PDF engine of Chromium, as a wheel with its binary;
  the reader beside the chat renders pages with it too) rather than Poppler's ``pdftoppm``:
  nothing to install beyond Tesseract, a page rendered in ~0.05 s without parsing the file
  again, and the page size known before rendering (so the bitmap's pixels are capped).
  PDFium runs in the worker processes of :mod:`homer.reading.formats.render` (kept between pages),
  each page within a deadline: a page of a few MB of vector fills that took 22 s to draw at
  300 dpi here is killed there and refused in one line, and no lock of this process is held
  meanwhile (the reader beside the chat renders through the same workers). What it is given
  is bounded first as well: the page's content stream by ``read_pdf``'s
  ``max_page_content``, and the pixels of the images it draws (:func:`image_pixels`).

Settings are the caller's, passed to ``read_pdf`` (the app's ``HOMER_OCR``, ``HOMER_TESSERACT``,
``HOMER_OCR_LANG``, :mod:`app.settings`): OCR on or off, the Tesseract program to run (default
:data:`DEFAULT_COMMAND`, ``tesseract`` on the ``PATH``), its language(s) (default
:data:`DEFAULT_LANGUAGE`, ``eng``; ``eng+deu`` for two). The page and time limits are the
ingest's (``app.ingest.IngestLimits``), passed to ``read_pdf`` too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess

log = logging.getLogger(__name__)

DPI = 300
MIN_TEXT_CHARS = 16  # a page whose text layer has fewer letters and digits than this is OCR'd
MAX_RENDER_PIXELS = 50_000_000  # a bigger page is rendered at a lower resolution (A4 at 300 dpi: 8.7 M)
MAX_IMAGE_PIXELS = 150_000_000  # the images one page may draw (an A4 page scanned at 1200 dpi: 140 M)
WAIT_SECONDS = 60.0  # for a free render worker (the reader's users may hold them, each for seconds at most)
INSTALL = "install Tesseract (Debian: tesseract-ocr tesseract-ocr-eng)"
DEFAULT_COMMAND = "tesseract"  # the program: a path or a name on the PATH
DEFAULT_LANGUAGE = "eng"  # Tesseract's language(s): "eng+deu" for two


class OcrError(ValueError):
    """A page that cannot be OCR'd; the message says why, in one line (``homer.reading.sources``
    turns it into a ``DocumentError``: this module imports nothing of the package's)."""


class OcrUnavailable(OcrError):
    """Tesseract (or its language data) is not installed; the message says what to install."""


def real_chars(text: str) -> int:
    """Letters and digits in ``text``: what is left of a page's text once spaces, punctuation
    and stray marks are set aside."""
    return sum(1 for ch in text if ch.isalnum())


def needs_ocr(text: str) -> bool:
    """Whether a page whose text layer is ``text`` is read by OCR instead."""
    return real_chars(text) < MIN_TEXT_CHARS


_WORDS = re.compile(r"[^\W\d_]{3,}")  # runs of three letters or more


def readable(text: str) -> bool:
    """Whether OCR's text of a page reads as text at all: at least :data:`MIN_TEXT_CHARS`
    letters in words of three letters or more, and those at least half of its letters and
    digits. A page of noise comes back empty or as scattered one- and two-letter fragments
    ("r 1 io ia aa re. ee"); a caption ("Figure 3: The harbour in 1890") passes. Used to stop
    OCR early (:func:`homer.reading.sources.read_pdf`), never to drop text that was read."""
    letters = sum(len(word) for word in _WORDS.findall(text))
    return letters >= MIN_TEXT_CHARS and 2 * letters >= real_chars(text)


def _child_env() -> dict:
    """Tesseract's environment: this process's (passed on, not read), its thread limit added."""
    env = dict(os.environ)
    env.setdefault("OMP_THREAD_LIMIT", "1")  # Tesseract's OpenMP threads: one per page is faster on few cores
    return env


def check_tesseract(command: str | None = None, language: str | None = None) -> str:
    """The path of a working Tesseract (``command``, default :data:`DEFAULT_COMMAND`) that has
    ``language``'s data (default :data:`DEFAULT_LANGUAGE`), with the renderer importable;
    :class:`OcrUnavailable` with what to install otherwise."""
    try:
        import pypdfium2  # noqa: F401
    except ImportError:
        raise OcrUnavailable("install the pypdfium2 package (pip install pypdfium2)") from None
    command = (command or "").strip() or DEFAULT_COMMAND
    language = (language or "").strip() or DEFAULT_LANGUAGE
    found = shutil.which(command)
    if found is None:
        log.warning("OCR: Tesseract not found (%s)", command)
        raise OcrUnavailable(INSTALL)
    try:
        listing = subprocess.run(
            [found, "--list-langs"], capture_output=True, timeout=30, env=_child_env(), stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("OCR: %s does not run (%s)", command, exc)
        raise OcrUnavailable(INSTALL) from None
    installed = {line.strip() for line in listing.stdout.decode("utf-8", "replace").splitlines()[1:]}
    missing = [name for name in language.split("+") if name not in installed]
    if listing.returncode != 0 or missing:
        packages = " ".join("tesseract-ocr-" + name.lower().replace("_", "-") for name in missing) or "tesseract-ocr"
        raise OcrUnavailable(f"install Tesseract's {'+'.join(missing) or language} language data (Debian: {packages})")
    return found


def image_pixels(page, depth: int = 0, seen: set | None = None) -> int:
    """Pixels of the images a pypdf ``page`` (or form XObject) draws, from their dictionaries
    (nothing is decoded): what rendering it will have to decode at least."""
    seen = set() if seen is None else seen
    try:
        resources = page.get("/Resources")
        resources = resources.get_object() if resources is not None else None
        objects = resources.get("/XObject") if resources is not None else None
        objects = objects.get_object() if objects is not None else {}
    except Exception:  # a malformed resource dictionary: nothing countable (rendering will say)
        return 0
    total = 0
    for ref in objects.values():
        key = getattr(ref, "idnum", None)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        try:
            obj = ref.get_object()
            subtype = obj.get("/Subtype")
            if subtype == "/Image":
                total += max(0, int(obj.get("/Width", 0))) * max(0, int(obj.get("/Height", 0)))
            elif subtype == "/Form" and depth < 8:
                total += image_pixels(obj, depth + 1, seen)
        except Exception:
            continue
    return total


class PageRenderer:
    """One PDF's pages rendered for OCR, each a grayscale PGM, by the worker processes of
    :mod:`homer.reading.formats.render` within its deadline (``seconds``, default the renderer's): PDFium never
    runs in this process, so a page that takes minutes to draw holds no lock here and is
    killed at the deadline (:meth:`render` refuses it in one line). The PDF's bytes are
    written once to a private temporary file that the workers open (and deleted on
    :meth:`close`)."""

    def __init__(self, data: bytes, seconds: float | None = None, wait: float | None = None):
        import tempfile

        from . import render

        self.seconds = render.DEFAULT_SECONDS if seconds is None else seconds
        self.wait = WAIT_SECONDS if wait is None else wait  # for a free worker (a build waits; nothing is held)
        handle, self.path = tempfile.mkstemp(prefix="homer-ocr-", suffix=".pdf")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
        except BaseException:
            self.close()
            raise

    def render(self, index: int, dpi: int = DPI, max_pixels: int = MAX_RENDER_PIXELS) -> tuple[bytes, int]:
        """Page ``index`` (0-based) as a PGM image at ``dpi`` (lower where the page would
        exceed ``max_pixels``) and the resolution it was rendered at. :class:`OcrError`
        (naming the page) when it is not rendered within the deadline or at all."""
        from . import render

        try:
            shot = render.render_page(
                self.path,
                index,
                dpi=dpi,
                max_pixels=max_pixels,
                grayscale=True,
                image_format="PPM",
                seconds=self.seconds,
                wait=self.wait,
            )
        except render.RenderTimeout:
            raise OcrError(
                f"page {index + 1} took over {self.seconds:g} s to render for OCR (the limit per page)"
            ) from None
        except render.RenderError as exc:
            prefix, message = f"page {index + 1} cannot be rendered", str(exc)
            reason = message[len(prefix) :] if message.startswith(prefix) else f": {message}"
            raise OcrError(f"{prefix} for OCR{reason}") from None
        return shot.data, max(1, round(shot.scale * 72))

    def close(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def recognize(
    image: bytes, dpi: int = DPI, timeout: float | None = None, command: str | None = None, language: str | None = None
) -> str:
    """Tesseract's text of ``image`` (any format Leptonica reads; PGM here), in at most
    ``timeout`` seconds (the process is killed then: :class:`subprocess.TimeoutExpired`), by
    ``command`` in ``language`` (defaults :data:`DEFAULT_COMMAND`, :data:`DEFAULT_LANGUAGE`).
    :class:`OcrError` when Tesseract fails."""
    command = (command or "").strip() or DEFAULT_COMMAND
    language = (language or "").strip() or DEFAULT_LANGUAGE
    result = subprocess.run(
        [command, "stdin", "stdout", "-l", language, "--dpi", str(dpi)],
        input=image,
        capture_output=True,
        timeout=timeout,
        env=_child_env(),
    )
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise OcrError(f"OCR failed ({reason[-1][:200] if reason else f'exit status {result.returncode}'})")
    return clean(result.stdout.decode("utf-8", "replace"))


def clean(text: str) -> str:
    """Tesseract's output as page text: no form feed, no trailing spaces, at most one blank
    line between blocks, no blank lines at either end."""
    lines = [line.rstrip() for line in text.replace("\f", "\n").splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n")
