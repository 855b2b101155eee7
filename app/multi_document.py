"""Questions over several documents at once: the passages of every selected document, fused.

No single HOMER cache holds several documents, so a question over a selection is answered
the way the ``passages`` strategy answers one document (:mod:`app.focus`): the best passages
of each selected document (:func:`storage.passages.search`, the same call a one-document
question makes), merged across documents by **reciprocal rank fusion** (:func:`fuse`) so
the scores of different documents never have to be comparable, the best ``k`` overall
(``HOMER_FOCUS_PASSAGES``, 3) read in a fresh window (:class:`homer.focus.PassageConversation`),
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

import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from homer import grounding
from homer.focus import PassageConversation, whole_document
from homer.generation import ConversationFullError, GenerationSettings
from homer.locations import LocationMap
from storage import passages as index

from . import focus as focusing
from . import library, reader
from .chat import ChatError, ChatSession, citations_enabled, describe_turn, turn_line_notes

WHOLE_LIBRARY = "*"  # a selection item: every ready document of the user's library
WHOLE_LIBRARY_LABEL = "Whole library"
RRF_CONSTANT = 60  # reciprocal rank fusion's k (Cormack et al., 2009)
LIBRARY_KEY = "library:"  # the conversation key of the whole library
EMPTY_SELECTION = "pick one or more ready documents, or the whole library"
WHOLE_DOCUMENT = ("a question about a whole document needs that one document (its cache holds the gist): "
                  "pick one, or ask something specific across several")


@dataclass(frozen=True)
class SourcedPassage:
    """A retrieved passage with its document: the user's name for it, its page count, the
    passage's rank in its own document (1 = best) and its fused score (higher is better)."""

    document_id: str
    name: str
    locations: LocationMap
    passage: index.Passage
    rank: int
    fused: float
    quote_words: str = ""  # the question's words the quote is taken around (its rarest among the candidates)

    def label(self, question: str = "") -> str:
        """``<name>, p. 12: “quote”`` (or its section; no page for a one-page document), of the
        part the model read (:func:`app.focus.read_part`)."""
        read = self.read(question)
        return f"{self.name}{self._where(read)}: “{read.quote(query=self.quote_words or question)}”"

    def read(self, question: str = "") -> index.Passage:
        """The part of the passage the model reads for ``question``, with its page."""
        return focusing.read_part(self.passage, question, self.locations)

    def text(self, question: str = "") -> str:
        """The passage as the model reads it: which document (and page) it comes from, then its
        text (its best window for ``question``, :func:`app.focus.fed_text`)."""
        return f"From {self.name}{self.where(question)}: {focusing.fed_text(self.passage, question)}"

    def where(self, question: str = "") -> str:
        """", p. 12" (or its section) of the part read for ``question``; "" for a one-page document."""
        return self._where(self.read(question))

    def _where(self, read: index.Passage) -> str:
        where = self.locations.where(read.page)
        return f", {where}" if where else ""

    def place(self, question: str = "") -> dict:
        """The passage as a place the reader opens (:func:`app.reader.place`), with the quote
        its sources line shows."""
        p = self.read(question)
        return reader.place(self.document_id, p.page, self.locations, p.start, p.end,
                            p.quote(query=self.quote_words or question), document=self.name)

    def to_dict(self) -> dict:
        p = self.passage
        return {"document_id": self.document_id, "document": self.name, "seq": p.seq, "page": p.page,
                "start": p.start, "end": p.end, "score": round(p.score, 3), "rank": self.rank,
                "fused": round(self.fused, 6)}


def holds(text: str, term: str) -> bool:
    """Whether the passage holds ``term`` (a word starting with it: the index matched stems)."""
    return re.search(r"(?<!\w)" + re.escape(term), text, re.IGNORECASE) is not None


def coverage(text: str, terms: Sequence[str]) -> int:
    """How many of the question's ``terms`` the passage holds."""
    return sum(1 for term in terms if holds(text, term))


def search_terms(question: str) -> list[str]:
    return [t for t in index.query_terms(question) if t not in index.STOP_WORDS] or index.query_terms(question)


