"""The Library tab: add documents, the live build state of each (a table refreshed by the
page's timer), read a document again with the current settings, delete it, and — with
sign-in or ``--auth`` — share it read-only with teammates. Handlers call :mod:`app.library`.

With builds in requests (``services.slices``), the upload request runs a build's first slice
and each refresh of the library the next slice of the user's oldest unfinished build."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from storage.errors import StoreError

from .. import answering, library
from ..access import SignInRequired
from .common import PageState, Services


@dataclass
class LibraryTab:
    """The Library tab's components."""

    files: gr.File
    upload_status: gr.Markdown
    table: gr.Dataframe
    document: gr.Dropdown
    read_btn: gr.Button
    delete_btn: gr.Button
    share_with: gr.Textbox
    share_btn: gr.Button
    unshare_btn: gr.Button
    status: gr.Markdown


def table_headers(services: Services) -> list[str]:
    """The library table's columns: with an access column when documents are per user."""
    return library.TEAM_HEADERS if services.team else library.HEADERS


# --- handlers ---------------------------------------------------------------------------------
def refresh(services: Services, model: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
    fingerprint = services.chat.model(model)[2]
    try:
        owner = services.owner(request, profile)
        entries = library.library(services.store, model, fingerprint, owner)
        uploads = answering.upload_states(services.store, owner)
    except SignInRequired:  # signed out: no library
        entries, uploads = [], {}
    table = pd.DataFrame(library.table_rows(entries, services.team), columns=table_headers(services))
    version = json.dumps(
        {
            "every": library.choices(entries),
            "askable": library.askable_choices(entries),
            "ready": library.choices(entries, ready_only=True),
            "reading": {e["id"]: e["reading"] for e in entries if e["askable"] and e["reading"]},
            "uploads": uploads,
        }
    )  # not stored yet: a failed reading changes only this
    return table, version


def continue_builds(services: Services, request: gr.Request, profile: gr.OAuthProfile | None = None):
    """The next slice of this user's oldest unfinished build (builds in requests only)."""
    if services.access.signed_out(request, profile):
        return gr.update()
    done = services.slices.run_next(services.owner(request, profile))
    return gr.update() if done is None else done.line


def submit(
    services: Services, files, model: str, settings: dict, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    """Check and queue uploaded files: yields ``(status text, [[document id, name], …])``,
    the documents accepted (with builds in requests, the first slice runs here too)."""
    if not files:
        yield "", []
        return
    try:
        services.owner(request, profile)
    except SignInRequired as exc:  # signed out: uploads are refused
        yield f"✗ {exc}", []
        return
    lines, accepted = [], []
    for item in files if isinstance(files, list) else [files]:  # one file in memory at a time
        path = Path(item if isinstance(item, str) else getattr(item, "name", str(item)))
        ids: list[str] = []
        lines += library.submit_upload_file(
            services.queue, path, model, settings, services.owner(request, profile), ids
        )
        accepted += [[document_id, path.name] for document_id in ids]
    yield "\n\n".join(lines), accepted
    if services.slices is not None and any(line.endswith("queued for reading") for line in lines):
        done = services.slices.run_next(services.owner(request, profile))  # the first slice, in this request (ZeroGPU)
        if done is not None and done.state == "done":
            yield "\n\n".join(lines + ["✓ reading finished — see the library"]), accepted
        elif done is not None:  # more slices to go, or refused for now (the library says why)
            going_on = ["The library goes on reading while this page is open."]
            going_on = [] if done.state in ("refused", "failed") else going_on
            yield "\n\n".join(lines + [done.line, *going_on]), accepted


def upload(
    services: Services, files, model: str, settings: dict, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    for text, _ in submit(services, files, model, settings, request, profile):
        yield text, None


def read_again(
    services: Services,
    document_id: str | None,
    model: str,
    settings: dict,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    if not document_id:
        return "Pick a document first."
    try:
        message = library.submit_existing(
            services.queue, document_id, model, settings, services.owner(request, profile)
        )
    except StoreError as exc:
        return f"✗ {exc}"
    if services.slices is not None:
        # a slice in this request (ZeroGPU); the library goes on
        done = services.slices.run_next(services.owner(request, profile))
        return f"{message}\n\n{done.line}" if done is not None else message
    return message


def delete(services: Services, document_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
    if not document_id:
        return "Pick a document first."
    try:
        message = library.delete_document(services.store, document_id, services.owner(request, profile))
    except StoreError as exc:
        return f"✗ {exc}"
    services.chat.forget_document(document_id)
    services.several.forget(document_id)
    return message


# the team library (sign-in or --auth)
def share(
    services: Services,
    document_id: str | None,
    grantees: str,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    """Share a document of yours read-only with the named users (or everyone)."""
    if not document_id:
        return "Pick a document first."
    if not (grantees or "").strip():
        return "Type user names (comma-separated), or everyone."
    access = services.access
    try:
        users = set(access.users) if access.login and access.users else None  # --auth: known names only
        return "✓ " + library.share_document(
            services.store, document_id, services.owner(request, profile), grantees, users
        )
    except StoreError as exc:
        return f"✗ {exc}"


def unshare(
    services: Services,
    document_id: str | None,
    grantees: str,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    """Stop sharing a document of yours with the named users (empty: with anyone)."""
    if not document_id:
        return "Pick a document first."
    try:
        return "✓ " + library.unshare_document(
            services.store, document_id, services.owner(request, profile), grantees or None
        )
    except StoreError as exc:
        return f"✗ {exc}"


# --- layout and events ------------------------------------------------------------------------
def layout(services: Services) -> LibraryTab:
    """The Library tab, inside the page's ``gr.Tabs``."""
    with gr.Tab("Library", id="library"):
        with gr.Row():
            files = gr.File(
                label="Add documents (PDF, EPUB, DOCX, HTML, TXT, Markdown — several at once is fine)",
                file_count="multiple",
                file_types=list(library.SUPPORTED_SUFFIXES),
                elem_id="upload",
                scale=3,
            )
            upload_status = gr.Markdown(elem_id="upload-status")
        table = gr.Dataframe(
            headers=table_headers(services),
            interactive=False,
            wrap=True,
            elem_id="library-table",
            elem_classes=["library-table"],
            label="Documents",
        )
        with gr.Row():
            document = gr.Dropdown(
                label="Document", choices=[], scale=3, elem_id="library-doc", allow_custom_value=True
            )
            read_btn = gr.Button("Read with the current settings", scale=1)
            delete_btn = gr.Button("Delete", variant="stop", scale=1, elem_id="delete")
        with gr.Row(visible=services.team):  # the team library: read-only shares of your documents
            share_with = gr.Textbox(
                label="Share with",
                placeholder="user names, comma-separated, or everyone",
                scale=3,
                elem_id="share-with",
                info=library.share_info(services.access.oauth),
            )
            share_btn = gr.Button("Share", scale=1, elem_id="share")
            unshare_btn = gr.Button("Unshare", scale=1, elem_id="unshare")
        status = gr.Markdown()
    return LibraryTab(
        files, upload_status, table, document, read_btn, delete_btn, share_with, share_btn, unshare_btn, status
    )


def refresh_event(services: Services, tab: LibraryTab, state: PageState) -> dict:
    """The keyword arguments of a quiet refresh of the table and of the pickers' choices, run
    after whatever changes the library (``.then(**refresh_event(…))``)."""
    return {
        "fn": services.bind(refresh),
        "inputs": state.model,
        "outputs": [tab.table, state.version],
        "show_progress": "hidden",
        "api_visibility": "private",
    }


def wire_timer(services: Services, tab: LibraryTab, state: PageState, timer: gr.Timer) -> None:
    """Each tick of the page's timer refreshes the library (API /library) and, with builds in
    requests, runs the next slice of the user's build (API /continue_builds)."""
    timer.tick(
        services.bind(refresh), state.model, [tab.table, state.version], show_progress="hidden", api_name="library"
    )
    if services.slices is not None:  # builds in requests: each refresh runs the next slice of the user's build
        timer.tick(services.bind(continue_builds), None, tab.status, show_progress="hidden", api_name="continue_builds")


def wire(services: Services, tab: LibraryTab, state: PageState) -> None:
    """Upload (API /upload), read again, delete (/delete), share (/share), unshare (/unshare);
    each refreshes the library after."""
    refreshed = refresh_event(services, tab, state)
    tab.files.upload(
        services.bind(upload),
        [tab.files, state.model, state.settings],
        [tab.upload_status, tab.files],
        api_name="upload",
    ).then(**refreshed)
    tab.read_btn.click(services.bind(read_again), [tab.document, state.model, state.settings], tab.status).then(
        **refreshed
    )
    tab.delete_btn.click(services.bind(delete), tab.document, tab.status, api_name="delete").then(**refreshed)
    tab.share_btn.click(services.bind(share), [tab.document, tab.share_with], tab.status, api_name="share").then(
        **refreshed
    )
    tab.unshare_btn.click(services.bind(unshare), [tab.document, tab.share_with], tab.status, api_name="unshare").then(
        **refreshed
    )
