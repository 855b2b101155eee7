"""The reader beside the chat: the sources of the last answer, listed; a click opens one at its
page or section (:mod:`app.reader`), with previous / next to turn the pages. Only documents
the user may see are opened."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.errors import StoreError

from .. import reader
from .common import Services


@dataclass
class ReaderPane:
    """The reader's components."""

    sources: gr.Dataset
    places: gr.State  # the last answer's sources (app.reader places)
    opened: gr.State  # what the reader shows: document, location, count
    view: gr.HTML
    previous_btn: gr.Button
    next_btn: gr.Button


# --- handlers ---------------------------------------------------------------------------------
def show_sources(stats: dict | None):
    """The last answer's sources, listed beside the chat (none: the list is hidden)."""
    found = reader.places_of(stats)
    return gr.Dataset(samples=[[reader.choice_label(p)] for p in found], visible=bool(found)), found


def read(opened):
    """The reader's page and state for a :class:`app.reader.Reading`, or for a message."""
    if isinstance(opened, str):
        return reader.message_html(opened), {}
    return opened.html, opened.state()


def open_source(
    services: Services, index, found: list | None, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    """Open the clicked source in the reader: only a document the user may see."""
    if not isinstance(index, int) or not found or not 0 <= index < len(found):
        return gr.update(), gr.update()
    try:
        return read(reader.open_place(services.store, found[index], services.owner(request, profile)))
    except (StoreError, ValueError) as exc:
        return read(f"✗ {exc}")


def turn_page(
    services: Services, opened: dict | None, step: int, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    """The reader's previous / next page or section of the document it shows."""
    if not opened or not opened.get("document_id"):
        return gr.update(), gr.update()
    number = int(opened.get("location") or 1) + step
    if not 1 <= number <= int(opened.get("count") or 1):
        return gr.update(), gr.update()
    try:
        return read(
            reader.open_location(services.store, opened["document_id"], number, services.owner(request, profile))
        )
    except (StoreError, ValueError) as exc:
        return read(f"✗ {exc}")


def previous_page(services: Services, opened: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
    return turn_page(services, opened, -1, request, profile)


def next_page(services: Services, opened: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
    return turn_page(services, opened, 1, request, profile)


# --- layout and events ------------------------------------------------------------------------
def layout() -> ReaderPane:
    """The reader's column, beside the conversation in the Chat tab."""
    with gr.Column(scale=2, min_width=360, elem_id="reader-pane"):
        sources = gr.Dataset(
            label="Sources of the last answer: click one to open it",
            components=["textbox"],
            samples=[],
            type="index",
            visible=False,
            samples_per_page=12,
            elem_id="sources",
        )
        places = gr.State([])
        opened = gr.State({})
        view = gr.HTML(reader.EMPTY, elem_id="reader", js_on_load=reader.SCROLL_JS)
        with gr.Row():
            previous_btn = gr.Button("‹ previous", size="sm", elem_id="reader-previous")
            next_btn = gr.Button("next ›", size="sm", elem_id="reader-next")
    return ReaderPane(sources, places, opened, view, previous_btn, next_btn)


def no_sources_event(pane: ReaderPane) -> dict:
    """The keyword arguments of the event that empties the list of sources (another
    conversation is shown)."""
    return {
        "fn": lambda: show_sources({}),
        "inputs": None,
        "outputs": [pane.sources, pane.places],
        "show_progress": "hidden",
        "api_visibility": "private",
    }


def sources_event(pane: ReaderPane, turn_json: gr.JSON) -> dict:
    """The keyword arguments of the event that lists the sources of the turn just answered."""
    return {
        "fn": show_sources,
        "inputs": turn_json,
        "outputs": [pane.sources, pane.places],
        "show_progress": "hidden",
        "api_visibility": "private",
    }


def wire(services: Services, pane: ReaderPane) -> None:
    """A click on a source opens it; previous / next turn the pages."""
    pane.sources.click(
        services.bind(open_source),
        [pane.sources, pane.places],
        [pane.view, pane.opened],
        show_progress="hidden",
        api_visibility="private",
    )
    pane.previous_btn.click(
        services.bind(previous_page),
        pane.opened,
        [pane.view, pane.opened],
        show_progress="hidden",
        api_visibility="private",
    )
    pane.next_btn.click(
        services.bind(next_page),
        pane.opened,
        [pane.view, pane.opened],
        show_progress="hidden",
        api_visibility="private",
    )
