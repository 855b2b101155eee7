"""OCR accuracy and speed on a scan of real prose: character error rate per page and
seconds per page, read the app's way (:func:`homer.reading.sources.read_pdf` → :mod:`homer.reading.formats.ocr`).

The fixture: pages of the sample book (``assets/genesis-exodus-leviticus-kjv.txt``, the King
James Version, public domain), one block of verses per page, printed to a PDF by headless
Chromium (serif, 12 pt, Letter, 1 inch margins; pypdf's Helvetica text operators where
Chromium is missing), rasterised at ``--scan-dpi`` (300) by Poppler's ``pdftoppm`` to
grayscale PNGs and wrapped back into a PDF of images only by Pillow — a scan without any
text layer. That PDF is then read as an upload is: each page rendered at 300 dpi by PDFium
and read by Tesseract (``tesseract-ocr-eng``), one page at a time.

Character error rate (CER) = Levenshtein distance (insertions, deletions, substitutions of
characters) between the OCR text and the page's source text, over the source's length, both
with every run of whitespace made one space (line breaks and paragraph gaps are layout, not
text). The edit distance is a small dynamic programme here (common prefix and suffix
stripped first, then two rows): no edit-distance library is installed in the project, and
one benchmark does not justify a dependency. Seconds per page: from one page's "OCR page
i/n" progress message to the next (rendering, the image check and Tesseract), as a job sees
them. The bar: CER ≤ 3 % at 300 dpi.

``--threads`` sets ``OMP_THREAD_LIMIT`` for Tesseract (the app's default is 1); the load
average is recorded (2 shared cores: other jobs stretch every time).

    python -m benchmarks.ocr                       # 4 pages, results/ocr.json
    python -m benchmarks.ocr --pages 2 --scan-dpi 200 --output /tmp/ocr.json
"""

from __future__ import annotations

import argparse
import html
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
PAGE_CHARS = 2400  # verses per page up to this many characters: fits a Letter page at 12 pt


def normalise(text: str) -> str:
    """Every run of whitespace one space, none at either end."""
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between ``a`` and ``b`` (unit costs)."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference``, after :func:`normalise`."""
    reference, hypothesis = normalise(reference), normalise(hypothesis)
    return edit_distance(reference, hypothesis) / max(len(reference), 1)


def book_pages(count: int, skip_lines: int = 10) -> list[str]:
    """``count`` pages of the sample book from its first chapter on: whole verses, up to
    ``PAGE_CHARS`` characters a page."""
    lines = [line.strip() for line in BOOK.read_text(encoding="utf-8").splitlines()[skip_lines:]]
    lines = [line for line in lines if line]
    pages, current = [], []
    for line in lines:
        if current and sum(len(x) + 1 for x in current) + len(line) > PAGE_CHARS:
            pages.append("\n".join(current))
            current = []
            if len(pages) == count:
                break
        current.append(line)
    return pages


