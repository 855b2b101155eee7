"""The reader beside the chat: a source of an answer, opened at its place.

An answer lists its sources under it ("Sources:" then "- p. 12: “quote”"). The same sources go
into the turn's stats as *places* (:func:`place`; ``stats["source_places"]``): the document,
the 1-based location (a page of a PDF or a section, :class:`homer.reading.locations.LocationMap`), its
label, the character span ``[start, end)`` of the passage read (of the whole location for a
page cited from the cache) and the quote shown (empty for a cited page). The UI lists the last
answer's places beside the chat and :func:`open_place` opens the one clicked:

* **access first**: the document is looked up with :func:`app.library.check_access` among the
  asking user's documents, by its full id only; another user's document is refused with the
  words a missing one gets, before anything of it is read;
* **a PDF** opens at its page, rendered to an image on the server with pdfium
  (:func:`render_page`, the ``pypdfium2`` wheel): the browser needs no PDF viewer, no script
  and nothing from outside the app, and the image travels inside the reader's HTML (a data
  URI: no file of the store is ever served by URL). The page is drawn in a worker process
  with a deadline (:mod:`homer.reading.formats.render`, ``HOMER_RENDER_SECONDS``, 5 s): a page that
  takes longer (a few MB of vector fills can take minutes) is killed there and opens as its
  text, with a one-line note that says so; no request holds anything shared for longer. The
  quote is highlighted on the page where the page's own text layer holds it exactly
  (whitespace-normalised), from pdfium's boxes of its characters (a quote that runs on to the
  next page: its words that end this page); else the page opens without a highlight. Without
  ``pypdfium2`` the page opens as text, as other formats do;
* **any other location** (a Markdown or text file, a section of an EPUB, DOCX or HTML file)
  opens as its text, HTML-escaped, with the quote in ``<mark>`` when the text holds it exactly
  (whitespace-normalised, :func:`find_quote`), near the passage first (a passage is listed
  under its first location; a quote of it that runs on into the next is shown whole); else the
  section opens without a highlight, at the passage. A location longer than :data:`MAX_SHOWN_CHARS` is
  shown as that many characters around the passage. Quotes are matched in time linear in the
  text and the quote, whatever either holds (:mod:`app.quote_search`);
* **a location** that is not a whole number (``"two"``, ``2.5``, ``inf``) is refused in one
  line (:class:`PlaceError`); a number past either end opens the first or last location.

Everything of the document that reaches the page — its text, its name, the labels — is
HTML-escaped here. The reader's HTML scrolls itself to the highlight (:data:`SCROLL_JS`,
run by ``gr.HTML(js_on_load=...)`` whenever its value changes).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from homer.reading.formats.render import RenderError
from homer.reading.locations import LocationMap

from . import library
from .quote_search import ELLIPSIS, find_quote, find_quote_start, quote_words
from .settings import load_settings

log = logging.getLogger(__name__)

MAX_SHOWN_CHARS = 20_000  # of a long location (a whole text file is one), shown around the passage
RENDER_WIDTH = 1000  # pixels of a rendered PDF page's width
MAX_RENDER_PIXELS = 1000 * 4000  # a page of an odd shape is rendered smaller than this
MAX_CHOICE_QUOTE = 70  # characters of a quote in the list of sources
PLACE_KEYS = ("document_id", "location", "label", "start", "end", "quote")

EMPTY = (
    '<div class="homer-reader"><div class="reader-empty">The reader: click a source of an answer '
    "to open the document there.</div></div>"
)

# Runs in the browser on the reader's gr.HTML: scrolls the reader's own box (not the page) to the
# highlight, or to the passage's place, each time a document is opened.
SCROLL_JS = """
const scroll = () => {
  const body = element.querySelector('.reader-body');
  if (!body) return;
  const target = body.querySelector('.reader-target');
  body.scrollTop = target ? Math.max(0, target.offsetTop - body.clientHeight / 3) : 0;
};
scroll();
watch('value', () => requestAnimationFrame(scroll));
"""

CSS = """
.homer-reader {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px}
.homer-reader .reader-head {font-weight: 600; margin-bottom: 4px}
.homer-reader .reader-note {font-size: 0.85em; color: var(--body-text-color-subdued); margin-bottom: 6px}
.homer-reader .reader-body {position: relative; max-height: 640px; overflow: auto}
.homer-reader .reader-text {white-space: pre-wrap; font-family: var(--font); line-height: 1.5}
.homer-reader .reader-text mark {background: #ffe066; padding: 0 1px}
.homer-reader .reader-page {position: relative; width: 100%}
.homer-reader .reader-page img {width: 100%; height: 100%; display: block}
.homer-reader .reader-mark {position: absolute; background: rgba(255, 214, 0, 0.42);
                            outline: 1px solid rgba(230, 160, 0, 0.7); pointer-events: none}
.homer-reader .reader-empty {color: var(--body-text-color-subdued); padding: 24px 8px}
"""


# --- places --------------------------------------------------------------------------------
def place(
    document_id: str, number: int, locations: LocationMap, start: int, end: int, quote: str = "", **extra
) -> dict:
    """One source of an answer: where it is, what was read there and the quote shown."""
    number = int(number)
    return {
        "document_id": document_id,
        "location": number,
        "label": locations.label(number),
        "start": int(start),
        "end": int(end),
        "quote": quote or "",
        **extra,
    }


def passage_places(document_id: str, passages: Iterable, locations: LocationMap, question: str = "") -> list[dict]:
    """The places of a focused answer's passages (:class:`storage.passages.Passage`), with the
    quotes its sources line shows (:func:`app.focus.sources_label`)."""
    return [place(document_id, p.page, locations, p.start, p.end, p.quote(query=question)) for p in passages]


def location_places(document_id: str, numbers: Iterable[int], locations: LocationMap, text_length: int) -> list[dict]:
    """The places of pages (or sections) cited from the cache: each whole location, no quote."""
    return [place(document_id, n, locations, *locations.span(n, text_length)) for n in numbers]


def text_length(store, document_id: str) -> int:
    """Characters of the document's text (its row says; else its text is read)."""
    row = store.get_document(document_id) or {}
    return int(row.get("chars") or 0) or len(store.document_text(document_id))


def places_of(stats: dict | None) -> list[dict]:
    """The well-formed places of a turn's stats (they come back from the browser: anything
    else is dropped; access is checked again when one is opened)."""
    out = []
    for item in (stats or {}).get("source_places") or []:
        if not isinstance(item, dict) or not isinstance(item.get("document_id"), str):
            continue
        try:
            out.append(
                {
                    **item,
                    "location": location_number(item.get("location")),
                    "start": int(item.get("start") or 0),
                    "end": int(item.get("end") or 0),
                    "quote": str(item.get("quote") or ""),
                    "label": str(item.get("label") or ""),
                }
            )
        except (TypeError, ValueError, OverflowError):  # inf, nan, "two", 2.5: dropped
            continue
    return out


def choice_label(item: dict) -> str:
    """A place as the list of sources shows it: ``harbour.pdf, p. 12: “the harbour master…”``."""
    where = item.get("label") or f"§ {item.get('location', 1)}"
    head = f"{item['document']}, {where}" if item.get("document") else where
    quote = " ".join(str(item.get("quote") or "").split())
    if not quote:
        return head
    if len(quote) > MAX_CHOICE_QUOTE:
        quote = quote[: MAX_CHOICE_QUOTE - 1].rsplit(" ", 1)[0].rstrip(ELLIPSIS) + ELLIPSIS
    return f"{head}: “{quote}”"


# --- the reading -----------------------------------------------------------------------------
@dataclass
class Reading:
    """A place opened for a user: which document and location, how it is shown, whether the
    quote is highlighted, and the reader's HTML."""

    document_id: str
    name: str
    location: int
    count: int
    label: str
    view: str  # "page" (a rendered PDF page) or "text"
    highlighted: bool
    html: str

    def state(self) -> dict:
        return {"document_id": self.document_id, "location": self.location, "count": self.count}


def open_place(store, item: dict, owner: str | None) -> Reading:
    """Open ``item`` (a place) for ``owner``: :class:`storage.errors.StoreError` ("no document
    … in your library") for a document they may not see or that does not exist, and
    :class:`PlaceError` (one line) for a location that is not a whole number. A PDF page
    that is not rendered in time (or at all) opens as its text, with a note that says why."""
    ref = str(item.get("document_id") or "")
    row = library.check_access(store, ref, owner)
    if row["id"] != ref:  # a place names its document by its full id, never by a name or prefix
        raise library.not_found(ref)
    document_id = row["id"]
    locations = store.location_map(document_id)
    number = min(max(location_number(item.get("location")), 1), len(locations))
    quote = str(item.get("quote") or "")
    name = row.get("file_name") or row.get("title") or document_id[:12]
    label = locations.label(number)
    passage = _passage_span(item)
    refused = ""
    if row.get("kind") == "pdf" and not locations.sectioned:
        source = store.source_path(document_id)
        if source is not None and source.suffix.lower() == ".pdf":
            try:
                page = render_page(source, number, quote)
            except RenderError as exc:
                log.warning("reader: %s of %s shown as text: %s", label, document_id[:12], exc)
                page, refused = None, f"{_sentence(str(exc))} It is shown as its text."
            if page is not None:
                body, highlighted = page_html(page, f"{label} of {name}")
                note = _note(quote, highlighted, "page")
                return Reading(
                    document_id,
                    name,
                    number,
                    len(locations),
                    label,
                    "page",
                    highlighted,
                    _frame(name, label, number, len(locations), locations.noun, note, body),
                )
    text = store.document_text(document_id)
    body, highlighted, shown = section_html(text, locations.span(number, len(text)), quote, passage)
    note = " ".join(part for part in (refused, _note(quote, highlighted, locations.noun), shown) if part)
    return Reading(
        document_id,
        name,
        number,
        len(locations),
        label,
        "text",
        highlighted,
        _frame(name, label, number, len(locations), locations.noun, note, body),
    )


class PlaceError(ValueError):
    """A place that cannot be opened as given (its location is not a page or section number);
    the message says why, in one line."""


def location_number(value) -> int:
    """A place's location as a whole number (missing: 1): an int, a string of digits, or a
    float without a fraction. Anything else — ``"two"``, ``2.5``, ``inf``, ``nan``, ``True``
    — is refused with :class:`PlaceError`, not turned into a page by accident."""
    if value is None or value == "":
        return 1
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        number = int(value)
    if number is None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:39] + ELLIPSIS
        raise PlaceError(f"the location must be a page or section number, not {shown}")
    return number


