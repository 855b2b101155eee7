"""Focused answers in the chat: which passages a question gets and how its sources are shown.

The chat answers a question from the document's stored HOMER cache; with focus, the few
passages the question points to (the store's BM25 passage index, :mod:`storage.passages`)
are read again at full resolution after the cache, in the same turn as the question
(REFORM, arXiv 2506.01215: a compressed cache for the whole, the selected passages
recomputed in full for the specific). The strategy is a setting (:mod:`homer.focus`):

* ``HOMER_FOCUS`` — ``auto`` (default: the cache for a question about the whole document,
  "what is this book about", "how does it end", and :data:`AUTO_SPECIFIC` for any other),
  ``cache+passages``, ``passages`` or ``cache``; ``ask(..., focus=...)`` overrides it;
* ``HOMER_FOCUS_PASSAGES`` — passages per question (3);
* ``HOMER_FOCUS_WORDS`` — words of each passage the model reads, its best window for the
  question (80; 0 reads whole passages);
* ``HOMER_NOT_FOUND`` — ``1`` (default): a question the passages hold too little of
  (:mod:`homer.grounding`) is answered "I could not find this in the document." without
  running the model; ``0`` lets the model answer from whatever was retrieved;
* ``HOMER_PASSAGE_ORDER`` — the order the model reads the passages in: ``best-last``
  (default: the best passage next to the question) or ``best-first`` (the search's order);
* ``HOMER_SOURCE_ORDER`` — how a passages-only answer lists its sources: ``retrieval``
  (default: the search's order) or ``attention`` (the passage the answer attended to most
  first, :mod:`homer.passage_citations`: one more forward of prompt + answer after the answer
  has streamed, its seconds in ``citation_seconds``, the scores in ``source_scores``). On the
  book set (``python -m benchmarks.passage_sources``) the first source was the evidence
  passage for 39 of the 47 questions whose evidence was retrieved in retrieval order, 30 of 47
  by attention (attention follows the answer, and a wrong answer was read from a wrong
  passage), so retrieval order stays the default.

The default comes from the measured book set (``python -m benchmarks.focus``, README).

The index is built by the worker after ingest, and on first use for a document that has
none (a document imported from a bundle: bundles do not carry the index, it is rebuilt
from the document's text, in well under a second for a book). A focused answer lists the
passages it was given under it: page and a short quote.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field, replace

from homer import grounding
from homer.durable import env_flag
from homer.grounding import NOT_FOUND
from homer.locations import LocationMap
from homer.focus import (DEFAULT_PASSAGE_ORDER, DEFAULT_PASSAGES, FOCUS_CHOICES, PASSAGE_ORDERS, FocusStrategy,
                         PassageConversation, cache_room, excerpt, excerpt_span, fit_passages, route, strategy)
from storage import passages as index

log = logging.getLogger(__name__)
__all__ = ["NOT_FOUND", "PassageConversation", "focus_mode", "plan_turn", "index_document", "ranked_sources",
           "with_passage_sources"]

DEFAULT_FOCUS = "auto"
# Each passage is read as its best window of this many words (HOMER_FOCUS_WORDS); measured on
# the book set (README): 19/56 right against 20/56 for whole passages, with 23 % fewer tokens to
# prefill (the time to first token); the needles of the RULER dev slice are all kept.
DEFAULT_EXCERPT_WORDS = 80
# What "auto" uses for a specific question: on the book set (README, benchmarks/focus.py) the
# passages alone answered at least as many factual questions as the cache with the passages
# and reached the first token in about half the time; the cache alone answered almost none.
AUTO_SPECIFIC = "passages"
CHOICES = ("auto", *FOCUS_CHOICES)


def focus_mode(requested: str | None = None, question: str = "") -> FocusStrategy:
    """The strategy for ``question``: the one requested, else ``HOMER_FOCUS``, else the
    default ``auto`` — the cache for a question about the whole document
    (:func:`homer.focus.route`), :data:`AUTO_SPECIFIC` for any other."""
    name = (requested or os.environ.get("HOMER_FOCUS") or DEFAULT_FOCUS).strip().lower()
    if name == "auto":
        name = route(question, AUTO_SPECIFIC)
    elif name not in FOCUS_CHOICES:
        raise ValueError(f"focus must be one of {', '.join(CHOICES)}, not {name!r}")
    return strategy(name)


def requested_focus() -> str:
    """The focus setting's name (``HOMER_FOCUS``, else ``auto``), not yet routed."""
    return (os.environ.get("HOMER_FOCUS") or DEFAULT_FOCUS).strip().lower()


def passages_per_question() -> int:
    return max(1, int(os.environ.get("HOMER_FOCUS_PASSAGES", str(DEFAULT_PASSAGES))))


