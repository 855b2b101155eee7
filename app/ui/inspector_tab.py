"""The Inspector tab: what the cache of a ready document kept — the kept-token density over
its pages or sections and the merge tree (:mod:`app.inspector`)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.errors import StoreError

from .. import inspector, library
from .common import PageState, Services


@dataclass
class InspectorTab:
    """The Inspector tab's components."""

    document: gr.Dropdown
    inspect_btn: gr.Button
    summary: gr.Markdown
    density_plot: gr.Plot
    tree_plot: gr.Plot


def inspect(
    services: Services,
    document_id: str | None,
    model: str,
    settings: dict,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    if not document_id:
        return None, None, "Pick a ready document."
    chat = services.chat
    try:
        document_id = library.check_access(services.store, document_id, services.owner(request, profile))["id"]
        _, tokenizer, fingerprint = chat.model(model)
        row = chat.ready_cache(document_id, model, settings or None)
        if row is None:
            return None, None, "This document has no cache of the model in use yet."
        cache, _, _ = chat.load_cache(row["id"], fingerprint)
        shape, data = inspector.inspect(services.store, row, cache, tokenizer)
    except (StoreError, ValueError) as exc:
        return None, None, f"✗ {exc}"
    title = f"Kept tokens per {data['unit'] if data['unit'] in ('page', 'section') else 'stretch of the text'}"
    return (
        inspector.density_figure(data, title),
        inspector.tree_figure(shape),
        inspector.summary_markdown(shape, data),
    )


def layout() -> InspectorTab:
    """The Inspector tab, inside the page's ``gr.Tabs``."""
    with gr.Tab("Inspector", id="inspector"):
        with gr.Row():
            document = gr.Dropdown(
                label="Ready document", choices=[], scale=3, elem_id="inspector-doc", allow_custom_value=True
            )
            inspect_btn = gr.Button("Inspect", scale=1, elem_id="inspect")
        summary = gr.Markdown(elem_id="inspector-summary")
        density_plot = gr.Plot(label="Kept-token density", elem_id="density-plot", format="png")
        tree_plot = gr.Plot(label="Merge tree", elem_id="tree-plot", format="png")
    return InspectorTab(document, inspect_btn, summary, density_plot, tree_plot)


def wire(services: Services, tab: InspectorTab, state: PageState) -> None:
    """Inspect on request (API /inspect) and when another document is picked."""
    inputs = [tab.document, state.model, state.settings]
    outputs = [tab.density_plot, tab.tree_plot, tab.summary]
    tab.inspect_btn.click(services.bind(inspect), inputs, outputs, api_name="inspect")
    tab.document.change(services.bind(inspect), inputs, outputs, api_visibility="private")