def _sentence(message: str) -> str:
    message = message.strip()
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def open_location(store, document_id: str, number: int, owner: str | None) -> Reading:
    """Location ``number`` of a document, without a quote (the reader's previous / next)."""
    return open_place(store, {"document_id": document_id, "location": number}, owner)


def message_html(message: str) -> str:
    return f'<div class="homer-reader"><div class="reader-empty">{html.escape(message)}</div></div>'


def _passage_span(item: dict) -> tuple[int, int] | None:
    try:
        start, end = int(item.get("start")), int(item.get("end"))
    except (TypeError, ValueError, OverflowError):
        return None
    return (start, end) if 0 <= start < end else None


def _note(quote: str, highlighted: bool, noun: str) -> str:
    if not quote_words(quote):
        return ""
    if highlighted:
        return "The quote is highlighted."
    return f"The quote was not found exactly on this {noun}: it is shown without a highlight."


def _frame(name: str, label: str, number: int, count: int, noun: str, note: str, body: str) -> str:
    where = html.escape(label)
    if count > 1:
        where += f' <span class="reader-count">({noun} {number} of {count})</span>'
    note_html = f'<div class="reader-note">{html.escape(note)}</div>' if note else ""
    return (
        f'<div class="homer-reader" data-location="{number}">'
        f'<div class="reader-head">{html.escape(name)} · {where}</div>{note_html}'
        f'<div class="reader-body">{body}</div></div>'
    )


