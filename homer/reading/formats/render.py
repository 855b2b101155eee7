"""PDF pages rendered by PDFium in worker processes, each render with a deadline.

Why a process, and not PDFium in the app's own threads as before: a page's cost to render is
not known before it is drawn — a one-page PDF of 3.8 MB holding 200 000 vector fills took
115 s in the reader and 22 s at OCR's 300 dpi — and PDFium, once called, cannot be
interrupted from Python; it is not thread-safe either, so every call into it in the process
held one lock, and that page stalled every user's reader and every OCR for two minutes.
Estimating the work from the content stream (operators, fills, their area, images, shadings,
transparency groups, patterns…) would be a second PDF interpreter, and still wrong for the
next kind of expensive page. A child process can be killed at any point: here every render
runs in one, and a page that runs past its deadline (the caller's ``seconds``, default
:data:`DEFAULT_SECONDS`, 5 s; the app's ``HOMER_RENDER_SECONDS``) is killed with its process and refused in one line
(:class:`RenderTimeout`). The app process never calls PDFium itself, so there is no
process-wide PDFium lock left to hold.

The workers are a small pool (:class:`RenderPool`, 2 workers; :func:`configure_pool`, the app's
``HOMER_RENDER_WORKERS``), started on
first use and kept: a normal page costs the pipe round trip on top of the render (about
15 ms here: 108 ms against 91 ms in-process, median of 30), not a process start (about 0.3 s
to import PDFium and Pillow). Each worker
keeps its last document and page open (a reader's page and then its quote's boxes, or OCR's
pages one after another, parse the file once), exits by itself after
:data:`IDLE_SECONDS` without work (memory back; the next call starts another) or within a
second of the app, and has its address space capped (2048 MB; the app's
``HOMER_RENDER_MEMORY_MB``), so a page that would need more fails in the worker, not in the app. A caller waits
for a free worker at most ``wait`` seconds (the reader: its own deadline; then "the page
renderer is busy", :class:`RenderBusy`), so no request holds or waits on a renderer for more
than a few seconds.

The protocol is a line of JSON each way and the image's bytes after the answer's line (no
pickle: a worker that a hostile PDF took over can send the app bytes, never objects).

Run as ``python -m homer.reading.formats.render [MEMORY_MB]`` it is a worker (the pool starts it so)."""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import selectors
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SECONDS = 5.0  # one page's render (the app's HOMER_RENDER_SECONDS); a normal page takes 0.05–0.5 s
DEFAULT_WORKERS = 2  # worker processes per app process (the app's HOMER_RENDER_WORKERS)
DEFAULT_MEMORY_MB = 2048  # a worker's address space (the app's HOMER_RENDER_MEMORY_MB)
START_SECONDS = 60.0  # a worker's start: imports only, not the page (a loaded machine is slow)
IDLE_SECONDS = 300.0  # a worker without work this long exits
MAX_ANSWER_BYTES = 512 * 2**20  # an answer's image (50 M pixels of RGB is 150 MB): more is a broken worker


class RenderError(ValueError):
    """A page that was not rendered; the message says why, in one line."""


class RenderTimeout(RenderError):
    """The page ran past its deadline: its worker was killed."""


class RenderBusy(RenderError):
    """Every worker stayed busy for as long as the caller would wait."""


class NoSuchPage(RenderError):
    """The document has no page of that number."""


def available() -> bool:
    """Whether PDFium (the ``pypdfium2`` wheel) is installed."""
    import importlib.util

    return importlib.util.find_spec("pypdfium2") is not None


@dataclass
class Rendered:
    """A rendered page: the image's bytes (``image_format``), its pixel size, the scale it was
    drawn at (pixels per PDF point), the page's rotation and box (PDF points: left, bottom,
    right, top), the document's page count, and the page's text — one character per PDFium
    character index — when it was asked for (else None)."""

    data: bytes
    width: int
    height: int
    scale: float
    rotation: int
    bbox: tuple[float, float, float, float]
    pages: int
    text: str | None = None


def render_page(
    path,
    index: int,
    *,
    width: int | None = None,
    dpi: float | None = None,
    max_pixels: int,
    grayscale: bool = False,
    image_format: str = "PNG",
    text: bool = False,
    seconds: float | None = None,
    wait: float | None = None,
) -> Rendered:
    """Page ``index`` (0-based) of the PDF at ``path``, drawn ``width`` pixels wide or at
    ``dpi`` (smaller where it would exceed ``max_pixels``), as ``image_format`` ("PNG", or
    "PPM": a binary PGM when ``grayscale``), with its text when ``text``. Within ``seconds``
    (default :data:`DEFAULT_SECONDS`) once a worker is free, waiting for one at most ``wait``
    seconds (default: ``seconds``). Raises :class:`RenderError` (one line)."""
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    request = {
        "op": "render",
        "path": str(Path(path).resolve()),
        "page": int(index),
        "width": width,
        "dpi": dpi,
        "max_pixels": int(max_pixels),
        "gray": bool(grayscale),
        "format": image_format,
        "text": bool(text),
    }
    header, payload = pool().call(request, seconds, seconds if wait is None else wait, index)
    return Rendered(
        payload,
        int(header["width"]),
        int(header["height"]),
        float(header["scale"]),
        int(header["rotation"]),
        tuple(header["bbox"]),
        int(header["pages"]),
        header.get("text"),
    )


