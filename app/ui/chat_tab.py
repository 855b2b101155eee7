"""The Chat tab, first: the conversation leads. A drop area beside the document picker, so a
newcomer drops a file and asks it in the same view (the new document is picked as soon as its
text is stored, :mod:`app.ui.pickers`); streaming answers; under a closed "Advanced" fold
several documents or the whole library at once, the focus strategy, deep read, the threads
(:mod:`app.ui.threads_panel`) and the turn's details; beside it the reader
(:mod:`app.ui.reader_pane`). Handlers call :mod:`app.chat`, :mod:`app.threads` and
:mod:`app.multi_document`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from homer.generation import GenerationSettings
from storage.errors import StoreError

from .. import answering, library, model_turns
from .. import focus as focusing
from ..chat import ChatError
from ..multi_document import WHOLE_LIBRARY, WHOLE_LIBRARY_LABEL, describe
from . import reader_pane, threads_panel
from .common import PageState, Services, fail
from .library_tab import submit
from .pickers import failed, not_stored, pending_state
from .reader_pane import ReaderPane
from .threads_panel import ThreadsPanel


@dataclass
class ChatTab:
    """The Chat tab's components."""

    document: gr.Dropdown
    files: gr.File
    status: gr.Markdown
    chatbot: gr.Chatbot
    question: gr.Textbox
    send_btn: gr.Button
    clear_btn: gr.Button
    turn_stats: gr.Markdown
    documents: gr.Dropdown  # several documents at once, or the whole library
    focus: gr.Radio
    deep_read: gr.Checkbox
    threads: ThreadsPanel
    turn_json: gr.JSON
    reader: ReaderPane


def default_focus() -> str:
    """The focus control's first value: the ``HOMER_FOCUS`` setting when it names a strategy, else ``auto``."""
    name = focusing.requested_focus()
    return name if name in focusing.CHOICES else focusing.DEFAULT_FOCUS


