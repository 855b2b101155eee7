"""The Share tab: export a document's cache as a bundle (cache, text, source, checksums) so a
teammate can chat with it without reading it again, and import a teammate's bundle
(:mod:`app.library`, :mod:`storage.bundles`)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.bundle_schema import max_bundle_bytes
from storage.errors import StoreError

from .. import library
from ..chat import ChatError
from ..settings import load_settings
from .common import PageState, Services, fail


@dataclass
class SharingTab:
    """The Share tab's components."""

    document: gr.Dropdown
    export_btn: gr.Button
    export_file: gr.File
    bundle: gr.File
    import_btn: gr.Button
    status: gr.Markdown


# --- handlers ---------------------------------------------------------------------------------
def export(
    services: Services, document_id: str | None, model: str, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    if not document_id:
        fail(ChatError("pick a ready document to export"))
    try:
        path = library.export_document(
            services.store, document_id, services.chat.model(model)[2], services.owner(request, profile)
        )
    except StoreError as exc:
        fail(exc)
    return str(path), library.export_message(path)


def import_(services: Services, bundle, model: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
    if not bundle:
        return "Choose a bundle (.zip) first."
    path = bundle if isinstance(bundle, str) else getattr(bundle, "name", str(bundle))
    try:  # the upload was streamed to a file by the server; the importer streams from it
        _, tokenizer, fingerprint = services.chat.model(model)
        row = library.import_bundle_file(
            services.store, path, fingerprint, services.owner(request, profile), tokenizer=tokenizer
        )
    except StoreError as exc:
        return f"✗ {exc}"
    name = row.get("file_name") or row["document_id"][:12]  # the importer's own name for it
    if row.get("already_in_store"):
        return f"✓ {name}: this cache is already in the store (kept as it was) — ready to chat."
    return (
        f"✓ imported {name}: {row['tokens']} cache tokens built by "
        f"{row['model_name'] or row['model_fingerprint'][:12]} — ready to chat, no reading needed."
    )


# --- layout and events ------------------------------------------------------------------------
def layout() -> SharingTab:
    """The Share tab, inside the page's ``gr.Tabs``."""
    with gr.Tab("Share", id="share"):
        gr.Markdown(
            "Export a document's cache as a bundle (cache, text, source, checksums) so a teammate "
            "can chat with it without reading it again; import a teammate's bundle. Bundles are "
            "checked completely before anything is stored."
        )
        with gr.Row():
            document = gr.Dropdown(
                label="Ready document", choices=[], scale=3, elem_id="share-doc", allow_custom_value=True
            )
            export_btn = gr.Button("Export bundle", scale=1, elem_id="export")
        export_file = gr.File(label="Bundle to download", interactive=False, elem_id="export-file")
        with gr.Row():
            bundle = gr.File(
                label=f"Import a bundle (.zip, up to {max_bundle_bytes(load_settings().bundles.max_mb) / 2**20:.0f} MB)",  # noqa: E501
                file_types=[".zip"],
                elem_id="bundle",
                scale=3,
            )
            import_btn = gr.Button("Import", scale=1, elem_id="import")
        status = gr.Markdown(elem_id="share-status")
    return SharingTab(document, export_btn, export_file, bundle, import_btn, status)


def wire(services: Services, tab: SharingTab, state: PageState, refreshed: dict) -> None:
    """Export (API /export) and import (/import_bundle, then the library is refreshed)."""
    tab.export_btn.click(
        services.bind(export), [tab.document, state.model], [tab.export_file, tab.status], api_name="export"
    )
    tab.import_btn.click(services.bind(import_), [tab.bundle, state.model], tab.status, api_name="import_bundle").then(
        **refreshed
    )