def printed_pdf(pages: list[str], folder: Path) -> tuple[bytes, str]:
    """(a text PDF with one page per item, the tool that printed it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        import textwrap

        from benchmarks.evaluation.pdf import text_pdf

        return text_pdf(
            ["\n".join(textwrap.fill(line, 90) for line in page.splitlines()) for page in pages], font_size=10
        ), "pypdf (Helvetica 10 pt)"
    body = "".join(
        '<div style="page-break-after: always">'
        + "".join(f"<p>{html.escape(line)}</p>" for line in page.splitlines())
        + "</div>"
        for page in pages
    )
    source, out = folder / "pages.html", folder / "pages.pdf"
    source.write_text(
        "<html><head><style>@page { size: Letter; margin: 1in } p { margin: 0 0 0.35em }</style></head>"
        f'<body style="font-family: serif; font-size: 12pt">{body}</body></html>',
        encoding="utf-8",
    )
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
        timeout=180,
        check=True,
    )
    return out.read_bytes(), "Chromium (serif 12 pt)"


def scan(pdf: bytes, folder: Path, dpi: int, timeout: float = 600) -> bytes:
    """``pdf`` rasterised by pdftoppm (grayscale PNGs) and wrapped into a PDF of images (Pillow):
    a scan, without any text layer."""
    from PIL import Image

    (folder / "printed.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-gray", "-png", str(folder / "printed.pdf"), str(folder / "page")],
        check=True,
        timeout=timeout,
    )
    images = [Image.open(path) for path in sorted(folder.glob("page-*.png"))]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--scan-dpi", type=int, default=300, help="resolution of the scan fixture")
    parser.add_argument("--threads", type=int, default=None, help="OMP_THREAD_LIMIT for Tesseract (default: 1)")
    parser.add_argument("--output", default=str(RESULTS / "ocr.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from app.settings import load_settings
    from homer.reading.formats import ocr
    from homer.reading.sources import read_pdf

    settings = load_settings()  # the app's: HOMER_TESSERACT, HOMER_OCR_LANG, HOMER_RENDER_SECONDS
    tesseract = {
        "ocr_command": settings.ocr.tesseract,
        "ocr_language": settings.ocr.language,
        "render_seconds": settings.render.seconds,
    }
    ocr.check_tesseract(settings.ocr.tesseract, settings.ocr.language)
    if shutil.which("pdftoppm") is None:
        raise SystemExit("pdftoppm is needed to make the scan fixture (Debian: poppler-utils)")
    if args.threads is not None:
        os.environ["OMP_THREAD_LIMIT"] = str(args.threads)
    version = subprocess.run([settings.ocr.tesseract, "--version"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    references = book_pages(args.pages)
    with tempfile.TemporaryDirectory() as tmp:
        printed, printer = printed_pdf(references, Path(tmp))
        scanned = scan(printed, Path(tmp), args.scan_dpi)
    marks = []
    started = time.monotonic()
    doc = read_pdf(scanned, progress=lambda message: marks.append((message, time.monotonic())), **tesseract)
    ended = time.monotonic()
    if len(doc.page_starts) != len(references) or doc.ocr_pages != list(range(1, len(references) + 1)):
        raise SystemExit(
            f"the fixture has {len(doc.page_starts)} pages for {len(references)} references "
            f"(OCR'd {doc.ocr_pages}): a page overflowed"
        )
    bounds = [*doc.page_starts, len(doc.text)]
    times = [later - earlier for (_, earlier), (_, later) in zip(marks, [*marks[1:], ("end", ended)])]
    rows, errors, chars = [], 0, 0
    for number, (reference, seconds) in enumerate(zip(references, times), 1):
        text = doc.text[bounds[number - 1] : bounds[number]]
        ref, hyp = normalise(reference), normalise(text)
        distance = edit_distance(ref, hyp)
        errors, chars = errors + distance, chars + len(ref)
        rows.append(
            {
                "page": number,
                "reference_chars": len(ref),
                "ocr_chars": len(hyp),
                "edits": distance,
                "cer": round(distance / max(len(ref), 1), 5),
                "ocr_seconds": round(seconds, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    overall = errors / max(chars, 1)
    out = {
        "benchmark": "ocr",
        "text": f"{BOOK.name} (KJV, public domain), from Genesis 1, {PAGE_CHARS} characters a page at most",
        "printed_by": printer,
        "scan": f"pdftoppm -r {args.scan_dpi} -gray -png, wrapped into a PDF by Pillow (no text layer)",
        "ocr": f"PDFium render at {ocr.DPI} dpi (grayscale) + {version}, -l {settings.ocr.language}",
        "omp_thread_limit": os.environ.get("OMP_THREAD_LIMIT", "1"),
        "pages": len(rows),
        "cer": round(overall, 5),
        "cer_bar": 0.03,
        "passes": overall <= 0.03,
        "median_ocr_seconds_per_page": round(sorted(times)[len(times) // 2], 2),
        "mean_ocr_seconds_per_page": round((ended - started) / len(rows), 2),
        "read_pdf_seconds": round(ended - started, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "rows": rows,
        "example": re.sub(r"\s+", " ", doc.text[:300]),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