def text_rects(
    path, index: int, start: int, count: int, seconds: float | None = None, wait: float | None = None
) -> list[tuple[float, float, float, float]]:
    """PDFium's boxes (left, bottom, right, top in PDF points, one per line) of the ``count``
    characters from ``start`` of page ``index``'s text. Raises :class:`RenderError`."""
    seconds = DEFAULT_SECONDS if seconds is None else seconds
    request = {
        "op": "rects",
        "path": str(Path(path).resolve()),
        "page": int(index),
        "start": int(start),
        "count": int(count),
    }
    header, _ = pool().call(request, seconds, seconds if wait is None else wait, index)
    return [tuple(rect) for rect in header["rects"]]


# --- the app's side: the pool ------------------------------------------------------------------
class _Worker:
    """One worker process, started when first needed (and again after it was killed or
    exited idle)."""

    def __init__(self, memory_mb: float = DEFAULT_MEMORY_MB):
        self.memory_mb = memory_mb
        self.process: subprocess.Popen | None = None

    def call(self, request: dict, seconds: float) -> tuple[dict, bytes]:
        if self.process is None or self.process.poll() is not None:
            self._start()
        try:
            os.write(self.process.stdin.fileno(), json.dumps(request).encode() + b"\n")
        except OSError:  # it exited (idle) between the check and now: once more, fresh
            self._start()
            os.write(self.process.stdin.fileno(), json.dumps(request).encode() + b"\n")
        return self._receive(time.monotonic() + seconds)

    def _start(self) -> None:
        self.kill()
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "homer.reading.formats.render", f"{self.memory_mb:g}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            self._receive(time.monotonic() + START_SECONDS)  # {"ready": true}
        except RenderError as exc:
            self.kill()
            raise RenderError(f"the page renderer did not start ({exc})") from None

    def _receive(self, deadline: float) -> tuple[dict, bytes]:
        fd = self.process.stdout.fileno()
        buffer, header, size = bytearray(), None, 0
        with selectors.DefaultSelector() as waiting:  # not select.select: an app's descriptors pass 1024
            waiting.register(fd, selectors.EVENT_READ)
            while True:
                if header is None and b"\n" in buffer:
                    line, _, rest = bytes(buffer).partition(b"\n")
                    try:
                        header, buffer = json.loads(line), bytearray(rest)
                        size = int(header.get("size") or 0)
                    except (ValueError, TypeError, AttributeError):
                        size = -1
                    if not 0 <= size <= MAX_ANSWER_BYTES:
                        raise RenderError("the page renderer answered nonsense")
                if header is not None and len(buffer) >= size:
                    return header, bytes(buffer[:size])
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RenderTimeout("timed out")
                if waiting.select(left):
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        raise RenderError("the page renderer stopped (it crashed or ran out of memory)")
                    buffer += chunk

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass


class RenderPool:
    """``size`` workers, each with an address space of ``memory_mb``; :meth:`call` takes a free
    one for one request. A worker that runs past the deadline, crashes, or is interrupted
    mid-answer is killed (its page with it) and replaced by a fresh one on its next use; an
    error the worker reports keeps it."""

    def __init__(self, size: int, memory_mb: float = DEFAULT_MEMORY_MB):
        self.size, self.memory_mb = size, memory_mb
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()  # the warm one first; the other idles out
        self._all = [_Worker(memory_mb) for _ in range(size)]
        for worker in self._all:
            self._idle.put(worker)

    def call(self, request: dict, seconds: float, wait: float, index: int) -> tuple[dict, bytes]:
        try:
            worker = self._idle.get(timeout=max(0.0, wait))
        except queue.Empty:
            raise RenderBusy(
                f"the page renderer is busy (waited {wait:g} s for one of its {self.size} workers)"
            ) from None
        try:
            header, payload = worker.call(request, seconds)
        except RenderTimeout:
            worker.kill()
            raise RenderTimeout(f"page {index + 1} took over {seconds:g} s to render (the limit)") from None
        except BaseException:
            worker.kill()
            raise
        finally:
            self._idle.put(worker)
        if header.get("missing"):
            raise NoSuchPage(f"the document has no page {index + 1}")
        if header.get("error"):
            raise RenderError(f"page {index + 1} cannot be rendered ({header['error']})")
        return header, payload

    def close(self) -> None:
        for worker in self._all:
            worker.kill()


_POOL: RenderPool | None = None
_POOL_LOCK = threading.Lock()
_SHAPE = (DEFAULT_WORKERS, DEFAULT_MEMORY_MB)  # the pool's workers and their address space, in MB


