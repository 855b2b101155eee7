"""The Gradio UI, declared in one function. Handlers are thin: they call :mod:`app.chat`,
:mod:`app.library` and :mod:`app.inspector`, which work on the store and the build queue.

Tabs: Chat first — the conversation leads: a drop area beside the document picker, so a
newcomer drops a file and asks it in the same view (the new document is picked as soon as its
text is stored, seconds after the upload, with its reading progress in its label; specific
questions are answered from its passages while it is read); streaming answers, time to first
token; under a closed "Advanced" fold several documents or the whole library at once, the
focus strategy, deep read, threads and the turn's details; beside it the reader,
:mod:`app.reader`, which opens a source of the last answer at its page or section. Then
Library (upload, live build state, delete), Share (export / import bundles), Inspector (what
the cache kept, the merge tree), Settings (model, HOMER settings, generation settings)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import pandas as pd

from homer.generation import GenerationSettings
from homer.config import SIGNIFICANCE_CHOICES
from storage.bundle_schema import max_bundle_bytes
from storage.errors import StoreError

from .. import answering
from .. import focus as focusing
from .. import inspector, library, mcp_tools, model_turns, reader
from ..chat import ChatError, ChatService, settings_overrides
from ..space import on_zero_gpu, spaces_gpu  # noqa: F401  (app.py imports them from here)
from ..threads import NEW_THREAD, Threads
from ..multi_document import WHOLE_LIBRARY, WHOLE_LIBRARY_LABEL, SeveralDocuments, describe

CSS = """
#homer-title h1 {margin-bottom: 0}
#turn-stats {min-height: 1.5em}
.library-table td {white-space: normal}
""" + reader.CSS
THEME = gr.themes.Soft(primary_hue="blue")
SIGNIFICANCE = list(SIGNIFICANCE_CHOICES)
CACHE_DTYPES = ["float16", "bfloat16", "float32"]
SPANS = ["word", "sentence", "token"]


def _identity(fn):
    return fn


def default_focus() -> str:
    """The focus control's first value: ``HOMER_FOCUS`` when it names a strategy, else ``auto``."""
    name = (os.environ.get("HOMER_FOCUS") or focusing.DEFAULT_FOCUS).strip().lower()
    return name if name in focusing.CHOICES else focusing.DEFAULT_FOCUS