def excerpt_words() -> int:
    """Words of each passage the model reads (``HOMER_FOCUS_WORDS``; 0: the whole passage):
    the passage's best window for the question (:func:`homer.focus.excerpt`)."""
    return max(0, int(os.environ.get("HOMER_FOCUS_WORDS", str(DEFAULT_EXCERPT_WORDS))))


def fed_text(passage, question: str) -> str:
    """What the model reads of a retrieved passage for ``question``."""
    return excerpt(passage.text, question, excerpt_words())


def read_part(passage, question: str, locations: LocationMap):
    """The part of ``passage`` the model reads for ``question`` (:func:`fed_text`) as a
    passage of its own — its span, its text, and the page (or section) where that part holds
    the most of the question's content words (ties: the first; none: its middle) — so a
    source names, quotes and opens where the model read: a passage that begins at the foot
    of one page and answers on the next is cited on the next."""
    span = excerpt_span(passage.text, question, excerpt_words())
    if span is not None:
        a, b = span
        passage = replace(passage, start=passage.start + a, end=passage.start + b, text=passage.text[a:b])
    wanted = grounding.content_words(question)
    held: dict[int, set] = {}
    for word in re.finditer(r"\S+", passage.text):
        found = grounding.content_words(word.group()) & wanted
        if found:
            held.setdefault(locations.number(passage.start + word.start()), set()).update(found)
    if held:
        page = max(sorted(held), key=lambda number: len(held[number]))  # max keeps the first of ties
    else:
        page = locations.number((passage.start + max(passage.end - 1, passage.start)) // 2)
    return replace(passage, page=max(int(passage.page), page))


def covered(store, document_id: str, question: str, texts) -> float:
    """How much of ``question`` the best of ``texts`` (passages of ``document_id``) holds,
    by the document's own word frequencies (:func:`homer.grounding.coverage`)."""
    return grounding.coverage(question, list(texts), *frequencies(store, document_id))


def not_found_enabled() -> bool:
    return env_flag("HOMER_NOT_FOUND", True)


def index_document(store, document_id: str) -> bool:
    """Build the document's passage index when it has none; True when built now."""
    return index.ensure(store.db, document_id, lambda: store.document_text(document_id),
                        lambda: store.page_starts(document_id))


def index_after_ingest(store, document_id: str, progress=None) -> None:
    """The worker's step before a build: index the document's passages, shown as progress.
    Never fails the build: on an error the index is built at the first question instead."""
    if progress is not None and not index.is_indexed(store.db, document_id):
        progress("indexing the passages for focused answers")  # may stop a build whose job was lost
    try:
        index_document(store, document_id)
    except Exception as exc:  # noqa: BLE001 — a missing index costs a second at the first question
        log.warning("passage index of %s not built now (%s); it is built on first use", document_id[:12], exc)


@dataclass
class FocusedTurn:
    """What a question is asked with: the strategy, the passages it gets (best first), the
    user text of the turn after the cache, and what retrieval cost."""

    strategy: FocusStrategy
    question: str
    passages: list = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0
    index_built: bool = False
    coverage: float | None = None  # how much of the question the best passage holds (homer.grounding)
    texts: list = field(default_factory=list)  # what the model reads of each passage (fed_text)

    @property
    def not_found(self) -> bool:
        """Whether the turn is answered :data:`homer.grounding.NOT_FOUND` without the model:
        its strategy reads passages, and none holds enough of the question (none matched, for a
        question with a content word; "And then?" has none and goes on to the model).
        Off with ``HOMER_NOT_FOUND=0``."""
        if not self.strategy.uses_passages or not not_found_enabled():
            return False
        return self.coverage is not None and self.coverage < grounding.MIN_COVERAGE

    def stats(self) -> dict:
        out = {"focus": self.strategy.name}
        if self.strategy.uses_passages:
            out.update(retrieval_seconds=round(self.seconds, 4), index_built=self.index_built,
                       passages=[{"seq": p.seq, "page": p.page, "start": p.start, "end": p.end,
                                  "score": round(p.score, 3)} for p in self.passages],
                       coverage=None if self.coverage is None else round(self.coverage, 3), not_found=self.not_found)
        return out


def plan_turn(store, document_id: str, question: str, focus: FocusStrategy, tokenizer=None, model=None,
              cache=None, max_new_tokens: int = 256) -> FocusedTurn:
    """Retrieve the question's passages (when the strategy uses them) and lay out its turn.
    With the cache, only the passages that fit the window after it are kept."""
    turn = FocusedTurn(focus, question, text=question)
    if not focus.uses_passages:
        return turn
    started = time.perf_counter()
    turn.index_built = index_document(store, document_id)
    found = index.search(store.db, document_id, question, passages_per_question())
    texts = [fed_text(p, question) for p in found]
    if focus.uses_cache and found and cache is not None:
        texts = fit_passages(tokenizer, texts, cache_room(cache, model, max_new_tokens), question)
        found = found[: len(texts)]
    turn.passages, turn.texts = found, texts
    turn.text = focus.turn_text(question, texts, passage_order())
    turn.coverage = covered(store, document_id, question, [p.text for p in found])
    turn.seconds = time.perf_counter() - started
    return turn


_FREQUENCIES: dict = {}


def frequencies(store, document_id: str) -> tuple:
    """The document's passage frequencies for the not-found check, computed once per index
    (kept for the last few documents; a re-index has another passage count and is recounted)."""
    texts = [p.text for p in index.passages(store.db, document_id)]
    key = (str(store.root), document_id, len(texts), texts[-1][-64:] if texts else "")
    if key not in _FREQUENCIES:
        if len(_FREQUENCIES) >= 8:
            _FREQUENCIES.pop(next(iter(_FREQUENCIES)))
        _FREQUENCIES[key] = grounding.document_frequencies(texts)
    return _FREQUENCIES[key]


def sources_label(passages, locations: LocationMap, question: str = "") -> str:
    """The sources of a focused answer, one line each: where (a page of a document of several
    pages, or a section, :class:`homer.locations.LocationMap`) and a short quote, around the
    question's first word in it."""
    lines = []
    for p in passages:
        where = locations.where(p.page)
        lines.append(f"- {where + ': ' if where else ''}“{p.quote(query=question)}”")
    return "\n".join(lines)


DEFAULT_SOURCE_ORDER = "retrieval"  # measured on the book set: see the module docstring
SOURCE_ORDERS = ("retrieval", "attention")


def env_choice(variable: str, choices: tuple, default: str) -> str:
    """The value of setting ``variable`` among ``choices``; an unknown value is ``default``
    (with a warning in the log)."""
    name = (os.environ.get(variable) or default).strip().lower()
    if name not in choices:
        log.warning("%s must be one of %s, not %r: %s used", variable, ", ".join(choices), name, default)
        return default
    return name


def source_order() -> str:
    """How a focused answer's sources are listed (``HOMER_SOURCE_ORDER``): ``retrieval`` or
    ``attention``; an unknown value is the default."""
    return env_choice("HOMER_SOURCE_ORDER", SOURCE_ORDERS, DEFAULT_SOURCE_ORDER)


def passage_order() -> str:
    """The order the model reads a question's passages in (``HOMER_PASSAGE_ORDER``):
    ``best-last`` (default: the best passage next to the question) or ``best-first``
    (:func:`homer.focus.reading_order`); an unknown value is the default."""
    return env_choice("HOMER_PASSAGE_ORDER", PASSAGE_ORDERS, DEFAULT_PASSAGE_ORDER)


def ranked_sources(turn: FocusedTurn, answer: str, conversation=None, model=None, tokenizer=None) -> tuple[list, dict]:
    """``(passages in the order they are listed, stats)`` for a focused answer. In retrieval
    order unless ``HOMER_SOURCE_ORDER=attention`` and the answer was read from the passages
    alone by ``conversation`` (a :class:`homer.focus.PassageConversation`, after its answer):
    then best first by the peak attention of the answer's queries over each passage
    (:func:`homer.passage_citations.cite_passages`, one forward of prompt + answer), with
    ``source_scores`` (seq, page, score; None for a passage left out to fit the window) and
    ``citation_seconds``."""
    passages = list(turn.passages)
    if source_order() != "attention" or conversation is None or not passages or not answer.strip():
        return passages, {"source_order": "retrieval"}
    from homer.passage_citations import cite_passages, last_turn_prompt

    rebuilt = last_turn_prompt(conversation, turn.question, turn.texts)
    if rebuilt is None:  # not the turn that was asked: nothing to read the attention of
        return passages, {"source_order": "retrieval"}
    prompt_ids, read = rebuilt
    cited = cite_passages(model, tokenizer, prompt_ids, answer, read, order=conversation.order)
    order = cited.order() + list(range(len(read), len(passages)))  # passages not read come last
    scores = [cited.scores[i] if i < len(read) else None for i in order]
    return [passages[i] for i in order], {
        "source_order": "attention", "citation_seconds": round(cited.seconds, 4),
        "source_scores": [{"seq": passages[i].seq, "page": passages[i].page,
                           "score": None if score is None else round(score, 4)} for i, score in zip(order, scores)]}


def with_passage_sources(answer: str, passages, locations: LocationMap, question: str = "") -> str:
    """The answer as shown, with the passages it was given listed under it."""
    if not passages:
        return answer
    return f"{answer}\n\nSources:\n{sources_label(passages, locations, question)}"