def quote_words(text: str, terms: Sequence[str], counts: Mapping[str, int]) -> str:
    """The question's words a passage's quote is taken around: of those it holds, the ones
    the fewest candidates hold (the words that picked this passage, not the ones every
    passage shares)."""
    held = [t for t in terms if holds(text, t)]
    if not held:
        return ""
    fewest = min(counts[t] for t in held)
    return " ".join(t for t in held if counts[t] == fewest)


def fuse(ranked: Mapping[str, Sequence[index.Passage]], question: str, k: int,
         constant: int = RRF_CONSTANT) -> list[tuple[str, index.Passage, int, float]]:
    """The ``k`` best ``(document id, passage, rank in its document, fused score)`` of
    per-document rankings (each best first), by reciprocal rank fusion of two rankings that
    never compare one retriever's scores across documents: each document's own order, and
    one order of all the candidates by how many of the question's words they hold (equal
    counts share a rank). Score ``1 / (constant + own rank) + 1 / (constant + word rank)``;
    ties go to the better own rank, then to the document selected first."""
    terms = search_terms(question)
    candidates = [(doc, p, rank, order) for order, (doc, found) in enumerate(ranked.items())
                  for rank, p in enumerate(found, start=1)]
    held = [coverage(p.text, terms) for _, p, _, _ in candidates]
    by_words = {count: 1 + sum(1 for other in held if other > count) for count in set(held)}  # competition ranks
    scored = [(doc, p, rank, 1 / (constant + rank) + 1 / (constant + by_words[count]), order)
              for (doc, p, rank, order), count in zip(candidates, held)]
    scored.sort(key=lambda s: (-s[3], s[2], s[4], s[1].seq))
    return [(doc, p, rank, score) for doc, p, rank, score, _ in scored[:max(k, 0)]]


def document_name(row: dict) -> str:
    """The user's own name for a document (their file name, else its title, else its id)."""
    return row.get("file_name") or row.get("title") or row["id"][:12]


def retrieve(store, documents: Sequence[dict], question: str, k: int) -> list[SourcedPassage]:
    """The ``k`` best passages for ``question`` across ``documents`` (rows as the user sees
    them): each document's ``k`` best from its index (built now when missing), then fused."""
    for row in documents:  # every index first: the ranking's term statistics are the whole index's
        focusing.index_document(store, row["id"])
    ranked = {row["id"]: index.search(store.db, row["id"], question, k) for row in documents}
    rows = {row["id"]: row for row in documents}
    terms = search_terms(question)
    counts = {t: sum(holds(p.text, t) for found in ranked.values() for p in found) for t in terms}
    out = []
    for doc, passage, rank, score in fuse(ranked, question, k):
        out.append(SourcedPassage(doc, document_name(rows[doc]), store.location_map(doc), passage, rank, score,
                                  quote_words(passage.text, terms, counts)))
    return out


def sources_label(found: Sequence[SourcedPassage], question: str = "") -> str:
    return "\n".join(f"- {s.label(question)}" for s in found)


def with_sources(answer: str, found: Sequence[SourcedPassage], question: str = "") -> str:
    return f"{answer}\n\nSources:\n{sources_label(found, question)}" if found else answer


def selection_key(document_ids: Iterable[str], whole_library: bool = False) -> str:
    """The conversation key of a selection: the whole library keeps one conversation as it
    grows; a set of documents has one whatever their order."""
    return LIBRARY_KEY if whole_library else "documents:" + ",".join(sorted(set(document_ids)))