def build_ui(store, queue, chat: ChatService, model_name: str, gpu: Callable | None = None, auth: bool = False,
             allow_model_change: bool = True, refresh_seconds: float = 2.0,
             slices=None, access: mcp_tools.Access | None = None) -> gr.Blocks:
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
    gpu = gpu or _identity
    access = access or mcp_tools.Access(login=auth)
    team = access.team  # documents are per user: the access column and sharing are shown
    several = SeveralDocuments(chat)  # questions over several documents, on the same chat service

    def owner_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """The user key (None: no login); raises SignInRequired (a StoreError) when signed out."""
        return access.owner(request, profile)

    def session_of(request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
        try:
            owner = owner_of(request, profile)
        except mcp_tools.SignInRequired:
            owner = None
        if owner:
            return f"user:{owner}"  # a logged-in user's conversations survive a reload
        return f"session:{getattr(request, 'session_hash', None) or 'local'}"

    def fail(exc: Exception):
        raise gr.Error(str(exc), print_exception=False)

    threads = Threads(chat)  # named conversation threads per user and document, kept in the store

    # --- handlers: library ------------------------------------------------------------------
    def refresh(model: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        fingerprint = chat.model(model)[2]
        try:
            entries = library.library(store, model, fingerprint, owner_of(request, profile))
        except mcp_tools.SignInRequired:  # signed out: no library
            entries = []
        table = pd.DataFrame(library.table_rows(entries, team), columns=headers)
        version = json.dumps({"every": library.choices(entries), "askable": library.askable_choices(entries),
                              "ready": library.choices(entries, ready_only=True),
                              "reading": {e["id"]: e["reading"] for e in entries if e["askable"] and e["reading"]}})
        return table, version

    def update_pickers(version: str, lib_doc, chat_doc, share_doc, insp_doc, chat_docs, waiting: list | None,
                       request: gr.Request = None, profile: gr.OAuthProfile | None = None):
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
        states = [(item, pending_state(item, request, profile)) for item in waiting or [] if item not in arrived]
        waiting = [item for item, state in states if state and not state.startswith("reading failed")]

        def pick(value, options, ids, default=None):
            return gr.update(choices=options, value=value if value in ids else default)

        selection = gr.update(choices=[(WHOLE_LIBRARY_LABEL, WHOLE_LIBRARY), *askable],
                              value=[v for v in chat_docs or [] if v in askable_ids or v == WHOLE_LIBRARY])
        chat_pick = pick(chat_doc, askable, askable_ids, None if waiting else first)
        lines = [pending_line(name, state) for (_, name), state in states if state]
        reading = lists.get("reading", {}).get(chat_pick["value"])
        if reading:  # the picked document is still being read (or was not read by this model)
            waits = reading.startswith(("reading ", "queued")) and not reading.endswith("failed")
            lines.append(f"{reading} — ask something specific now; a question about the whole document is answered "
                         "once it has been read" if waits else
                         f"{reading} — specific questions are answered from its passages; read it again in the "
                         "Library for questions about the whole document")
        return (pick(lib_doc, every, every_ids), chat_pick,
                pick(share_doc, ready, ready_ids, first if first in ready_ids else None),
                pick(insp_doc, ready, ready_ids),  # inspecting costs: on request
                selection, waiting, "\n\n".join(lines))

    def pending_state(item: list, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """What an upload ``[id, name]`` whose text is not stored yet is doing ("queued for
        reading"), or None when there is nothing to wait for (gone, or not this user's)."""
        try:
            return answering.pending_state(store, item[0], owner_of(request, profile))
        except mcp_tools.SignInRequired:
            return None

    def pending_line(name: str, state: str) -> str:
        if state.startswith("reading failed"):
            return f"✗ {name}: {state}"
        return f"{name}: {state} — its text is being stored; it can be asked in a few seconds"

    def continue_builds(request: gr.Request, profile: gr.OAuthProfile | None = None):
        """The next slice of this user's oldest unfinished build (builds in requests only)."""
        if access.signed_out(request, profile):
            return gr.update()
        done = slices.run_next(owner_of(request, profile))
        return gr.update() if done is None else done.line

    def submit(files, model: str, settings: dict, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Check and queue uploaded files: yields ``(status text, [[document id, name], …])``,
        the documents accepted (with builds in requests, the first slice runs here too)."""
        if not files:
            yield "", []
            return
        try:
            owner_of(request, profile)
        except mcp_tools.SignInRequired as exc:  # signed out: uploads are refused
            yield f"✗ {exc}", []
            return
        lines, accepted = [], []
        for item in files if isinstance(files, list) else [files]:  # one file in memory at a time
            path = Path(item if isinstance(item, str) else getattr(item, "name", str(item)))
            ids: list[str] = []
            lines += library.submit_upload_file(queue, path, model, settings, owner_of(request, profile), ids)
            accepted += [[document_id, path.name] for document_id in ids]
        yield "\n\n".join(lines), accepted
        if slices is not None and any(line.endswith("queued for reading") for line in lines):
            done = slices.run_next(owner_of(request, profile))  # the first slice, in this request (ZeroGPU)
            if done is not None and done.state == "done":
                yield "\n\n".join(lines + ["✓ reading finished — see the library"]), accepted
            elif done is not None:  # more slices to go, or refused for now (the library says why)
                going_on = ["The library goes on reading while this page is open."]
                going_on = [] if done.state in ("refused", "failed") else going_on
                yield "\n\n".join(lines + [done.line, *going_on]), accepted

    def upload(files, model: str, settings: dict, request: gr.Request, profile: gr.OAuthProfile | None = None):
        for text, _ in submit(files, model, settings, request, profile):
            yield text, None

    def upload_in_chat(files, model: str, settings: dict, waiting: list | None, request: gr.Request,
                       profile: gr.OAuthProfile | None = None):
        """An upload dropped in the chat view: the document is picked there at once when its
        text is already stored (the same file again), else as soon as it is (the refresh after
        this, or a timer tick: :func:`update_pickers`)."""
        text, accepted = "", []
        for text, accepted in submit(files, model, settings, request, profile):
            yield text, None, waiting or [], gr.update()
        if not accepted:
            return
        stored = [item for item in accepted if store.get_document(item[0]) is not None]
        later = [item for item in accepted if item not in stored]
        waiting = [item for item in waiting or [] if item not in accepted] + later
        yield text, None, waiting, stored[-1][0] if stored and not later else None

    def read_again(document_id: str | None, model: str, settings: dict, request: gr.Request,
                   profile: gr.OAuthProfile | None = None):
        if not document_id:
            return "Pick a document first."
        try:
            message = library.submit_existing(queue, document_id, model, settings, owner_of(request, profile))
        except StoreError as exc:
            return f"✗ {exc}"
        if slices is not None:
            done = slices.run_next(owner_of(request, profile))  # a slice in this request (ZeroGPU); the library goes on
            return f"{message}\n\n{done.line}" if done is not None else message
        return message

    def delete(document_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
        if not document_id:
            return "Pick a document first."
        try:
            message = library.delete_document(store, document_id, owner_of(request, profile))
        except StoreError as exc:
            return f"✗ {exc}"
        chat.forget_document(document_id)
        several.forget(document_id)
        return message

    # --- handlers: chat ---------------------------------------------------------------------
    def pick_chat(document_id: str | None, documents: list | None, model: str, settings: dict,
                  request: gr.Request, profile: gr.OAuthProfile | None = None):
        key = session_of(request, profile)
        if documents:  # several documents picked: their conversation
            try:
                return several.history(key, documents, owner_of(request, profile), model, settings or None), ""
            except (ChatError, StoreError):
                return [], ""
        return chat.history(key, document_id), ""

    @model_turns.takes_turns("ui ask")  # one model call at a time with every other door (MCP, API)
    @gpu
    def ask(document_id: str | None, question: str, temperature: float, max_new_tokens: int, model: str,
            settings: dict, deep_read: bool = False, focus: str | None = None, documents: list | None = None,
            waiting: list | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        key = session_of(request, profile)
        try:
            if not document_id and not documents:  # an upload made in the chat, its text not stored yet
                for item in reversed(waiting or []):
                    state = pending_state(item, request, profile)
                    if state:
                        raise ChatError(not_stored(item[1], state))
            generation = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
            if documents:  # several documents (or the whole library): each one's access checked there
                owner = owner_of(request, profile)
                history = several.history(key, documents, owner, model, settings or None)
                turns = several.ask(key, documents, question, owner, model, generation, settings or None,
                                         focus or None, bool(deep_read))
            else:
                if document_id:  # a full id, a unique prefix or a file name (API callers)
                    document_id = stored_id(document_id, owner_of(request, profile))
                history = chat.history(key, document_id)
                turns = threads.ask(key, owner_of(request, profile), document_id, question, model_name=model,
                                    generation=generation, settings=settings or None, deep_read=bool(deep_read),
                                    focus=focus or None)
            shown = history + [{"role": "user", "content": (question or "").strip()}, {"role": "assistant", "content": ""}]
            stats: dict = {}
            for answer, stats in turns:
                shown[-1] = {"role": "assistant", "content": answer}
                status = "deep reading…" if stats.get("phase") == "deep reading" else "answering…"
                yield shown, "", status, stats
        except (ChatError, StoreError, ValueError) as exc:
            fail(exc)
        yield shown, "", describe(stats), stats

    def stored_id(ref: str, owner: str | None) -> str:
        """The id of the document ``ref`` names in the user's library; an upload of theirs
        whose text is not stored yet is refused with what it is doing ("queued for reading")."""
        try:
            return library.check_access(store, ref, owner)["id"]
        except StoreError:
            state = answering.pending_state(store, ref, owner)
            if state is None:
                raise
            raise ChatError(not_stored(ref if len(ref) < 40 else ref[:12], state)) from None

    def not_stored(name: str, state: str) -> str:
        """The refusal of a question about an upload whose text is not stored (yet)."""
        if state.startswith("reading failed"):
            return f"{name}: {state}"
        return f"{name}: {state}: its text is not stored yet — ask again in a few seconds"

    def clear(document_id: str | None, documents: list | None = None, model: str | None = None,
              settings: dict | None = None, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        if documents:
            try:
                several.clear(session_of(request, profile), documents, owner_of(request, profile), model, settings or None)
            except (ChatError, StoreError):
                pass
            return [], "", {}
        if document_id:
            try:
                document_id = library.check_access(store, document_id, owner_of(request, profile))["id"]
            except StoreError:
                return [], "", {}
        chat.clear(session_of(request, profile), document_id)
        return [], "", {}

    # --- handlers: conversation threads (app.threads) -------------------------------------------
    def thread_document(document_id: str | None, request: gr.Request | None,
                        profile: gr.OAuthProfile | None = None) -> str | None:
        if not document_id:
            return None
        return library.check_access(store, document_id, owner_of(request, profile))["id"]

    def list_threads(document: str, request: gr.Request = None,
                     profile: gr.OAuthProfile | None = None) -> list[dict]:
        """Your conversation threads about a document (id, name, messages, created, updated,
        current: the one questions to /ask go to), the most recently used first."""
        try:
            document_id, owner = thread_document(document, request, profile), owner_of(request, profile)
        except StoreError as exc:
            fail(exc)
        current = threads.current(session_of(request, profile), document_id)
        return [{**t, "current": t["id"] == current} for t in threads.list(owner, document_id)]

    def thread_picker(document_id: str | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """The thread dropdown: this user's threads about the document, the current one picked."""
        try:
            document_id, owner = thread_document(document_id, request, profile), owner_of(request, profile)
        except StoreError:  # no access, or signed out: no threads
            document_id, owner = None, None
        rows = threads.list(owner, document_id)
        current = threads.current(session_of(request, profile), document_id)
        choices = [(NEW_THREAD, "")] + [(f"{t['name'] or '(empty)'} · {t['messages'] // 2} "
                                        f"turn{'' if t['messages'] // 2 == 1 else 's'}", t["id"]) for t in rows]
        name = next((t["name"] for t in rows if t["id"] == current), "")
        return gr.Dropdown(choices=choices, value=current or ""), name

    def open_thread(document_id: str | None, thread_id: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None = None):
        """Open a thread (or, for "New thread", start one) in the chat."""
        if not thread_id:
            return new_thread(document_id, request, profile)
        try:
            opened = threads.open(session_of(request, profile), owner_of(request, profile),
                                  thread_document(document_id, request, profile), thread_id)
        except (ChatError, StoreError) as exc:
            fail(exc)
        return (opened["messages"], opened["notice"], *thread_picker(document_id, request, profile))

    def new_thread(document_id: str | None, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """Start a new, empty thread about the document: the next question goes to it."""
        try:
            document_id = thread_document(document_id, request, profile)
            if not document_id:
                raise ChatError("pick a ready document first")
            threads.new(session_of(request, profile), owner_of(request, profile), document_id)
        except (ChatError, StoreError) as exc:
            fail(exc)
        return ([], "new thread: it is named after its first question",
                *thread_picker(document_id, request, profile))

    def rename_thread(document_id: str | None, thread_id: str | None, name: str, request: gr.Request = None,
                      profile: gr.OAuthProfile | None = None):
        try:
            if not thread_id:
                raise ChatError("pick a thread to rename")
            threads.rename(owner_of(request, profile), thread_id, name)
        except (ChatError, StoreError) as exc:
            fail(exc)
        return thread_picker(document_id, request, profile)

    def delete_thread(document_id: str | None, thread_id: str | None, request: gr.Request = None,
                      profile: gr.OAuthProfile | None = None):
        """Delete a thread and its messages (the stored cache is untouched)."""
        try:
            if not thread_id:
                raise ChatError("pick a thread to delete")
            threads.delete(owner_of(request, profile), thread_id)
        except (ChatError, StoreError) as exc:
            fail(exc)
        return ([], "thread deleted", *thread_picker(document_id, request, profile))

    # --- handlers: the reader ------------------------------------------------------------------
    def show_sources(stats: dict | None):
        """The last answer's sources, listed beside the chat (none: the list is hidden)."""
        found = reader.places_of(stats)
        return gr.Dataset(samples=[[reader.choice_label(p)] for p in found], visible=bool(found)), found

    def read(opened):
        if isinstance(opened, str):
            return reader.message_html(opened), {}
        return opened.html, opened.state()

    def open_source(index, found: list | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Open the clicked source in the reader: only a document the user may see."""
        if not isinstance(index, int) or not found or not 0 <= index < len(found):
            return gr.update(), gr.update()
        try:
            return read(reader.open_place(store, found[index], owner_of(request, profile)))
        except (StoreError, ValueError) as exc:
            return read(f"✗ {exc}")

    def turn_page(opened: dict | None, step: int, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """The reader's previous / next page or section of the document it shows."""
        if not opened or not opened.get("document_id"):
            return gr.update(), gr.update()
        number = int(opened.get("location") or 1) + step
        if not 1 <= number <= int(opened.get("count") or 1):
            return gr.update(), gr.update()
        try:
            return read(reader.open_location(store, opened["document_id"], number, owner_of(request, profile)))
        except (StoreError, ValueError) as exc:
            return read(f"✗ {exc}")

    def previous_page(opened: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return turn_page(opened, -1, request, profile)

    def next_page(opened: dict | None, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return turn_page(opened, 1, request, profile)

    # --- handlers: share --------------------------------------------------------------------
    def export(document_id: str | None, model: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        if not document_id:
            fail(ChatError("pick a ready document to export"))
        try:
            path = library.export_document(store, document_id, chat.model(model)[2], owner_of(request, profile))
        except StoreError as exc:
            fail(exc)
        return str(path), library.export_message(path)

    def import_(bundle, model: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        if not bundle:
            return "Choose a bundle (.zip) first."
        path = bundle if isinstance(bundle, str) else getattr(bundle, "name", str(bundle))
        try:  # the upload was streamed to a file by the server; the importer streams from it
            _, tokenizer, fingerprint = chat.model(model)
            row = library.import_bundle_file(store, path, fingerprint, owner_of(request, profile), tokenizer=tokenizer)
        except StoreError as exc:
            return f"✗ {exc}"
        name = row.get("file_name") or row["document_id"][:12]  # the importer's own name for it
        if row.get("already_in_store"):
            return (f"✓ {name}: this cache is already in the store (kept as it was) — ready to chat.")
        return (f"✓ imported {name}: {row['tokens']} cache tokens built by "
                f"{row['model_name'] or row['model_fingerprint'][:12]} — ready to chat, no reading needed.")

    # --- handlers: the team library (sign-in or --auth) -----------------------------------------
    def share(document_id: str | None, grantees: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Share a document of yours read-only with the named users (or everyone)."""
        if not document_id:
            return "Pick a document first."
        if not (grantees or "").strip():
            return "Type user names (comma-separated), or everyone."
        try:
            users = set(access.users) if access.login and access.users else None  # --auth: known names only
            return "✓ " + library.share_document(store, document_id, owner_of(request, profile), grantees, users)
        except StoreError as exc:
            return f"✗ {exc}"

    def unshare(document_id: str | None, grantees: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        """Stop sharing a document of yours with the named users (empty: with anyone)."""
        if not document_id:
            return "Pick a document first."
        try:
            return "✓ " + library.unshare_document(store, document_id, owner_of(request, profile), grantees or None)
        except StoreError as exc:
            return f"✗ {exc}"

    # --- handlers: inspector -----------------------------------------------------------------
    def inspect(document_id: str | None, model: str, settings: dict, request: gr.Request,
                profile: gr.OAuthProfile | None = None):
        if not document_id:
            return None, None, "Pick a ready document."
        try:
            document_id = library.check_access(store, document_id, owner_of(request, profile))["id"]
            _, tokenizer, fingerprint = chat.model(model)
            row = chat.ready_cache(document_id, model, settings or None)
            if row is None:
                return None, None, "This document has no cache of the model in use yet."
            cache, _, _ = chat.load_cache(row["id"], fingerprint)
            shape, data = inspector.inspect(store, row, cache, tokenizer)
        except (StoreError, ValueError) as exc:
            return None, None, f"✗ {exc}"
        title = f"Kept tokens per {data['unit'] if data['unit'] in ('page', 'section') else 'stretch of the text'}"
        return (inspector.density_figure(data, title), inspector.tree_figure(shape),
                inspector.summary_markdown(shape, data))

    # --- handlers: settings ------------------------------------------------------------------
    def model_markdown(model: str) -> str:
        info = chat.model_info(model)
        return (f"**Model in use:** `{library.short_model(info['name'])}` · fingerprint `{info['fingerprint'][:12]}` · "
                f"{info['layers']} layers · window {info['window']} tokens · {info['device']} / {info['dtype']}")

    def settings_fields(model: str, settings: dict):
        defaults = chat.model_info(model)["defaults"]
        merged = {**defaults, **(settings or {})}
        return (merged["max_chunk_len"], merged["target_len"], merged["warmup_layers"], merged["significance"],
                merged["pool_width"], merged["span"], merged["query_rows"], merged["cache_dtype"])

    def on_load(model: str, settings: dict):
        return (model_markdown(model), *settings_fields(model, settings))

    def use_model(name: str, current: str):
        name = (name or "").strip() or "embedded"
        if not allow_model_change and name != current:
            return current, current, {}, "✗ this app serves one model; start it with `--model` to use another", \
                *settings_fields(current, {})
        try:
            chat.model(name)
        except Exception as exc:  # unknown id, no network, not a causal LM …
            return current, current, {}, f"✗ cannot load {name}: {type(exc).__name__}: {exc}"[:500], \
                *settings_fields(current, {})
        return name, name, {}, model_markdown(name), *settings_fields(name, {})

    def apply_settings(model: str, m, t, w, significance, pool, span, rows, dtype):
        requested = {"max_chunk_len": m, "target_len": t, "warmup_layers": w, "significance": significance,
                     "pool_width": pool, "span": span, "query_rows": rows, "cache_dtype": dtype}
        try:
            overrides = settings_overrides(chat.model(model)[0].config, requested)
        except (ValueError, TypeError) as exc:
            return gr.update(), f"✗ {exc}"
        if not overrides:
            return {}, "Using the defaults derived from the model."
        return overrides, ("New documents will be read with " + ", ".join(f"{k} = {v}" for k, v in overrides.items())
                           + "; a document already read with other settings can be read again from the Library.")

    # --- layout -------------------------------------------------------------------------------
    # delete_cache: the server's copies of uploads and exported bundles go after a day
    headers = library.TEAM_HEADERS if team else library.HEADERS
    with gr.Blocks(title="HOMER Chat", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        model_state = gr.State(model_name)
        settings_state = gr.State({})
        version = gr.State("")
        waiting = gr.State([])  # uploads made in the chat, picked there once their text is stored: [[id, name], …]
        gr.Markdown("# HOMER Chat\nLet a small model read a whole book once, keep what it read as a compact "
                    "cache, and answer question after question from that cache.", elem_id="homer-title")
        model_line = gr.Markdown()
        if access.oauth:  # a Space with hf_oauth: true (or HOMER_HF_OAUTH=1)
            gr.LoginButton(elem_id="login")

        with gr.Tabs(selected="chat"):
            with gr.Tab("Chat", id="chat"):  # first: drop a file and ask it here
                with gr.Row(equal_height=True):
                    chat_doc = gr.Dropdown(label="Document", choices=[], elem_id="chat-doc", allow_custom_value=True,
                                           scale=3, info="askable seconds after its upload: specific questions are "
                                                         "answered from its passages while it is read")
                    chat_files = gr.File(label="Add a document: PDF, EPUB, DOCX, HTML, TXT, Markdown",
                                         file_count="multiple", file_types=list(library.SUPPORTED_SUFFIXES),
                                         elem_id="chat-upload", scale=2, height=120)
                chat_status = gr.Markdown(elem_id="chat-status")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=420):
                        chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot", buttons=["copy"],
                                             placeholder="Drop a document above (or pick one) and ask a question "
                                                         "about it.")
                        with gr.Row():
                            question = gr.Textbox(placeholder="Ask about the document…", show_label=False, scale=5,
                                                  min_width=200, elem_id="question", submit_btn=False)
                            send_btn = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask")
                            clear_btn = gr.Button("Clear", scale=1, min_width=80, elem_id="clear")
                        turn_stats = gr.Markdown(elem_id="turn-stats")
                        with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                            chat_docs = gr.Dropdown(label="Several documents at once (answered from their passages)",
                                                    choices=[(WHOLE_LIBRARY_LABEL, WHOLE_LIBRARY)], value=[],
                                                    multiselect=True, allow_custom_value=True, elem_id="chat-docs")
                            with gr.Row(equal_height=True):
                                focus = gr.Radio(list(focusing.CHOICES), value=default_focus(), label="Focus",
                                                 elem_id="focus", scale=3,
                                                 info="auto: whole-document questions from the cache, others from "
                                                      "the passages they need")
                                deep_read = gr.Checkbox(label="Deep read", value=False, scale=1, min_width=120,
                                                        elem_id="deep-read",
                                                        info="re-read for this question (slower; needs leaf states)")
                            with gr.Row(equal_height=True):
                                thread_pick = gr.Dropdown(label="Thread", choices=[(NEW_THREAD, "")], value="",
                                                          scale=3, elem_id="thread", allow_custom_value=True,
                                                          info="your conversations about this document, kept on "
                                                               "the server")
                                thread_title = gr.Textbox(label="Thread name", scale=2, max_length=80,
                                                          elem_id="thread-name")
                            with gr.Row():
                                new_thread_btn = gr.Button("New thread", min_width=80, elem_id="new-thread")
                                rename_thread_btn = gr.Button("Rename", min_width=80, elem_id="rename-thread")
                                delete_thread_btn = gr.Button("Delete thread", variant="stop", min_width=80,
                                                              elem_id="delete-thread")
                            turn_json = gr.JSON(label="Turn details", elem_id="turn-json")
                    with gr.Column(scale=2, min_width=360, elem_id="reader-pane"):
                        source_list = gr.Dataset(label="Sources of the last answer: click one to open it",
                                                 components=["textbox"], samples=[], type="index", visible=False,
                                                 samples_per_page=12, elem_id="sources")
                        places = gr.State([])  # the last answer's sources (app.reader places)
                        opened = gr.State({})  # what the reader shows: document, location, count
                        reader_view = gr.HTML(reader.EMPTY, elem_id="reader", js_on_load=reader.SCROLL_JS)
                        with gr.Row():
                            previous_btn = gr.Button("‹ previous", size="sm", elem_id="reader-previous")
                            next_btn = gr.Button("next ›", size="sm", elem_id="reader-next")

            with gr.Tab("Library", id="library"):
                with gr.Row():
                    files = gr.File(label="Add documents (PDF, EPUB, DOCX, HTML, TXT, Markdown — several at once is fine)",
                                    file_count="multiple", file_types=list(library.SUPPORTED_SUFFIXES),
                                    elem_id="upload", scale=3)
                    upload_status = gr.Markdown(elem_id="upload-status")
                table = gr.Dataframe(headers=headers, interactive=False, wrap=True, elem_id="library-table",
                                     elem_classes=["library-table"], label="Documents")
                with gr.Row():
                    lib_doc = gr.Dropdown(label="Document", choices=[], scale=3, elem_id="library-doc",
                                          allow_custom_value=True)
                    read_btn = gr.Button("Read with the current settings", scale=1)
                    delete_btn = gr.Button("Delete", variant="stop", scale=1, elem_id="delete")
                with gr.Row(visible=team):  # the team library: read-only shares of your documents
                    share_with = gr.Textbox(label="Share with", placeholder="user names, comma-separated, or everyone",
                                            scale=3, elem_id="share-with",
                                            info=library.share_info(access.oauth))
                    share_btn = gr.Button("Share", scale=1, elem_id="share")
                    unshare_btn = gr.Button("Unshare", scale=1, elem_id="unshare")
                library_status = gr.Markdown()

            with gr.Tab("Share", id="share"):
                gr.Markdown("Export a document's cache as a bundle (cache, text, source, checksums) so a teammate "
                            "can chat with it without reading it again; import a teammate's bundle. Bundles are "
                            "checked completely before anything is stored.")
                with gr.Row():
                    share_doc = gr.Dropdown(label="Ready document", choices=[], scale=3, elem_id="share-doc",
                                            allow_custom_value=True)
                    export_btn = gr.Button("Export bundle", scale=1, elem_id="export")
                export_file = gr.File(label="Bundle to download", interactive=False, elem_id="export-file")
                with gr.Row():
                    bundle = gr.File(label=f"Import a bundle (.zip, up to {max_bundle_bytes() / 2**20:.0f} MB)",
                                     file_types=[".zip"], elem_id="bundle", scale=3)
                    import_btn = gr.Button("Import", scale=1, elem_id="import")
                share_status = gr.Markdown(elem_id="share-status")

            with gr.Tab("Inspector", id="inspector"):
                with gr.Row():
                    insp_doc = gr.Dropdown(label="Ready document", choices=[], scale=3, elem_id="inspector-doc",
                                           allow_custom_value=True)
                    inspect_btn = gr.Button("Inspect", scale=1, elem_id="inspect")
                summary = gr.Markdown(elem_id="inspector-summary")
                density_plot = gr.Plot(label="Kept-token density", elem_id="density-plot", format="png")
                tree_plot = gr.Plot(label="Merge tree", elem_id="tree-plot", format="png")

            with gr.Tab("Settings", id="settings"):
                with gr.Row():
                    model_box = gr.Textbox(value=model_name, label="Model: embedded, a Hugging Face id or a local folder",
                                           interactive=allow_model_change, scale=4)
                    model_btn = gr.Button("Use this model", scale=1, interactive=allow_model_change)
                model_info = gr.Markdown()
                gr.Markdown("**HOMER settings** for new builds (defaults derived from the model: M = window / 2, "
                            "T = M, W ≈ 3/8 of the layers). A cache is only ever used with the model and settings "
                            "it was built with.")
                with gr.Row():
                    m_box = gr.Number(label="M: cached document tokens (the window minus M is left for the conversation)", precision=0, minimum=4)
                    t_box = gr.Number(label="T: cache tokens", precision=0, minimum=4)
                    w_box = gr.Number(label="W: warm-up layers", precision=0, minimum=0)
                with gr.Row():
                    significance = gr.Dropdown(SIGNIFICANCE, label="significance", value="calibrated")
                    pool = gr.Number(label="pool width (0 = off)", precision=0, minimum=0, value=0)
                    span = gr.Dropdown(SPANS, label="pruning unit (token = the paper's)", value="word")
                    rows = gr.Number(label="scoring queries (1 = the paper's last token)", precision=0, minimum=1,
                                     value=24)
                    dtype = gr.Dropdown(CACHE_DTYPES, label="cache dtype", value="float16")
                apply_btn = gr.Button("Apply HOMER settings")
                settings_status = gr.Markdown()
                gr.Markdown("**Generation**")
                with gr.Row():
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
                    max_new_tokens = gr.Slider(8, 1024, value=256, step=8, label="max new tokens")

        timer = gr.Timer(refresh_seconds)
        mcp_tools.add_tools(store, queue, chat, model_name, access, gpu=gpu, slices=slices)  # the MCP tools

        # --- events ---------------------------------------------------------------------------
        pickers = [lib_doc, chat_doc, share_doc, insp_doc]
        settings_boxes = [m_box, t_box, w_box, significance, pool, span, rows, dtype]
        demo.load(on_load, [model_state, settings_state], [model_line, *settings_boxes], api_visibility="private") \
            .then(lambda text: text, model_line, model_info, api_visibility="private") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        timer.tick(refresh, model_state, [table, version], show_progress="hidden", api_name="library")
        if slices is not None:  # builds in requests: each refresh runs the next slice of the user's build
            timer.tick(continue_builds, None, library_status, show_progress="hidden", api_name="continue_builds")
        update = dict(fn=update_pickers, inputs=[version, *pickers, chat_docs, waiting],
                      outputs=[*pickers, chat_docs, waiting, chat_status], show_progress="hidden",
                      api_visibility="private")
        version.change(**update)

        files.upload(upload, [files, model_state, settings_state], [upload_status, files], api_name="upload") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        # the chat's own drop area: the new document is picked there once its text is stored (update_pickers)
        chat_files.upload(upload_in_chat, [chat_files, model_state, settings_state, waiting],
                          [chat_status, chat_files, waiting, chat_doc], api_visibility="private") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private") \
            .then(**update)
        read_btn.click(read_again, [lib_doc, model_state, settings_state], library_status) \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        delete_btn.click(delete, lib_doc, library_status, api_name="delete") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        share_btn.click(share, [lib_doc, share_with], library_status, api_name="share") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        unshare_btn.click(unshare, [lib_doc, share_with], library_status, api_name="unshare") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")

        picked = [chat_doc, chat_docs, model_state, settings_state]
        no_sources = dict(fn=lambda: show_sources({}), inputs=None, outputs=[source_list, places],
                          show_progress="hidden", api_visibility="private")
        thread_outputs = [thread_pick, thread_title]
        picker = dict(fn=thread_picker, inputs=chat_doc, outputs=thread_outputs, show_progress="hidden",
                      api_visibility="private")
        chat_doc.change(pick_chat, picked, [chatbot, turn_stats], show_progress="hidden", api_visibility="private") \
            .then(**no_sources).then(**picker)
        # threads: API /threads (the list), /new_thread, /open_thread, /rename_thread, /delete_thread
        gr.api(list_threads, api_name="threads")
        opened_thread = [chatbot, turn_stats, *thread_outputs]
        thread_pick.input(open_thread, [chat_doc, thread_pick], opened_thread, api_name="open_thread",
                          show_progress="hidden").then(**no_sources)
        new_thread_btn.click(new_thread, chat_doc, opened_thread, api_name="new_thread").then(**no_sources)
        rename_thread_btn.click(rename_thread, [chat_doc, thread_pick, thread_title], thread_outputs,
                                api_name="rename_thread")
        delete_thread_btn.click(delete_thread, [chat_doc, thread_pick], opened_thread, api_name="delete_thread") \
            .then(**no_sources)
        chat_docs.change(pick_chat, picked, [chatbot, turn_stats], show_progress="hidden", api_visibility="private") \
            .then(**no_sources)
        # API: document, question, temperature, max new tokens[, deep read, focus, documents] (states are not API
        # inputs); documents: ids, prefixes or names, or "*" for the whole library, instead of the one document
        ask_inputs = [chat_doc, question, temperature, max_new_tokens, model_state, settings_state, deep_read, focus,
                      chat_docs, waiting]
        ask_outputs = [chatbot, question, turn_stats, turn_json]
        sources_of_turn = dict(fn=show_sources, inputs=turn_json, outputs=[source_list, places], show_progress="hidden",
                               api_visibility="private")
        send_btn.click(ask, ask_inputs, ask_outputs, api_name="ask", concurrency_limit=model_turns.TURNS,
                       concurrency_id="gpu") \
            .then(**sources_of_turn).then(**picker)
        question.submit(ask, ask_inputs, ask_outputs, api_visibility="private",
                        concurrency_limit=model_turns.TURNS, concurrency_id="gpu") \
            .then(**sources_of_turn).then(**picker)
        clear_inputs = [chat_doc, chat_docs, model_state, settings_state]
        clear_btn.click(clear, clear_inputs, [chatbot, turn_stats, turn_json], api_name="clear").then(**no_sources) \
            .then(**picker)
        chatbot.clear(clear, clear_inputs, [chatbot, turn_stats, turn_json], api_visibility="private") \
            .then(**no_sources)
        source_list.click(open_source, [source_list, places], [reader_view, opened], show_progress="hidden",
                          api_visibility="private")
        previous_btn.click(previous_page, opened, [reader_view, opened], show_progress="hidden",
                           api_visibility="private")
        next_btn.click(next_page, opened, [reader_view, opened], show_progress="hidden", api_visibility="private")

        export_btn.click(export, [share_doc, model_state], [export_file, share_status], api_name="export")
        import_btn.click(import_, [bundle, model_state], share_status, api_name="import_bundle") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")

        inspect_outputs = [density_plot, tree_plot, summary]
        inspect_btn.click(inspect, [insp_doc, model_state, settings_state], inspect_outputs, api_name="inspect")
        insp_doc.change(inspect, [insp_doc, model_state, settings_state], inspect_outputs, api_visibility="private")

        model_btn.click(use_model, [model_box, model_state], [model_state, model_box, settings_state, model_info,
                                                              *settings_boxes], api_visibility="private") \
            .then(lambda model: model_markdown(model), model_state, model_line, api_visibility="private") \
            .then(refresh, model_state, [table, version], show_progress="hidden", api_visibility="private")
        apply_btn.click(apply_settings, [model_state, *settings_boxes], [settings_state, settings_status], api_visibility="private")
    return demo

