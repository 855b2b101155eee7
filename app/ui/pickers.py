"""The document pickers of every tab after a library refresh, and the uploads made in the chat
that wait for their text to be stored: the chat picks such an upload as soon as it is askable
and says meanwhile what it is doing ("queued for reading")."""

from __future__ import annotations

import json

import gradio as gr

from .. import answering
from ..access import SignInRequired
from ..multi_document import WHOLE_LIBRARY, WHOLE_LIBRARY_LABEL
from .common import PageState, Services


def update_pickers(
    services: Services,
    version: str,
    lib_doc,
    chat_doc,
    share_doc,
    insp_doc,
    chat_docs,
    waiting: list | None,
    request: gr.Request = None,
    profile: gr.OAuthProfile | None = None,
):
    """The pickers after a refresh: the chat's offers every askable document (its progress
    in the label while it is read) and picks an upload made in the chat as soon as it is
    askable; ``waiting``: those uploads, ``[[id, name], …]``, until then."""
    lists = json.loads(version or "{}")
    every, askable, ready = ([tuple(c) for c in lists.get(key, [])] for key in ("every", "askable", "ready"))
    every_ids, askable_ids, ready_ids = ({c[1] for c in options} for options in (every, askable, ready))
    first = (ready or askable)[0][1] if ready or askable else None
    arrived = [item for item in waiting or [] if item[0] in askable_ids]
    if arrived:
        chat_doc = arrived[-1][0]  # the newest upload made in the chat, askable now
    states = [(item, pending_state(services, item, request, profile)) for item in waiting or [] if item not in arrived]
    # a failed upload stays in ``waiting`` so its "✗ … reading failed" line stays in the chat
    # status (a line shown for one timer tick was easy to miss) until the next upload in the chat
    kept = [item for item, state in states if state]
    waiting = [item for item, state in states if state and not failed(state)]

    def pick(value, options, ids, default=None):
        return gr.update(choices=options, value=value if value in ids else default)

    selection = gr.update(
        choices=[(WHOLE_LIBRARY_LABEL, WHOLE_LIBRARY), *askable],
        value=[v for v in chat_docs or [] if v in askable_ids or v == WHOLE_LIBRARY],
    )
    chat_pick = pick(chat_doc, askable, askable_ids, None if waiting else first)
    lines = [pending_line(name, state) for (_, name), state in states if state]
    reading = lists.get("reading", {}).get(chat_pick["value"])
    if reading:  # the picked document is still being read (or was not read by this model)
        waits = reading.startswith(("reading ", "queued")) and not reading.endswith("failed")
        lines.append(
            f"{reading} — ask something specific now; a question about the whole document is answered "
            "once it has been read"
            if waits
            else f"{reading} — specific questions are answered from its passages; read it again in the "
            "Library for questions about the whole document"
        )
    return (
        pick(lib_doc, every, every_ids),
        chat_pick,
        pick(share_doc, ready, ready_ids, first if first in ready_ids else None),
        pick(insp_doc, ready, ready_ids),  # inspecting costs: on request
        selection,
        kept,
        "\n\n".join(lines),
    )


def failed(state: str | None) -> bool:
    """Whether a pending upload's state is its reading's failure."""
    return bool(state) and state.startswith("reading failed")


def pending_state(
    services: Services, item: list, request: gr.Request | None, profile: gr.OAuthProfile | None = None
) -> str | None:
    """What an upload ``[id, name]`` whose text is not stored yet is doing ("queued for
    reading"), or None when there is nothing to wait for (gone, or not this user's)."""
    try:
        return answering.pending_state(services.store, item[0], services.owner(request, profile))
    except SignInRequired:
        return None


def pending_line(name: str, state: str) -> str:
    """The chat status line of an upload whose text is not stored yet."""
    if failed(state):
        return f"✗ {name}: {state}"
    return f"{name}: {state} — its text is being stored; it can be asked in a few seconds"


def not_stored(name: str, state: str) -> str:
    """The refusal of a question about an upload whose text is not stored (yet)."""
    if failed(state):
        return f"{name}: {state}"
    return f"{name}: {state}: its text is not stored yet — ask again in a few seconds"


def update_event(
    services: Services, state: PageState, pickers: list, chat_docs: gr.Dropdown, chat_status: gr.Markdown
) -> dict:
    """The keyword arguments of the event that updates the pickers (``pickers``: the library's,
    the chat's, the Share tab's and the Inspector's document pickers), the chat's selection of
    several documents, the waiting uploads and the chat status after a refresh."""
    return {
        "fn": services.bind(update_pickers),
        "inputs": [state.version, *pickers, chat_docs, state.waiting],
        "outputs": [*pickers, chat_docs, state.waiting, chat_status],
        "show_progress": "hidden",
        "api_visibility": "private",
    }
