"""The Gradio UI: :func:`build_ui` assembles the tabs, the page's shared state and its timer.
Each tab is a module of its own — its layout, its events and its handlers, plain functions of
the services they work on (:class:`app.ui.common.Services`); they call :mod:`app.chat`,
:mod:`app.library` and :mod:`app.inspector`, which work on the store and the build queue.

Tabs: Chat first (:mod:`app.ui.chat_tab`) — the conversation leads: a drop area beside the
document picker, so a newcomer drops a file and asks it in the same view (the new document is
picked as soon as its text is stored, seconds after the upload, with its reading progress in
its label: :mod:`app.ui.pickers`; specific questions are answered from its passages while it
is read); streaming answers, time to first token; under a closed "Advanced" fold several
documents or the whole library at once, the focus strategy, deep read, threads
(:mod:`app.ui.threads_panel`) and the turn's details; beside it the reader
(:mod:`app.ui.reader_pane`), which opens a source of the last answer at its page or section.
Then Library (:mod:`app.ui.library_tab`: upload, live build state, delete, team shares), Share
(:mod:`app.ui.sharing_tab`: export / import bundles), Inspector (:mod:`app.ui.inspector_tab`:
what the cache kept, the merge tree), Settings (:mod:`app.ui.settings_tab`: model, HOMER
settings, generation settings)."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from .. import mcp_tools, reader
from ..chat import ChatService
from ..space import on_zero_gpu, spaces_gpu  # noqa: F401  (app.py imports them from here)
from . import chat_tab, inspector_tab, library_tab, pickers, settings_tab, sharing_tab
from .common import PageState, Services, identity

CSS = (
    """
#homer-title h1 {margin-bottom: 0}
#turn-stats {min-height: 1.5em}
.library-table td {white-space: normal}
"""
    + reader.CSS
)
THEME = gr.themes.Soft(primary_hue="blue")


def build_ui(
    store,
    queue,
    chat: ChatService,
    model_name: str,
    gpu: Callable | None = None,
    auth: bool = False,
    allow_model_change: bool = True,
    refresh_seconds: float = 2.0,
    slices=None,
    access: mcp_tools.Access | None = None,
) -> gr.Blocks:
    """The whole app. ``queue`` is the build queue (:class:`app.worker.BuildQueue`), ``gpu``
    wraps the functions that run the model (``spaces.GPU`` on ZeroGPU), ``auth``: documents
    are per user (the login name). ``slices`` (:class:`app.slices.Slices`): when set, builds
    run inside requests, a slice at a time — the upload request runs the first, each refresh
    of the library the next of the user's oldest unfinished build (ZeroGPU: a background
    worker would get no GPU, and a call gets it for a short while only). ``access``
    (:class:`app.mcp_tools.Access`): who the user is — the login name (``auth``), else the
    Hugging Face username when sign-in with Hugging Face is on (a Sign in button is shown;
    signed out, the library is empty and every action asks to sign in); sharing (Library
    tab) needs one of them. The MCP tools (:mod:`app.mcp_tools`) are registered here too."""
    gpu = gpu or identity
    access = access or mcp_tools.Access(login=auth)
    services = Services(store, queue, chat, access, slices=slices, allow_model_change=allow_model_change)

    # --- layout -------------------------------------------------------------------------------
    # delete_cache: the server's copies of uploads and exported bundles go after a day
    with gr.Blocks(title="HOMER Chat", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        state = PageState.create(model_name)
        gr.Markdown(
            "# HOMER Chat\nLet a small model read a whole book once, keep what it read as a compact "
            "cache, and answer question after question from that cache.",
            elem_id="homer-title",
        )
        model_line = gr.Markdown()
        if access.oauth:  # a Space with hf_oauth: true (or HOMER_HF_OAUTH=1)
            gr.LoginButton(elem_id="login")

        with gr.Tabs(selected="chat"):
            chat_view = chat_tab.layout()  # first: drop a file and ask it here
            library_view = library_tab.layout(services)
            sharing_view = sharing_tab.layout()
            inspector_view = inspector_tab.layout()
            settings_view = settings_tab.layout(model_name, allow_model_change)

        timer = gr.Timer(refresh_seconds)
        mcp_tools.add_tools(store, queue, chat, model_name, access, gpu=gpu, slices=slices)  # the MCP tools

        # --- events ---------------------------------------------------------------------------
        refreshed = library_tab.refresh_event(services, library_view, state)
        settings_tab.wire_page_load(demo, services, settings_view, state, model_line, refreshed)
        library_tab.wire_timer(services, library_view, state, timer)
        document_pickers = [library_view.document, chat_view.document, sharing_view.document, inspector_view.document]
        update_pickers = pickers.update_event(services, state, document_pickers, chat_view.documents, chat_view.status)
        state.version.change(**update_pickers)

        library_tab.wire(services, library_view, state)
        generation = [settings_view.temperature, settings_view.max_new_tokens]
        chat_tab.wire(services, chat_view, state, generation, gpu, refreshed, update_pickers)
        sharing_tab.wire(services, sharing_view, state, refreshed)
        inspector_tab.wire(services, inspector_view, state)
        settings_tab.wire(services, settings_view, state, model_line, refreshed)
    return demo