def describe(stats: dict) -> str:
    """The turn line of an answer: over several documents, which and how many passages; else
    :func:`app.chat.describe_turn`'s."""
    if not stats.get("documents"):
        return describe_turn(stats)
    documents = stats.get("documents", [])
    names = ", ".join(d["name"] for d in documents[:4])
    if len(documents) > 4:
        names += f" and {len(documents) - 4} more"
    line = (f"turn {stats.get('turn', 1)} · time to first token **{stats.get('time_to_first_token', 0):.2f} s** · "
            f"{stats.get('tokens_per_second', 0):.1f} tokens/s · {len(stats.get('passages', []))} passages from "
            f"{len(documents)} documents ({names}) read for this question, no cache · "
            f"{stats.get('appended_tokens', 0)} prompt tokens")
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
    def resolve(self, refs: Sequence[str] | str | None, owner: str | None, model_name: str | None = None,
                settings: dict | None = None, ready: bool = True) -> tuple[list[dict], bool]:
        """``(document rows as the user sees them, whole library)`` for a selection, in the
        order given, without repeats. Every reference is checked as a one-document
        reference is (another user's document: "no document 'x' in your library"); with
        ``ready`` each must have a cache of the model in use. The whole library is the
        user's ready documents."""
        if isinstance(refs, str):
            refs = [refs]
        refs = [str(r).strip() for r in refs or [] if str(r or "").strip()]
        if not refs:
            raise ChatError(EMPTY_SELECTION)
        is_ready = lambda row: self.service.ready_cache(row["id"], model_name, settings) is not None  # noqa: E731
        if WHOLE_LIBRARY in refs:
            for ref in refs:  # named references are checked even beside the whole library
                if ref != WHOLE_LIBRARY:
                    library.check_access(self.service.store, ref, owner)
            rows = [row for row in library.visible_documents(self.service.store, owner) if is_ready(row)]
            if not rows:
                raise ChatError("no document of your library is ready for the model in use yet")
            return rows, True
        rows, seen = [], set()
        for ref in refs:
            row = library.check_access(self.service.store, ref, owner)
            if row["id"] in seen:
                continue
            if ready and not is_ready(row):
                raise ChatError(f"{document_name(row)} is not ready: it has no cache for the model in use yet "
                                "(read it in the Library tab first)")
            seen.add(row["id"])
            rows.append(row)
        return rows, False

    # --- conversations ---------------------------------------------------------------------
    def _key(self, refs, owner, model_name, settings) -> tuple[str | None, str | None]:
        """``(selection key, None)`` for several documents, ``(None, document id)`` for one."""
        rows, whole = self.resolve(refs, owner, model_name, settings, ready=False)
        if len(rows) == 1:
            return None, rows[0]["id"]
        return selection_key([r["id"] for r in rows], whole), None

    def history(self, session_key: str, refs, owner: str | None = None, model_name: str | None = None,
                settings: dict | None = None) -> list[dict]:
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

    def clear(self, session_key: str, refs, owner: str | None = None, model_name: str | None = None,
              settings: dict | None = None) -> None:
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
    def ask(self, session_key: str, refs, question: str, owner: str | None = None, model_name: str | None = None,
            generation: GenerationSettings | None = None, settings: dict | None = None, focus: str | None = None,
            deep_read: bool = False) -> Iterator[tuple[str, dict]]:
        """Stream ``(answer so far, turn stats)`` for ``question`` over the selection ``refs``.
        The last item's answer ends with the sources ("Sources:" then one line per passage,
        ``- <name>, p. 12: “quote”``; ``HOMER_CITATIONS=0`` leaves it out; the same sources as
        source_places for the reader, :mod:`app.reader`) and its stats hold
        documents (id and name each), passages (document, page, span, own rank, fused score),
        focus ("passages"), retrieval_seconds, time_to_first_token, tokens_per_second,
        new_tokens, appended_tokens (the prompt: passages, earlier turns, question), turn,
        forgotten_turns, seconds. One document: :meth:`ChatService.ask`'s items."""
        rows, whole = self.resolve(refs, owner, model_name, settings)
        if len(rows) == 1:
            yield from self.service.ask(session_key, rows[0]["id"], question, model_name, generation, settings,
                                        deep_read, focus)
            return
        question = (question or "").strip()
        if not question:
            raise ChatError("type a question")
        requested = (focus or os.environ.get("HOMER_FOCUS") or focusing.DEFAULT_FOCUS).strip().lower()
        try:
            chosen = focusing.focus_mode(requested, question)
        except ValueError as exc:
            raise ChatError(str(exc)) from None
        if whole_document(question) and chosen.uses_cache:
            raise ChatError(WHOLE_DOCUMENT)
        if chosen.uses_cache and requested != "auto":
            raise ChatError(f"focus “{chosen.name}” reads one document's cache: pick one document, "
                            "or use auto or passages across several")
        started = time.perf_counter()
        model, tokenizer, _ = self.service.model(model_name)
        generation = generation or GenerationSettings()
        found = retrieve(self.service.store, rows, question, focusing.passages_per_question())
        retrieval_seconds = time.perf_counter() - started
        chat = self._session(session_key, selection_key([r["id"] for r in rows], whole), {r["id"] for r in rows})
        with chat.lock:
            conversation = PassageConversation(model, tokenizer, order=focusing.passage_order())
            conversation.turns = list(chat.turns)
            found = self._fit(conversation, question, found, generation.max_new_tokens)
            stats = {
                "focus": "passages", "turn": len(chat.turns) + 1, "cache_reused": False, "cache_source": "none",
                "documents": [{"id": r["id"], "name": document_name(r)} for r in rows],
                "passages": [s.to_dict() for s in found], "retrieval_seconds": round(retrieval_seconds, 4),
            }
            if deep_read:
                stats["deep_read_unavailable"] = "deep read unavailable: it re-reads one document"
            if focusing.not_found_enabled():  # homer.grounding: each passage against its own document's words
                cover = max((focusing.covered(self.service.store, s.document_id, question, [s.passage.text])
                             for s in found), default=0.0)
                stats.update(coverage=round(cover, 3), not_found=cover < grounding.MIN_COVERAGE)
                if stats["not_found"]:
                    stats.update(time_to_first_token=round(time.perf_counter() - started, 4), new_tokens=0,
                                 seconds=round(time.perf_counter() - started, 4))
                    chat.turns.append((question, focusing.NOT_FOUND))
                    chat.messages += [{"role": "user", "content": question},
                                      {"role": "assistant", "content": focusing.NOT_FOUND}]
                    yield focusing.NOT_FOUND, stats
                    return
            answer, first = "", None
            try:
                for piece in conversation.ask(question, [s.text(question) for s in found], settings=generation):
                    if first is None:
                        first = time.perf_counter() - started
                        stats["time_to_first_token"] = round(first, 4)
                    answer += piece
                    yield answer, dict(stats)
            except ConversationFullError as error:
                raise ChatError(str(error)) from None
            engine = conversation.stats
            stats.update(
                time_to_first_token=round(first if first is not None else time.perf_counter() - started, 4),
                engine_time_to_first_token=round(float(engine.get("time_to_first_token", 0.0)), 4),
                tokens_per_second=round(float(engine.get("tokens_per_second", 0.0)), 2),
                new_tokens=int(engine.get("new_tokens", 0)), appended_tokens=int(engine.get("prompt_tokens", 0)),
                forgotten_turns=conversation.dropped_turns, seconds=round(time.perf_counter() - started, 4),
            )
            shown = answer
            if found and citations_enabled():
                shown = with_sources(answer, found, question)
                stats["sources"] = sources_label(found, question)
                stats["source_places"] = [s.place(question) for s in found]
            chat.turns.append((question, answer))
            chat.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": shown}]
        yield shown, stats

    @staticmethod
    def _fit(conversation: PassageConversation, question: str, found: list[SourcedPassage],
             max_new_tokens: int) -> list[SourcedPassage]:
        """The leading passages that fit the window with the question and the answer (earlier
        turns are dropped before passages, as the conversation does), so the sources listed
        are the passages the model read."""
        kept = list(found)
        while len(kept) > 1 and (len(conversation.prompt_ids(question, [s.text(question) for s in kept]))
                                 + max_new_tokens > conversation.window):
            kept.pop()
        return kept


__all__ = ["WHOLE_LIBRARY", "SeveralDocuments", "SourcedPassage", "describe", "fuse", "retrieve"]