# --- handlers ---------------------------------------------------------------------------------
def upload_in_chat(
    services: Services,
    files,
    model: str,
    settings: dict,
    waiting: list | None,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    """An upload dropped in the chat view: the document is picked there at once when its
    text is already stored (the same file again), else as soon as it is (the refresh after
    this, or a timer tick: :func:`app.ui.pickers.update_pickers`)."""
    text, accepted = "", []
    for text, accepted in submit(services, files, model, settings, request, profile):
        yield text, None, waiting or [], gr.update()
    if not accepted:
        return
    stored = [item for item in accepted if services.store.get_document(item[0]) is not None]
    later = [item for item in accepted if item not in stored]
    # an upload whose reading failed leaves the chat status at the next upload
    waiting = [
        item
        for item in waiting or []
        if item not in accepted and not failed(pending_state(services, item, request, profile))
    ] + later
    yield text, None, waiting, stored[-1][0] if stored and not later else None


def pick_chat(
    services: Services,
    document_id: str | None,
    documents: list | None,
    model: str,
    settings: dict,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    key = services.session(request, profile)
    if documents:  # several documents picked: their conversation
        try:
            return services.several.history(
                key, documents, services.owner(request, profile), model, settings or None
            ), ""
        except (ChatError, StoreError):
            return [], ""
    return services.chat.history(key, document_id), ""


def ask(
    services: Services,
    document_id: str | None,
    question: str,
    temperature: float,
    max_new_tokens: int,
    model: str,
    settings: dict,
    deep_read: bool = False,
    focus: str | None = None,
    documents: list | None = None,
    waiting: list | None = None,
    request: gr.Request = None,
    profile: gr.OAuthProfile | None = None,
):
    key = services.session(request, profile)
    try:
        if not document_id and not documents:  # an upload made in the chat, its text not stored yet
            for item in reversed(waiting or []):
                state = pending_state(services, item, request, profile)
                if state:
                    raise ChatError(not_stored(item[1], state))
        generation = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
        if documents:  # several documents (or the whole library): each one's access checked there
            owner = services.owner(request, profile)
            history = services.several.history(key, documents, owner, model, settings or None)
            turns = services.several.ask(
                key, documents, question, owner, model, generation, settings or None, focus or None, bool(deep_read)
            )
        else:
            if document_id:  # a full id, a unique prefix or a file name (API callers)
                document_id = stored_id(services, document_id, services.owner(request, profile))
            history = services.chat.history(key, document_id)
            turns = services.threads.ask(
                key,
                services.owner(request, profile),
                document_id,
                question,
                model_name=model,
                generation=generation,
                settings=settings or None,
                deep_read=bool(deep_read),
                focus=focus or None,
            )
        shown = history + [{"role": "user", "content": (question or "").strip()}, {"role": "assistant", "content": ""}]
        stats: dict = {}
        for answer, stats in turns:
            shown[-1] = {"role": "assistant", "content": answer}
            status = "deep reading…" if stats.get("phase") == "deep reading" else "answering…"
            yield shown, "", status, stats
    except (ChatError, StoreError, ValueError) as exc:
        fail(exc)
    yield shown, "", describe(stats), stats


def stored_id(services: Services, ref: str, owner: str | None) -> str:
    """The id of the document ``ref`` names in the user's library; an upload of theirs
    whose text is not stored yet is refused with what it is doing ("queued for reading")."""
    try:
        return library.check_access(services.store, ref, owner)["id"]
    except StoreError:
        state = answering.pending_state(services.store, ref, owner)
        if state is None:
            raise
        raise ChatError(not_stored(ref if len(ref) < 40 else ref[:12], state)) from None


def clear(
    services: Services,
    document_id: str | None,
    documents: list | None = None,
    model: str | None = None,
    settings: dict | None = None,
    request: gr.Request = None,
    profile: gr.OAuthProfile | None = None,
):
    if documents:
        try:
            services.several.clear(
                services.session(request, profile), documents, services.owner(request, profile), model, settings or None
            )
        except (ChatError, StoreError):
            pass
        return [], "", {}
    if document_id:
        try:
            document_id = library.check_access(services.store, document_id, services.owner(request, profile))["id"]
        except StoreError:
            return [], "", {}
    services.chat.clear(services.session(request, profile), document_id)
    return [], "", {}


# --- layout and events ------------------------------------------------------------------------
def layout() -> ChatTab:
    """The Chat tab, inside the page's ``gr.Tabs``: drop a file and ask it here."""
    with gr.Tab("Chat", id="chat"):
        with gr.Row(equal_height=True):
            document = gr.Dropdown(
                label="Document",
                choices=[],
                elem_id="chat-doc",
                allow_custom_value=True,
                scale=3,
                info="askable seconds after its upload: specific questions are "
                "answered from its passages while it is read",
            )
            files = gr.File(
                label="Add a document: PDF, EPUB, DOCX, HTML, TXT, Markdown",
                file_count="multiple",
                file_types=list(library.SUPPORTED_SUFFIXES),
                elem_id="chat-upload",
                scale=2,
                height=120,
            )
        status = gr.Markdown(elem_id="chat-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    height=420,
                    elem_id="chatbot",
                    buttons=["copy"],
                    placeholder="Drop a document above (or pick one) and ask a question about it.",
                )
                with gr.Row():
                    question = gr.Textbox(
                        placeholder="Ask about the document…",
                        show_label=False,
                        scale=5,
                        min_width=200,
                        elem_id="question",
                        submit_btn=False,
                    )
                    send_btn = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask")
                    clear_btn = gr.Button("Clear", scale=1, min_width=80, elem_id="clear")
                turn_stats = gr.Markdown(elem_id="turn-stats")
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    documents = gr.Dropdown(
                        label="Several documents at once (answered from their passages)",
                        choices=[(WHOLE_LIBRARY_LABEL, WHOLE_LIBRARY)],
                        value=[],
                        multiselect=True,
                        allow_custom_value=True,
                        elem_id="chat-docs",
                    )
                    with gr.Row(equal_height=True):
                        focus = gr.Radio(
                            list(focusing.CHOICES),
                            value=default_focus(),
                            label="Focus",
                            elem_id="focus",
                            scale=3,
                            info="auto: whole-document questions from the cache, others from the passages they need",
                        )
                        deep_read = gr.Checkbox(
                            label="Deep read",
                            value=False,
                            scale=1,
                            min_width=120,
                            elem_id="deep-read",
                            info="re-read for this question (slower; needs leaf states)",
                        )
                    threads = threads_panel.layout()
                    turn_json = gr.JSON(label="Turn details", elem_id="turn-json")
            reader = reader_pane.layout()
    return ChatTab(
        document,
        files,
        status,
        chatbot,
        question,
        send_btn,
        clear_btn,
        turn_stats,
        documents,
        focus,
        deep_read,
        threads,
        turn_json,
        reader,
    )


def wire(
    services: Services,
    tab: ChatTab,
    state: PageState,
    generation: list,
    gpu: Callable,
    refreshed: dict,
    update_pickers: dict,
) -> None:
    """The chat's events. ``generation``: the temperature and max new tokens sliders (Settings
    tab); ``gpu`` wraps the function that runs the model (``spaces.GPU`` on ZeroGPU);
    ``refreshed``: the library refresh event; ``update_pickers``: the pickers' update
    (:func:`app.ui.pickers.update_event`)."""
    # the chat's own drop area: the new document is picked there once its text is stored (update_pickers)
    tab.files.upload(
        services.bind(upload_in_chat),
        [tab.files, state.model, state.settings, state.waiting],
        [tab.status, tab.files, state.waiting, tab.document],
        api_visibility="private",
    ).then(**refreshed).then(**update_pickers)

    picked = [tab.document, tab.documents, state.model, state.settings]
    no_sources = reader_pane.no_sources_event(tab.reader)
    picker = threads_panel.picker_event(services, tab.threads, tab.document)
    conversation = [tab.chatbot, tab.turn_stats]
    tab.document.change(
        services.bind(pick_chat), picked, conversation, show_progress="hidden", api_visibility="private"
    ).then(**no_sources).then(**picker)
    # threads: API /threads (the list), /new_thread, /open_thread, /rename_thread, /delete_thread
    threads_panel.wire(services, tab.threads, tab.document, conversation, no_sources)
    tab.documents.change(
        services.bind(pick_chat), picked, conversation, show_progress="hidden", api_visibility="private"
    ).then(**no_sources)

    # API: document, question, temperature, max new tokens[, deep read, focus, documents] (states are not API
    # inputs); documents: ids, prefixes or names, or "*" for the whole library, instead of the one document
    answer = model_turns.takes_turns("ui ask")(gpu(services.bind(ask)))  # one model call at a time, every door
    ask_inputs = [
        tab.document,
        tab.question,
        *generation,
        state.model,
        state.settings,
        tab.deep_read,
        tab.focus,
        tab.documents,
        state.waiting,
    ]
    ask_outputs = [tab.chatbot, tab.question, tab.turn_stats, tab.turn_json]
    sources = reader_pane.sources_event(tab.reader, tab.turn_json)
    tab.send_btn.click(
        answer, ask_inputs, ask_outputs, api_name="ask", concurrency_limit=model_turns.TURNS, concurrency_id="gpu"
    ).then(**sources).then(**picker)
    tab.question.submit(
        answer,
        ask_inputs,
        ask_outputs,
        api_visibility="private",
        concurrency_limit=model_turns.TURNS,
        concurrency_id="gpu",
    ).then(**sources).then(**picker)
    cleared = services.bind(clear)
    clear_outputs = [tab.chatbot, tab.turn_stats, tab.turn_json]
    tab.clear_btn.click(cleared, picked, clear_outputs, api_name="clear").then(**no_sources).then(**picker)
    tab.chatbot.clear(cleared, picked, clear_outputs, api_visibility="private").then(**no_sources)
    reader_pane.wire(services, tab.reader)
