"""Questions over several documents at once: the passages of every selected document, fused.

No single HOMER cache holds several documents, so a question over a selection is answered
the way the ``passages`` strategy answers one document (:mod:`app.focus`): the best passages
of each selected document (:func:`storage.passages.search`, the same call a one-document
question makes), merged across documents by **reciprocal rank fusion** (:func:`fuse`) so
the scores of different documents never have to be comparable, the best ``k`` overall
(``HOMER_FOCUS_PASSAGES``, 3) read in a fresh window (:class:`homer.answering.focus.PassageConversation`),
and each source named by the user's own name for its document and its page::

    - harbour.pdf, p. 12: “… the harbour master counted 42 boats …”

* a selection is a list of references (id, id prefix, file name or title) or
  :data:`WHOLE_LIBRARY` (``"*"``, every ready document of the user's library). Every
  reference goes through :func:`app.library.check_access`, as a one-document question's does:
  another user's document gets the answer a missing one gets and never reaches retrieval or
  the sources. An empty selection, or a selected document without a cache of the model in
  use, gets a one-line reason;
* a selection that comes down to one document is that document's own chat
  (:meth:`app.chat.ChatService.ask`, every strategy available, its conversation);
* a question about a whole document ("what is this book about") over several is refused
  with the reason: its answer is one document's cache (its gist), and answering from each
  cache in turn would cost one full answer per document while the model serves one chat at a
  time. ``cache`` and ``cache+passages`` are refused for several documents for the same reason;
  ``auto`` and ``passages`` answer from the passages.

Conversations over a selection are kept in memory per session and selection (the earlier
turns go into the next question's window, oldest dropped first); they are not written to the
store, whose conversations belong to one document and one cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from homer.answering.pipeline import SEVERAL_WHOLE
from homer.answering.retrieval import fuse  # noqa: F401 — the fusion, where the tests and benchmarks find it
from homer.generation import GenerationSettings

from . import library
from .chat import ChatError, ChatSession, describe_turn, turn_line_notes

WHOLE_LIBRARY = "*"  # a selection item: every ready document of the user's library
WHOLE_LIBRARY_LABEL = "Whole library"
LIBRARY_KEY = "library:"  # the conversation key of the whole library
EMPTY_SELECTION = "pick one or more ready documents, or the whole library"
WHOLE_DOCUMENT = SEVERAL_WHOLE


def selection_key(document_ids: Iterable[str], whole_library: bool = False) -> str:
    """The conversation key of a selection: the whole library keeps one conversation as it
    grows; a set of documents has one whatever their order."""
    return LIBRARY_KEY if whole_library else "documents:" + ",".join(sorted(set(document_ids)))


def describe(stats: dict) -> str:
    """The turn line of an answer: over several documents, which and how many passages; else
    :func:`app.chat.describe_turn`'s."""
    if len(stats.get("documents") or []) < 2:
        return describe_turn(stats)
    documents = stats.get("documents", [])
    names = ", ".join(d["name"] for d in documents[:4])
    if len(documents) > 4:
        names += f" and {len(documents) - 4} more"
    line = (
        f"turn {stats.get('turn', 1)} · time to first token **{stats.get('time_to_first_token', 0):.2f} s** · "
        f"{stats.get('tokens_per_second', 0):.1f} tokens/s · {len(stats.get('passages', []))} passages from "
        f"{len(documents)} documents ({names}) read for this question, no cache · "
        f"{stats.get('appended_tokens', 0)} prompt tokens"
    )
    return line + turn_line_notes(stats)