def configure_pool(workers: int = DEFAULT_WORKERS, memory_mb: float = DEFAULT_MEMORY_MB) -> None:
    """The process's pool: ``workers`` worker processes (at least one), each with an address
    space of ``memory_mb``; the app sets it from its settings. A pool already started with
    another shape is closed (its renders in flight fail), and the next render starts the new one."""
    global _POOL, _SHAPE
    shape = (max(1, int(workers)), float(memory_mb))
    with _POOL_LOCK:
        if shape == _SHAPE:
            return
        _SHAPE, old, _POOL = shape, _POOL, None
    if old is not None:
        old.close()


def pool() -> RenderPool:
    """The process's pool (:func:`configure_pool`), started when it is first used."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = RenderPool(*_SHAPE)
            atexit.register(_POOL.close)
        return _POOL


# --- the worker's side -------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Exit as soon as the app does, even mid-render: a watchdog thread (PDFium's calls
    release the GIL) checks the parent every second. Not ``PR_SET_PDEATHSIG``: that fires
    when the *thread* that started the worker ends, and the app's request threads come and go."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="watch-the-app", daemon=True).start()


def _limit_memory(mb: float) -> None:
    try:
        import resource

        limit = int(mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


class _Open:
    """The worker's open document and page (the last ones asked for)."""

    def __init__(self):
        self.key = self.pdf = None
        self.index = self.page = self.textpage = None

    def page_of(self, path: str, index: int):
        import pypdfium2 as pdfium

        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if key != self.key:
            self._close_page()
            if self.pdf is not None:
                self.pdf.close()
            self.key = self.pdf = None
            self.pdf = pdfium.PdfDocument(path)
            self.key = key
        if index != self.index:
            self._close_page()
            if not 0 <= index < len(self.pdf):
                return None
            self.page, self.index = self.pdf[index], index
        return self.page

    def textpage_of(self, path: str, index: int):
        page = self.page_of(path, index)
        if page is None:
            return None
        if self.textpage is None:
            self.textpage = page.get_textpage()
        return self.textpage

    def _close_page(self) -> None:
        if self.textpage is not None:
            self.textpage.close()
        if self.page is not None:
            self.page.close()
        self.index = self.page = self.textpage = None


def _render(opened: _Open, request: dict) -> tuple[dict, bytes]:
    import io
    import math

    page = opened.page_of(request["path"], request["page"])
    if page is None:
        return {"missing": True, "pages": len(opened.pdf)}, b""
    width, height = page.get_size()
    if not (width > 0 and height > 0):
        return {"error": "the page has no size"}, b""
    scale = request["width"] / width if request.get("width") else (request.get("dpi") or 72) / 72
    if width * height * scale * scale > request["max_pixels"]:
        scale = math.sqrt(request["max_pixels"] / (width * height))
    bitmap = page.render(scale=scale, grayscale=bool(request.get("gray")))
    try:
        image = bitmap.to_pil()
        out = io.BytesIO()
        image.save(out, format=request.get("format") or "PNG")
    finally:
        bitmap.close()
    header = {
        "width": image.width,
        "height": image.height,
        "scale": scale,
        "rotation": page.get_rotation(),
        "bbox": list(page.get_bbox()),
        "pages": len(opened.pdf),
    }
    if request.get("text"):
        import pypdfium2.raw as raw

        textpage = opened.textpage_of(request["path"], request["page"])
        header["text"] = "".join(
            chr(raw.FPDFText_GetUnicode(textpage.raw, i) or 0xFFFD) for i in range(textpage.count_chars())
        )
    return header, out.getvalue()


def _rects(opened: _Open, request: dict) -> tuple[dict, bytes]:
    textpage = opened.textpage_of(request["path"], request["page"])
    if textpage is None:
        return {"missing": True}, b""
    count = textpage.count_rects(request["start"], request["count"])
    return {"rects": [list(textpage.get_rect(i)) for i in range(count)]}, b""


def _read_line(fd: int) -> bytes | None:
    """One request line (None: the app closed the pipe, or no work for IDLE_SECONDS)."""
    buffer = bytearray()
    while not buffer.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], IDLE_SECONDS if not buffer else None)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


def _send(fd: int, header: dict, payload: bytes = b"") -> None:
    data = json.dumps({**header, "size": len(payload)}).encode() + b"\n" + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(memory_mb: float = DEFAULT_MEMORY_MB) -> None:
    """The worker: requests on stdin, answers on stdout, until stdin closes or it idles out;
    its address space capped at ``memory_mb``."""
    _die_with_parent()
    _limit_memory(memory_mb)
    import pypdfium2  # noqa: F401  (imported before "ready": a request's deadline is the page's alone)
    from PIL import Image  # noqa: F401

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing printed by a library may reach the protocol
    _send(stdout, {"ready": True})
    opened = _Open()
    while True:
        line = _read_line(stdin)
        if line is None:
            return
        try:
            request = json.loads(line)
            op = {"render": _render, "rects": _rects}[request["op"]]
            header, payload = op(opened, request)
        except MemoryError:
            header, payload = {"error": "out of memory"}, b""
            opened = _Open()  # whatever it held is dropped with it
        except Exception as exc:  # noqa: BLE001 — a page PDFium cannot draw; the reason goes back
            header, payload = {"error": type(exc).__name__}, b""
        _send(stdout, header, payload)


if __name__ == "__main__":
    serve(float(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MEMORY_MB)