def section_html(
    text: str, span: tuple[int, int], quote: str = "", passage: tuple[int, int] | None = None
) -> tuple[str, bool, str]:
    """``(html, highlighted, what is shown)`` of the location ``span`` of ``text``: escaped,
    the quote in ``<mark>`` when found exactly, else an anchor at the passage. A location
    longer than :data:`MAX_SHOWN_CHARS` is cut around the quote (or the passage)."""
    start, end = span
    limit = max(end, passage[1]) if passage else end  # a passage listed under its first location may run on
    found = find_quote(text, quote, start, min(len(text), limit + 2 * len(quote)), passage)
    if found and found[0] >= limit:  # a quote that starts here or in the passage: shown whole
        found = None
    if found:
        end = max(end, found[1])
    shown = ""
    if end - start > MAX_SHOWN_CHARS:
        centre = found[0] if found else (passage[0] if passage and start <= passage[0] < end else start)
        a = max(start, centre - MAX_SHOWN_CHARS // 3)
        b = min(end, a + MAX_SHOWN_CHARS)
        a = max(start, min(a, b - MAX_SHOWN_CHARS))
        if found and not (a <= found[0] and found[1] <= b):
            b = min(end, max(b, found[1]))
        shown = f"Showing characters {a - start:,}–{b - start:,} of {end - start:,} here."
        start, end = a, b
    if found:
        m0, m1 = found
        inner = (
            html.escape(text[start:m0])
            + '<mark class="reader-target">'
            + html.escape(text[m0:m1])
            + "</mark>"
            + html.escape(text[m1:end])
        )
    else:
        at = passage[0] if passage and start <= passage[0] < end else None
        inner = (
            html.escape(text[start:at]) + '<span class="reader-target"></span>' + html.escape(text[at:end])
            if at is not None
            else html.escape(text[start:end])
        )
    return f'<div class="reader-text">{inner}</div>', found is not None, shown


# --- PDF pages ---------------------------------------------------------------------------------
@dataclass
class PageImage:
    """A rendered page: PNG bytes, its pixel size, and the quote's boxes as fractions of the
    page (left, top, width, height); ``boxes`` is None when the quote was not found exactly."""

    png: bytes
    width: int
    height: int
    boxes: list[tuple[float, float, float, float]] | None


def render_page(path, number: int, quote: str = "") -> PageImage | None:
    """Page ``number`` (1-based) of the PDF at ``path`` as an image, with the quote's boxes;
    None without ``pypdfium2`` or for a page the document does not have. Rendered in a worker
    process within a deadline (:mod:`homer.reading.formats.render`): a page that takes longer, or
    that PDFium cannot draw, raises :class:`homer.reading.formats.render.RenderError` (one line).
    The quote is matched here, in the app, on the page's text the worker sends back
    (:func:`find_quote`, linear), and only its boxes are asked of the worker after."""
    from homer.reading.formats import render

    if not render.available():
        return None
    try:
        shot = render.render_page(
            path,
            number - 1,
            width=RENDER_WIDTH,
            max_pixels=MAX_RENDER_PIXELS,
            text=bool(quote_words(quote)),
            seconds=load_settings().render.seconds,
        )
    except render.NoSuchPage:
        return None
    boxes = quote_boxes(path, number, shot, quote) if shot.text is not None else None
    return PageImage(shot.data, shot.width, shot.height, boxes)


def quote_boxes(path, number: int, shot, quote: str) -> list[tuple[float, float, float, float]] | None:
    """The boxes of the quote on the rendered page ``shot`` as fractions of it (left, top,
    width, height), when the page's text holds the quote exactly up to whitespace (whole, or
    its part that ends the page); else None. A rotated page gets no boxes (None), nor does
    a page whose boxes the worker does not give in time (the page is still shown)."""
    from homer.reading.formats import render

    if shot.rotation:
        return None
    found = find_quote(shot.text, quote) or find_quote_start(shot.text, quote)
    if found is None:
        return None
    left, bottom, right, top = shot.bbox
    width, height = right - left, top - bottom
    if width <= 0 or height <= 0:
        return None
    try:
        rects = render.text_rects(
            path, number - 1, found[0], found[1] - found[0], seconds=load_settings().render.seconds
        )
    except render.RenderError as exc:
        log.warning("no boxes for the quote on page %d of %s: %s", number, path, exc)
        return None
    boxes = [
        ((x0 - left) / width, (top - y1) / height, (x1 - x0) / width, (y1 - y0) / height) for x0, y0, x1, y1 in rects
    ]
    return boxes or None


def page_html(page: PageImage, alt: str) -> tuple[str, bool]:
    """``(html, highlighted)``: the page image with the quote's boxes over it."""
    data = base64.b64encode(page.png).decode("ascii")
    marks = "".join(
        f'<div class="reader-mark{" reader-target" if i == 0 else ""}" style="left:{x * 100:.3f}%;'
        f'top:{y * 100:.3f}%;width:{w * 100:.3f}%;height:{h * 100:.3f}%"></div>'
        for i, (x, y, w, h) in enumerate(page.boxes or [])
    )
    body = (
        f'<div class="reader-page" style="aspect-ratio:{page.width}/{page.height}">'
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">{marks}</div>'
    )
    return body, bool(page.boxes)


__all__ = [
    "CSS",
    "EMPTY",
    "SCROLL_JS",
    "PlaceError",
    "Reading",
    "choice_label",
    "find_quote",
    "location_places",
    "open_location",
    "open_place",
    "passage_places",
    "place",
    "places_of",
    "render_page",
    "section_html",
]