class SeveralDocuments:
    """Chats over selections of documents on top of one :class:`app.chat.ChatService` (its
    store, model loader and one-document conversations); the UI holds one beside its chat
    service and calls :meth:`forget` when a document is deleted."""

    def __init__(self, service):
        self.service = service
        self._sessions: dict[tuple[str, str], tuple] = {}  # (session, selection key) -> (ChatSession, member ids)
        self._lock = threading.Lock()

    # --- the selection ---------------------------------------------------------------------
    def resolve(self, refs: Sequence[str] | str | None, owner: str | None) -> tuple[list[dict], bool]:
        """``(document rows as the user sees them, whole library)`` for a selection, in the
        order given, without repeats. Every reference is checked as a one-document
        reference is (another user's document: "no document 'x' in your library"). Over
        several documents a question is answered from their passages, so a document still
        being read (its text stored, no cache yet) is askable as soon as it is in the
        library; the whole library is every document the user sees (the passages need no cache)."""
        if isinstance(refs, str):
            refs = [refs]
        refs = [str(r).strip() for r in refs or [] if str(r or "").strip()]
        if not refs:
            raise ChatError(EMPTY_SELECTION)
        if WHOLE_LIBRARY in refs:
            for ref in refs:  # named references are checked even beside the whole library
                if ref != WHOLE_LIBRARY:
                    library.check_access(self.service.store, ref, owner)
            rows = library.visible_documents(self.service.store, owner)
            if not rows:
                raise ChatError("no document of your library is ready to ask yet: upload one")
            return rows, True
        rows, seen = [], set()
        for ref in refs:
            row = library.check_access(self.service.store, ref, owner)
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            rows.append(row)
        return rows, False

    # --- conversations ---------------------------------------------------------------------
    def _key(self, refs, owner, model_name, settings) -> tuple[str | None, str | None]:
        """``(selection key, None)`` for several documents, ``(None, document id)`` for one."""
        rows, whole = self.resolve(refs, owner)
        if len(rows) == 1:
            return None, rows[0]["id"]
        return selection_key([r["id"] for r in rows], whole), None

    def history(
        self,
        session_key: str,
        refs,
        owner: str | None = None,
        model_name: str | None = None,
        settings: dict | None = None,
    ) -> list[dict]:
        """The messages of this session's conversation about the selection (a one-document
        selection: that document's conversation); empty for an empty selection."""
        if not refs:
            return []
        key, single = self._key(refs, owner, model_name, settings)
        if single is not None:
            return self.service.history(session_key, single)
        with self._lock:
            held = self._sessions.get((session_key, key))
        return [dict(m) for m in held[0].messages] if held else []

    def clear(
        self,
        session_key: str,
        refs,
        owner: str | None = None,
        model_name: str | None = None,
        settings: dict | None = None,
    ) -> None:
        if not refs:
            return
        key, single = self._key(refs, owner, model_name, settings)
        if single is not None:
            self.service.clear(session_key, single)
            return
        with self._lock:
            self._sessions.pop((session_key, key), None)

    def forget(self, document_id: str) -> None:
        """Drop every conversation over a selection holding the document (it was deleted)."""
        with self._lock:
            for key in [k for k, (_, members) in self._sessions.items() if document_id in members]:
                self._sessions.pop(key)

    def _session(self, session_key: str, key: str, members: set[str]) -> ChatSession:
        with self._lock:
            held = self._sessions.get((session_key, key))
            if held is None:
                held = (ChatSession(key, ""), set())
            self._sessions[(session_key, key)] = (held[0], held[1] | members)  # the library's members grow
            return held[0]

    # --- asking ------------------------------------------------------------------------------
    def ask(
        self,
        session_key: str,
        refs,
        question: str,
        owner: str | None = None,
        model_name: str | None = None,
        generation: GenerationSettings | None = None,
        settings: dict | None = None,
        focus: str | None = None,
        deep_read: bool = False,
    ) -> Iterator[tuple[str, dict]]:
        """Stream ``(answer so far, turn stats)`` for ``question`` over the selection ``refs``.
        The last item's answer ends with the sources ("Sources:" then one line per passage,
        ``- <name>, p. 12: “quote”``; ``HOMER_CITATIONS=0`` leaves it out; the same sources as
        source_places for the reader, :mod:`app.reader`) and its stats hold
        documents (id and name each), passages (document, page, span, own rank, fused score),
        focus ("passages"), retrieval_seconds, time_to_first_token, tokens_per_second,
        new_tokens, appended_tokens (the prompt: passages, earlier turns, question), turn,
        forgotten_turns, seconds. One document: :meth:`ChatService.ask`'s items."""
        rows, whole = self.resolve(refs, owner)
        if len(rows) == 1:
            yield from self.service.ask(
                session_key, rows[0]["id"], question, model_name, generation, settings, deep_read, focus
            )
            return
        from homer.answering import AnswerError, DocumentChat

        from . import answering

        model, tokenizer, _ = self.service.model(model_name)
        try:
            pipeline = DocumentChat(
                model,
                tokenizer,
                [answering.stored_document(self.service.store, row) for row in rows],
                settings=answering.answer_settings(),
            )
        except AnswerError as exc:
            raise ChatError(str(exc)) from None
        chat = self._session(session_key, selection_key([r["id"] for r in rows], whole), {r["id"] for r in rows})
        extra = {"cache_reused": False, "cache_source": "none"}
        if deep_read:
            extra["deep_read_unavailable"] = "deep read unavailable: it re-reads one document"
        with chat.lock:
            pipeline.turns = chat.turns  # the selection's conversation
            answer = None
            try:
                for answer in pipeline.stream(question, focus=focus, generation=generation):
                    if not answer.done:
                        yield answer.text, answering.turn_stats(answer, **extra)
            except AnswerError as exc:
                raise ChatError(str(exc)) from None
            shown = answer.shown()
            chat.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": shown}]
        yield shown, answering.turn_stats(answer, **extra)


__all__ = ["WHOLE_LIBRARY", "SeveralDocuments", "describe", "fuse"]
