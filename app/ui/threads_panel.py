"""Conversation threads in the Chat tab's "Advanced" fold: this user's threads about the
picked document (:mod:`app.threads`), open one, start a new one, rename or delete one. Also
through the API: /threads (the list), /new_thread, /open_thread, /rename_thread,
/delete_thread."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.errors import StoreError

from .. import library
from ..chat import ChatError
from ..threads import NEW_THREAD
from .common import Services, fail


@dataclass
class ThreadsPanel:
    """The threads' components."""

    pick: gr.Dropdown
    title: gr.Textbox
    new_btn: gr.Button
    rename_btn: gr.Button
    delete_btn: gr.Button

    @property
    def outputs(self) -> list:
        """What :func:`thread_picker` updates: the dropdown and the thread's name."""
        return [self.pick, self.title]


# --- handlers ---------------------------------------------------------------------------------
def thread_document(
    services: Services, document_id: str | None, request: gr.Request | None, profile: gr.OAuthProfile | None = None
) -> str | None:
    """The id of the document ``document_id`` names in the user's library (None: none picked)."""
    if not document_id:
        return None
    return library.check_access(services.store, document_id, services.owner(request, profile))["id"]


def list_threads(
    services: Services, document: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None
) -> list[dict]:
    """Your conversation threads about a document (id, name, messages, created, updated,
    current: the one questions to /ask go to), the most recently used first."""
    try:
        document_id, owner = thread_document(services, document, request, profile), services.owner(request, profile)
    except StoreError as exc:
        fail(exc)
    current = services.threads.current(services.session(request, profile), document_id)
    return [{**t, "current": t["id"] == current} for t in services.threads.list(owner, document_id)]


def thread_picker(
    services: Services, document_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None
):
    """The thread dropdown: this user's threads about the document, the current one picked."""
    try:
        document_id = thread_document(services, document_id, request, profile)
        owner = services.owner(request, profile)
    except StoreError:  # no access, or signed out: no threads
        document_id, owner = None, None
    rows = services.threads.list(owner, document_id)
    current = services.threads.current(services.session(request, profile), document_id)
    choices = [(NEW_THREAD, "")] + [
        ((f"{t['name'] or '(empty)'} · {t['messages'] // 2} turn{'' if t['messages'] // 2 == 1 else 's'}"), t["id"])
        for t in rows
    ]
    name = next((t["name"] for t in rows if t["id"] == current), "")
    return gr.Dropdown(choices=choices, value=current or ""), name


def open_thread(
    services: Services,
    document_id: str | None,
    thread_id: str | None,
    request: gr.Request,
    profile: gr.OAuthProfile | None = None,
):
    """Open a thread (or, for "New thread", start one) in the chat."""
    if not thread_id:
        return new_thread(services, document_id, request, profile)
    try:
        opened = services.threads.open(
            services.session(request, profile),
            services.owner(request, profile),
            thread_document(services, document_id, request, profile),
            thread_id,
        )
    except (ChatError, StoreError) as exc:
        fail(exc)
    return (opened["messages"], opened["notice"], *thread_picker(services, document_id, request, profile))


def new_thread(
    services: Services, document_id: str | None, request: gr.Request = None, profile: gr.OAuthProfile | None = None
):
    """Start a new, empty thread about the document: the next question goes to it."""
    try:
        document_id = thread_document(services, document_id, request, profile)
        if not document_id:
            raise ChatError("pick a ready document first")
        services.threads.new(services.session(request, profile), services.owner(request, profile), document_id)
    except (ChatError, StoreError) as exc:
        fail(exc)
    return (
        [],
        "new thread: it is named after its first question",
        *thread_picker(services, document_id, request, profile),
    )


def rename_thread(
    services: Services,
    document_id: str | None,
    thread_id: str | None,
    name: str,
    request: gr.Request = None,
    profile: gr.OAuthProfile | None = None,
):
    try:
        if not thread_id:
            raise ChatError("pick a thread to rename")
        services.threads.rename(services.owner(request, profile), thread_id, name)
    except (ChatError, StoreError) as exc:
        fail(exc)
    return thread_picker(services, document_id, request, profile)


def delete_thread(
    services: Services,
    document_id: str | None,
    thread_id: str | None,
    request: gr.Request = None,
    profile: gr.OAuthProfile | None = None,
):
    """Delete a thread and its messages (the stored cache is untouched)."""
    try:
        if not thread_id:
            raise ChatError("pick a thread to delete")
        services.threads.delete(services.owner(request, profile), thread_id)
    except (ChatError, StoreError) as exc:
        fail(exc)
    return ([], "thread deleted", *thread_picker(services, document_id, request, profile))


# --- layout and events ------------------------------------------------------------------------
def layout() -> ThreadsPanel:
    """The thread picker, its name and its buttons, inside the "Advanced" fold."""
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(
            label="Thread",
            choices=[(NEW_THREAD, "")],
            value="",
            scale=3,
            elem_id="thread",
            allow_custom_value=True,
            info="your conversations about this document, kept on the server",
        )
        title = gr.Textbox(label="Thread name", scale=2, max_length=80, elem_id="thread-name")
    with gr.Row():
        new_btn = gr.Button("New thread", min_width=80, elem_id="new-thread")
        rename_btn = gr.Button("Rename", min_width=80, elem_id="rename-thread")
        delete_btn = gr.Button("Delete thread", variant="stop", min_width=80, elem_id="delete-thread")
    return ThreadsPanel(pick, title, new_btn, rename_btn, delete_btn)


def picker_event(services: Services, panel: ThreadsPanel, chat_doc: gr.Dropdown) -> dict:
    """The keyword arguments of the event that updates the thread dropdown for the picked
    document (after a question, or another document picked)."""
    return {
        "fn": services.bind(thread_picker),
        "inputs": chat_doc,
        "outputs": panel.outputs,
        "show_progress": "hidden",
        "api_visibility": "private",
    }


def wire(services: Services, panel: ThreadsPanel, chat_doc: gr.Dropdown, conversation: list, no_sources: dict) -> None:
    """The thread buttons and the API. ``conversation``: the chatbot and the turn's status line,
    which an opened thread fills; ``no_sources``: the event that empties the reader's list."""
    gr.api(services.bind(list_threads), api_name="threads")
    opened = [*conversation, *panel.outputs]
    panel.pick.input(
        services.bind(open_thread), [chat_doc, panel.pick], opened, api_name="open_thread", show_progress="hidden"
    ).then(**no_sources)
    panel.new_btn.click(services.bind(new_thread), chat_doc, opened, api_name="new_thread").then(**no_sources)
    panel.rename_btn.click(
        services.bind(rename_thread), [chat_doc, panel.pick, panel.title], panel.outputs, api_name="rename_thread"
    )
    panel.delete_btn.click(services.bind(delete_thread), [chat_doc, panel.pick], opened, api_name="delete_thread").then(
        **no_sources
    )
