"""Focused answers in the chat: which passages a question gets and how its sources are shown.

The chat answers a question from the document's stored HOMER cache; with focus, the few
passages the question points to (the store's BM25 passage index, :mod:`storage.passages`)
are read again at full resolution after the cache, in the same turn as the question
(REFORM, arXiv 2506.01215: a compressed cache for the whole, the selected passages
recomputed in full for the specific). The strategy is a setting (:mod:`homer.answering.focus`;
the settings are the app's, :class:`app.settings.AnsweringSettings`):

* ``HOMER_FOCUS`` — ``auto`` (default: the cache for a question about the whole document,
  "what is this book about", "how does it end", and :data:`AUTO_SPECIFIC` for any other),
  ``cache+passages``, ``passages`` or ``cache``; ``ask(..., focus=...)`` overrides it;
* ``HOMER_FOCUS_PASSAGES`` — passages per question (3);
* ``HOMER_FOCUS_WORDS`` — words of each passage the model reads, its best window for the
  question (80; 0 reads whole passages);
* ``HOMER_NOT_FOUND`` — ``1`` (default): a question the passages hold too little of
  (:mod:`homer.answering.grounding`) is answered "I could not find this in the document." without
  running the model; ``0`` lets the model answer from whatever was retrieved;
* ``HOMER_PASSAGE_ORDER`` — the order the model reads the passages in: ``best-last``
  (default: the best passage next to the question) or ``best-first`` (the search's order);
* ``HOMER_SOURCE_ORDER`` — how a passages-only answer lists its sources: ``retrieval``
  (default: the search's order) or ``attention`` (the passage the answer attended to most
  first, :mod:`homer.answering.passage_citations`: one more forward of prompt + answer after the answer
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

from homer.answering import grounding
from homer.answering import retrieval as answering_retrieval
from homer.answering.focus import FOCUS_CHOICES, FocusStrategy, PassageConversation, excerpt, route, strategy
from homer.answering.grounding import NOT_FOUND
from homer.answering.pipeline import AUTO_SPECIFIC, source_line
from homer.reading.locations import LocationMap
from storage import passages as index

from .settings import load_settings

log = logging.getLogger(__name__)
__all__ = [
    "AUTO_SPECIFIC",
    "NOT_FOUND",
    "PassageConversation",
    "focus_mode",
    "index_document",
    "read_part",
    "sources_label",
]

DEFAULT_FOCUS = "auto"
# Each passage is read as its best window of this many words (HOMER_FOCUS_WORDS); measured on
# the book set (README): 19/56 right against 20/56 for whole passages, with 23 % fewer tokens to
# prefill (the time to first token); the needles of the RULER dev slice are all kept.
DEFAULT_EXCERPT_WORDS = 80
CHOICES = ("auto", *FOCUS_CHOICES)


def answering():
    """The process's answering settings (:class:`app.settings.AnsweringSettings`)."""
    return load_settings().answering


def focus_mode(requested: str | None = None, question: str = "") -> FocusStrategy:
    """The strategy for ``question``: the one requested, else ``HOMER_FOCUS``, else the
    default ``auto`` — the cache for a question about the whole document
    (:func:`homer.answering.focus.route`), :data:`AUTO_SPECIFIC` for any other."""
    name = (requested or answering().focus).strip().lower()
    if name == "auto":
        name = route(question, AUTO_SPECIFIC)
    elif name not in FOCUS_CHOICES:
        raise ValueError(f"focus must be one of {', '.join(CHOICES)}, not {name!r}")
    return strategy(name)


def requested_focus() -> str:
    """The focus setting's name (``HOMER_FOCUS``, else ``auto``), not yet routed."""
    return answering().focus


def passages_per_question() -> int:
    """Passages per question (``HOMER_FOCUS_PASSAGES``, 3; at least one)."""
    return max(1, answering().focus_passages)


def excerpt_words() -> int:
    """Words of each passage the model reads (``HOMER_FOCUS_WORDS``; 0: the whole passage):
    the passage's best window for the question (:func:`homer.answering.focus.excerpt`)."""
    return max(0, answering().focus_words)


def fed_text(passage, question: str) -> str:
    """What the model reads of a retrieved passage for ``question``."""
    return excerpt(passage.text, question, excerpt_words())


def read_part(passage, question: str, locations: LocationMap):
    """The part of ``passage`` the model reads for ``question``, with the page where it holds
    the most of the question (:func:`homer.answering.retrieval.read_part`)."""
    return answering_retrieval.read_part(passage, question, locations, excerpt_words())


def covered(store, document_id: str, question: str, texts) -> float:
    """How much of ``question`` the best of ``texts`` (passages of ``document_id``) holds,
    by the document's own word frequencies (:func:`homer.answering.grounding.coverage`)."""
    return grounding.coverage(question, list(texts), *frequencies(store, document_id))


def citations_enabled() -> bool:
    """``HOMER_CITATIONS`` (default on): sources under answers."""
    return answering().citations


def not_found_enabled() -> bool:
    """``HOMER_NOT_FOUND`` (default on): a question the passages hold too little of is
    answered "I could not find this in the document." without running the model."""
    return answering().not_found


def retriever() -> str | None:
    """How passages are searched (``HOMER_RETRIEVER``: bm25, dense or rrf; None: the store's
    default, :data:`storage.passages.DEFAULT_METHOD`)."""
    return load_settings().storage.retriever


def index_document(store, document_id: str) -> bool:
    """Build the document's passage index when it has none (and its vectors when the
    retriever uses them); True when built now."""
    return index.ensure(
        store.db,
        document_id,
        lambda: store.document_text(document_id),
        lambda: store.page_starts(document_id),
        method=retriever(),
    )


def index_after_ingest(store, document_id: str, progress=None) -> None:
    """The worker's step before a build: index the document's passages, shown as progress.
    Never fails the build: on an error the index is built at the first question instead."""
    if progress is not None and not index.is_indexed(store.db, document_id):
        progress("indexing the passages for focused answers")  # may stop a build whose job was lost
    try:
        index_document(store, document_id)
    except Exception as exc:  # noqa: BLE001 — a missing index costs a second at the first question
        log.warning("passage index of %s not built now (%s); it is built on first use", document_id[:12], exc)


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
    pages, or a section, :class:`homer.reading.locations.LocationMap`) and a short quote, around the
    question's first word in it."""
    return "\n".join(source_line(locations.where(p.page), p.quote(query=question)) for p in passages)


DEFAULT_SOURCE_ORDER = "retrieval"  # measured on the book set: see the module docstring
SOURCE_ORDERS = ("retrieval", "attention")


def source_order() -> str:
    """How a focused answer's sources are listed (``HOMER_SOURCE_ORDER``): ``retrieval`` or
    ``attention``; an unknown value is the default (:class:`app.settings.AnsweringSettings`)."""
    return answering().source_order


def passage_order() -> str:
    """The order the model reads a question's passages in (``HOMER_PASSAGE_ORDER``):
    ``best-last`` (default: the best passage next to the question) or ``best-first``
    (:func:`homer.answering.focus.reading_order`); an unknown value is the default."""
    return answering().passage_order
