"""Chat sessions over stored caches: plain functions the UI calls, testable without a browser.

* :meth:`ChatService.ready_cache` — the newest ready cache of a document *for the model in
  use* (its fingerprint; a cache of another model is never picked);
* :meth:`ChatService.load_cache` — loaded from the store once, then kept in memory (keyed
  by cache id, a few at a time);
* :meth:`ChatService.ask` — one :class:`homer.Conversation` per (session, document) that
  appends each turn after the cache, streams the answer and reports what the turn cost:
  time to first token, tokens appended, whether the cache came from memory, that the
  document was not encoded again;
* :meth:`ChatService.clear` — forget a conversation; messages are persisted in the store
  (with the turns as the model saw them: :mod:`app.threads` reopens them as named threads).

**Deep read** (``ask(..., deep_read=True)``): when the document's cache has leaf states (the
app or worker was run with ``--deep-read`` / ``HOMER_DEEP_READ=1`` when it was read), the
question is answered from a question-aware cache built for it from those states
(:func:`homer.answering.deep_read.deep_read_document`: only the question runs the leaf layers) in a
fresh conversation, and the turn then joins the regular history. Without leaf states the
question is answered from the stored cache and the turn stats say why deep read was not used.

Under an answer about a document of several pages, a line "Sources: p. 12, p. 47" names the
pages the answer was read from (:mod:`homer.answering.citations`: the answer's attention over the stored
cache's kept tokens, mapped to pages; ``HOMER_CITATIONS=0`` turns it off). A focused answer
lists the passages it was read from instead, in retrieval order, or with
``HOMER_SOURCE_ORDER=attention`` by what the answer attended to (:func:`app.focus.ranked_sources`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from homer.answering import DocumentChat
from homer.cache import HomerCache
from homer.config import HomerConfig
from homer.generation import GenerationSettings
from storage.errors import StoreError

from . import focus as focusing
from . import tasks
from .settings import load_settings
from .turn_line import describe_turn, turn_line_notes  # noqa: F401  (re-exported: callers import them from here)

ModelLoader = Callable[[str | None], tuple]  # name -> (model, tokenizer, fingerprint)


def max_conversations() -> int:
    """Conversations whose working KV cache stays in memory (``HOMER_MAX_CONVERSATIONS``, 8);
    an evicted one keeps its turns and re-appends them on its next question."""
    return load_settings().chat.max_conversations


citations_enabled = focusing.citations_enabled  # where the tests and older callers find it


THREAD_CACHE_REPLACED = (
    "this thread's cache was rebuilt or replaced: answered from the document's current "
    "cache; the earlier messages are shown as text only"
)

DEEP_READ_UNAVAILABLE = (
    "deep read unavailable: this document was read without leaf states "
    "(start the app with --deep-read and read it again)"
)


def max_loaded_caches() -> int:
    """Document caches kept loaded in memory (``HOMER_MAX_LOADED_CACHES``, 4)."""
    return load_settings().chat.max_loaded_caches


class ChatError(ValueError):
    """Something the user can fix (no document picked, not ready for this model, …)."""


@dataclass
class ChatSession:
    """One conversation about one document. ``answering`` (the pipeline, with the KV state
    after the cache) may be released to save memory; ``turns`` survive and are re-appended
    when needed. ``cache_id`` is "" while the document is still being read: the conversation
    goes on over its cache once it is ready."""

    document_id: str
    cache_id: str
    conversation_id: str | None = None
    answering: DocumentChat | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: str | None = None  # whose thread it is (None without login)
    thread: bool = False  # a kept thread (:mod:`app.threads`): a new cache restarts its turns, not the thread
    notice: str = ""  # said with the next turn (the thread's cache was replaced)

    @property
    def conversation(self):
        """The live conversation after the cache (None when released or never opened)."""
        return self.answering.conversation if self.answering is not None else None


def default_settings(model_config) -> dict:
    """HOMER settings derived from the model: M = window / 2, T = M, W ≈ 3/8 · L."""
    return HomerConfig().resolve(model_config).settings()


def settings_overrides(model_config, requested: dict | None) -> dict:
    """Only the settings that differ from the model-derived defaults (so a default build
    from the UI is the same request as one from the command line)."""
    if not requested:
        return {}
    defaults = default_settings(model_config)
    out = {}
    for name, value in requested.items():
        if value is None or value == "" or name not in defaults or name == "custom_bias":
            continue
        if isinstance(defaults[name], int) and not isinstance(defaults[name], bool):
            value = int(value)
        if value != defaults[name]:
            out[name] = value
    if out:
        HomerConfig(**out).resolve(model_config)  # refuse impossible settings now, not in the worker
    return out


class ChatService:
    """Chats about the documents of one store. Thread-safe; one instance per app process."""

    def __init__(self, store, loader: ModelLoader | None = None):
        self.store = store
        self.loader = loader or tasks.get_model
        self._caches: OrderedDict[str, HomerCache] = OrderedDict()
        self._caches_lock = threading.Lock()
        self._sessions: dict[tuple[str, str], ChatSession] = {}
        self._live: OrderedDict[tuple[str, str], None] = OrderedDict()  # sessions holding a KV cache, LRU
        self._sessions_lock = threading.Lock()
        self._verified_leaves: set[tuple[str, str | None]] = set()  # leaf-state files checked this process

    # --- model and caches ----------------------------------------------------------------
    def model(self, model_name: str | None):
        """``(model, tokenizer, fingerprint)``, loaded once per process."""
        return self.loader(None if model_name in (None, "", tasks.EMBEDDED) else model_name)

    def model_info(self, model_name: str | None) -> dict:
        model, _, fingerprint = self.model(model_name)
        config = model.config
        return {
            "name": getattr(model, "homer_name", None) or model_name or tasks.EMBEDDED,
            "fingerprint": fingerprint,
            "layers": int(config.num_hidden_layers),
            "window": int(config.max_position_embeddings),
            "device": str(model.device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "defaults": default_settings(config),
        }

    def ready_cache(self, document_id: str, model_name: str | None, settings: dict | None = None) -> dict | None:
        """The ready cache of ``document_id`` built by this model — preferring one with the
        requested HOMER settings, else the newest. None when this model has none."""
        model, _, fingerprint = self.model(model_name)
        rows = self.store.caches(document_id, model_fingerprint=fingerprint)
        if not rows:
            return None
        if settings is not None:
            wanted = HomerConfig(**settings).resolve(model.config).settings_json()
            for row in rows:
                if row["settings"] == wanted:
                    return row
        return rows[0]

    def load_cache(self, cache_id: str, fingerprint: str) -> tuple[HomerCache, bool, float]:
        """``(cache, from_memory, seconds)``: the stored cache, read from disk (checksum and
        fingerprint checked) the first time, from memory afterwards."""
        started = time.perf_counter()
        with self._caches_lock:
            cache = self._caches.get(cache_id)
            if cache is not None:
                self._caches.move_to_end(cache_id)
                if cache.fingerprint != fingerprint:  # never reuse another model's cache
                    raise StoreError(f"cache {cache_id[:12]} was built by another model")
                return cache, True, time.perf_counter() - started
        cache = self.store.load_cache(cache_id, expected_fingerprint=fingerprint)
        with self._caches_lock:
            self._caches[cache_id] = cache
            while len(self._caches) > max_loaded_caches():
                self._caches.popitem(last=False)
        return cache, False, time.perf_counter() - started

    def forget_document(self, document_id: str) -> None:
        """Drop everything held in memory for a document (it was deleted)."""
        with self._sessions_lock:
            for key in [k for k in self._sessions if k[1] == document_id]:
                self._sessions.pop(key)
                self._live.pop(key, None)
        with self._caches_lock:
            for cache_id in [
                c for c, cache in self._caches.items() if cache.metadata.get("document_id") == document_id
            ]:
                self._caches.pop(cache_id)

    # --- conversations -------------------------------------------------------------------
    def session(self, session_key: str, document_id: str) -> ChatSession | None:
        with self._sessions_lock:
            return self._sessions.get((session_key, document_id))

    def history(self, session_key: str, document_id: str | None) -> list[dict]:
        """The messages of this session's conversation about ``document_id`` (for the chatbot)."""
        if not document_id:
            return []
        chat = self.session(session_key, document_id)
        return [dict(m) for m in chat.messages] if chat else []

    def clear(self, session_key: str, document_id: str | None) -> None:
        """Forget the conversation (the stored cache is untouched; the next question starts
        from it again)."""
        if not document_id:
            return
        with self._sessions_lock:
            self._sessions.pop((session_key, document_id), None)
            self._live.pop((session_key, document_id), None)

    def _session_for(self, session_key: str, document_id: str, cache_id: str) -> ChatSession:
        key = (session_key, document_id)
        with self._sessions_lock:
            chat = self._sessions.get(key)
            if chat is not None and chat.thread and chat.cache_id != cache_id:  # a thread goes on over the new cache
                if chat.messages and chat.cache_id:
                    chat.notice = THREAD_CACHE_REPLACED
                chat.cache_id, chat.turns, chat.answering = cache_id, [], None
                self._live.pop(key, None)
            elif chat is not None and not chat.cache_id and cache_id:  # read meanwhile: go on over its cache
                chat.cache_id = cache_id
            elif chat is None or chat.cache_id != cache_id:  # model or settings changed: a new conversation
                chat = self._sessions[key] = ChatSession(document_id, cache_id)
                self._live.pop(key, None)
            return chat

    def attach(self, session_key: str, document_id: str, chat: ChatSession) -> None:
        """Make ``chat`` (a reopened or new thread) this session's conversation about a document."""
        with self._sessions_lock:
            self._sessions[(session_key, document_id)] = chat
            self._live.pop((session_key, document_id), None)

    def forget_conversation(self, conversation_id: str) -> None:
        """Drop every session holding a stored conversation (its thread was deleted)."""
        with self._sessions_lock:
            for key in [k for k, c in self._sessions.items() if c.conversation_id == conversation_id]:
                self._sessions.pop(key)
                self._live.pop(key, None)

    def _record(self, chat: ChatSession, question: str, shown: str) -> None:
        """Keep the turn's messages in the session and in the store (with the turns as the
        model saw them, so a reopened thread re-appends them to its cache)."""
        added = [{"role": "user", "content": question}, {"role": "assistant", "content": shown}]
        chat.messages += added
        self.store.save_turn(chat.conversation_id, chat.cache_id or None, added, chat.turns)

    def _keep_live(self, key: tuple[str, str]) -> None:
        with self._sessions_lock:
            self._live[key] = None
            self._live.move_to_end(key)
            while len(self._live) > max_conversations():
                old, _ = self._live.popitem(last=False)
                held = self._sessions.get(old)
                if held is not None and held.answering is not None:
                    held.answering.release()  # its turns are re-appended when needed

    def ask(
        self,
        session_key: str,
        document_id: str,
        question: str,
        model_name: str | None = None,
        generation: GenerationSettings | None = None,
        settings: dict | None = None,
        deep_read: bool = False,
        focus: str | None = None,
        name: str | None = None,
    ) -> Iterator[tuple[str, dict]]:
        """Stream ``(answer so far, turn stats)``; the turn itself is the library's answer
        pipeline (:class:`homer.answering.DocumentChat`, the same for every door), over this
        session's conversation about the document. The last item's answer is shown with its
        sources under it and its stats are complete: the pipeline's
        :class:`~homer.answering.TurnReport` (``focus``, passages, times, tokens, notes …),
        ``sources`` (the label under the answer) and ``source_places`` (where the reader
        opens each source, :mod:`app.reader`), and the store's facts: cache_id, cache_reused,
        cache_source ("memory", "disk" or "none" while the document is still being read),
        cache_load_seconds, thread_id, new_conversation, deep_read.

        A document **still being read** (no cache of this model yet) is askable: a specific
        question is answered from its passages at once; a whole-document question gets one
        line saying how far the reading is (``still reading (43 %) …``).

        ``deep_read``: answer from a question-aware cache built for this question from the
        stored leaf states (:func:`homer.answering.deep_read.deep_read_document`): one item with stats
        ``phase: "deep reading"`` and an empty answer comes first; the final stats hold
        deep_read true, deep_read_seconds and deep_read_mode. Without leaf states the question
        is answered as any other and ``deep_read_unavailable`` says why.

        ``focus`` (:mod:`app.focus`; default ``HOMER_FOCUS``, else ``auto``) overrides the
        strategy for this turn; ``name``: the user's name for the document (its sources)."""
        from homer.answering import AnswerError, DocumentChat

        from . import answering

        question = (question or "").strip()
        if not document_id:
            raise ChatError("pick a document first")
        if not question:
            raise ChatError("type a question")
        try:
            answer_settings = answering.answer_settings()
            answer_settings.strategy(question, focus)
        except (AnswerError, ValueError) as exc:
            raise ChatError(str(exc)) from None
        started = time.perf_counter()
        model, tokenizer, fingerprint = self.model(model_name)
        row = self.ready_cache(document_id, model_name, settings)
        stats: dict = {"deep_read": False}
        waiting = None
        if row is None:  # still being read (or never read by this model): its passages answer
            doc = self.store.get_document(document_id)
            state = answering.reading_state(self.store, document_id)
            if doc is None:
                raise ChatError(
                    f"{state}: its text is not stored yet, ask again in a few seconds"
                    if state and not state.startswith("reading failed")
                    else state or "this document is not in the store"
                )
            cache, cache_id = None, ""
            waiting = (
                f"{state} … a question about the whole document is answered once it has been read; "
                "ask something specific now"
                if state and not state.startswith("reading failed")
                else (
                    f"{state}: a question about the whole document needs its cache — read it again from "
                    "the library; specific questions are answered from its passages"
                    if state
                    else "this document has no cache for the model in use yet: read it in the library for "
                    "questions about the whole document; specific questions are answered from its passages"
                )
            )
            stats.update(
                cache_id=None,
                cache_reused=False,
                cache_source="none",
                cache_load_seconds=0.0,
                reading=state or "not read",
            )
        else:
            cache, from_memory, load_seconds = self.load_cache(row["id"], fingerprint)
            cache_id = row["id"]
            stats.update(
                cache_id=cache_id,
                cache_reused=True,
                cache_source="memory" if from_memory else "disk",
                cache_load_seconds=round(load_seconds, 4),
            )
        chat = self._session_for(session_key, document_id, cache_id)
        key = (session_key, document_id)
        with chat.lock:
            if chat.conversation_id is None:
                chat.conversation_id = self.store.add_conversation(document_id, cache_id or None, owner=chat.owner)
            stats.update(thread_id=chat.conversation_id, new_conversation=chat.answering is None and not chat.turns)
            if chat.notice:
                stats["thread_notice"], chat.notice = chat.notice, ""
            stats["index_built"] = focusing.index_document(self.store, document_id)
            pipeline = chat.answering
            if pipeline is None or pipeline.cache is not cache or pipeline.model is not model:
                row_seen = {
                    "id": document_id,
                    "file_name": name or (self.store.get_document(document_id) or {}).get("file_name"),
                }
                pipeline = chat.answering = DocumentChat(
                    model, tokenizer, answering.stored_document(self.store, row_seen), cache, answer_settings
                )
            pipeline.settings = answer_settings
            pipeline.turns = chat.turns  # one list: the session's turns are the pipeline's
            turn_cache = None
            if deep_read and row is not None:
                leaves, unavailable = self._leaf_states(row, fingerprint)
                if unavailable:
                    stats["deep_read_unavailable"] = unavailable
                if leaves is not None:
                    yield "", {**stats, "phase": "deep reading"}
                    turn_cache = self._deep_read(stats, row, leaves, question, model, tokenizer)
            elif deep_read:
                stats["deep_read_unavailable"] = "deep read unavailable: the document is still being read"
            if turn_cache is None and cache is not None and answer_settings.strategy(question, focus).uses_cache:
                self._keep_live(key)
            answer = None
            try:
                for answer in pipeline.stream(
                    question, focus=focus, generation=generation, cache=turn_cache, waiting=waiting
                ):
                    if not answer.done:
                        yield answer.text, answering.turn_stats(answer, **stats)
            except AnswerError as exc:
                raise ChatError(str(exc)) from None
            final = answering.turn_stats(answer, **stats)
            if turn_cache is not None:  # what the deep read's cache holds, not the stored one's
                final.update(cache_reused=False, cache_source="deep read", cache_tokens=len(turn_cache))
            final["seconds"] = round(time.perf_counter() - started, 4)
            final["answer"] = answer.text  # the answer alone (the API's answer; its sources are their own field)
            shown = answer.shown()
            self._record(chat, question, shown)
        yield shown, final

    def _leaf_states(self, row: dict, fingerprint: str):
        """``(path, None)`` of the cache's checked leaf states, or ``(None, why not)``. The
        checksum is verified once per process and file."""
        from storage.errors import CacheCorrupt

        verified = (row["id"], row.get("leaf_states_checksum"))
        try:
            path = self.store.open_leaf_states(
                row["id"], expected_fingerprint=fingerprint, verify=verified not in self._verified_leaves
            )
        except (CacheCorrupt, StoreError) as exc:
            return None, f"deep read unavailable: {exc}"
        if path is None:
            return None, DEEP_READ_UNAVAILABLE
        self._verified_leaves.add(verified)
        return path, None

    def _deep_read(self, stats: dict, row: dict, leaves, question: str, model, tokenizer):
        """A question-aware cache built for ``question`` from the leaf states with the stored
        cache's settings, or None with ``deep_read_unavailable`` in ``stats`` when the states
        do not fit the model or settings."""
        from homer.answering.deep_read import LeafStateMismatchError, deep_read_document

        began = time.perf_counter()
        try:
            stored = json.loads(row["settings"] or "{}")
            config = HomerConfig(**{k: v for k, v in stored.items() if k != "custom_bias"})
            answer_cache = deep_read_document(
                model, tokenizer, leaves, question, config=config, metadata={"document_id": row["document_id"]}
            )
        except (LeafStateMismatchError, ValueError) as exc:
            stats["deep_read_unavailable"] = f"deep read unavailable: {exc}"
            return None
        stats.update(
            deep_read=True,
            deep_read_seconds=round(time.perf_counter() - began, 4),
            deep_read_mode=answer_cache.metadata.get("deep_read", ""),
        )
        return answer_cache
