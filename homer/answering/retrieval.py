"""Which passages a question gets: one document's best, or several documents' fused.

A passage is read as its best window for the question (:func:`homer.answering.focus.excerpt`, REFORM's
"recompute the selected passages at full resolution", arXiv 2506.01215), and it is cited
where that window lies: the page (or section) holding the most of the question's words.

Several documents are never compared by score: each document's own ranking and one ranking
of all candidates by how many of the question's words they hold are merged by **reciprocal
rank fusion** (Cormack, Clarke & Buettcher, SIGIR 2009).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..reading.locations import LocationMap
from . import grounding
from .focus import excerpt, excerpt_span
from .passages import STOP_WORDS, Passage, PassageIndex, query_terms

RRF_CONSTANT = 60  # reciprocal rank fusion's k (Cormack et al., 2009)


@dataclass
class DocumentText:
    """One document as the answer pipeline reads it: an id, the name it is shown under, its
    places (pages or sections, :class:`homer.reading.locations.LocationMap`), its length in
    characters and its passage index (anything with ``search(question, k)``,
    ``passages`` and ``frequencies()``, e.g. :class:`~homer.answering.passages.PassageIndex`)."""

    id: str
    name: str
    locations: LocationMap
    index: PassageIndex
    chars: int = 0

    @classmethod
    def of_text(
        cls,
        text: str,
        name: str = "document",
        page_starts: list[int] | None = None,
        labels: list[str] | None = None,
        id: str | None = None,
    ) -> "DocumentText":
        """A document known by its text (an in-memory passage index, the app's ranking)."""
        import hashlib

        return cls(
            id or hashlib.sha256(text.encode("utf-8")).hexdigest(),
            name,
            LocationMap.of(page_starts, labels),
            PassageIndex.of_text(text, page_starts),
            len(text),
        )


def read_part(passage: Passage, question: str, locations: LocationMap, words: int) -> Passage:
    """The part of ``passage`` the model reads for ``question`` (its best window of ``words``
    words) as a passage of its own — its span, its text, and the page (or section) where that
    part holds the most of the question's content words (ties: the first; none: its middle) —
    so a source names, quotes and opens where the model read."""
    span = excerpt_span(passage.text, question, words)
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


@dataclass(frozen=True)
class FoundPassage:
    """A retrieved passage with its document, its rank in that document (1 = best), its fused
    score (higher is better; 0 for one document) and the question's words its quote is taken
    around."""

    document: DocumentText
    passage: Passage
    rank: int = 1
    fused: float = 0.0
    quote_words: str = ""

    def read(self, question: str, words: int) -> Passage:
        return read_part(self.passage, question, self.document.locations, words)

    def text(self, question: str, words: int, named: bool = False) -> str:
        """What the model reads: the passage's best window; ``named`` (over several
        documents), which document (and page) it comes from first."""
        fed = excerpt(self.passage.text, question, words)
        if not named:
            return fed
        where = self.document.locations.where(self.read(question, words).page)
        return f"From {self.document.name}{', ' + where if where else ''}: {fed}"


def holds(text: str, term: str) -> bool:
    """Whether the passage holds ``term`` (a word starting with it: the index matched stems)."""
    return re.search(r"(?<!\w)" + re.escape(term), text, re.IGNORECASE) is not None


def search_terms(question: str) -> list[str]:
    return [t for t in query_terms(question) if t not in STOP_WORDS] or query_terms(question)


def quote_words(text: str, terms: Sequence[str], counts: Mapping[str, int]) -> str:
    """The question's words a passage's quote is taken around: of those it holds, the ones
    the fewest candidates hold (the words that picked this passage)."""
    held = [t for t in terms if holds(text, t)]
    if not held:
        return ""
    fewest = min(counts[t] for t in held)
    return " ".join(t for t in held if counts[t] == fewest)


def fuse(
    ranked: Mapping[str, Sequence[Passage]], question: str, k: int, constant: int = RRF_CONSTANT
) -> list[tuple[str, Passage, int, float]]:
    """The ``k`` best ``(document id, passage, rank in its document, fused score)`` of
    per-document rankings (each best first): each document's own order fused with one order
    of all candidates by how many of the question's words they hold (equal counts share a
    rank). Score ``1 / (constant + own rank) + 1 / (constant + word rank)``; ties go to the
    better own rank, then to the document given first."""
    terms = search_terms(question)
    candidates = [
        (doc, p, rank, order)
        for order, (doc, found) in enumerate(ranked.items())
        for rank, p in enumerate(found, start=1)
    ]
    held = [sum(1 for t in terms if holds(p.text, t)) for _, p, _, _ in candidates]
    by_words = {count: 1 + sum(1 for other in held if other > count) for count in set(held)}  # competition ranks
    scored = [
        (doc, p, rank, 1 / (constant + rank) + 1 / (constant + by_words[count]), order)
        for (doc, p, rank, order), count in zip(candidates, held)
    ]
    scored.sort(key=lambda s: (-s[3], s[2], s[4], s[1].seq))
    return [(doc, p, rank, score) for doc, p, rank, score, _ in scored[: max(k, 0)]]


def retrieve(documents: Sequence[DocumentText], question: str, k: int) -> list[FoundPassage]:
    """The ``k`` best passages for ``question``: one document's own best, or across several
    documents each one's ``k`` best, fused (:func:`fuse`)."""
    if len(documents) == 1:
        doc = documents[0]
        return [FoundPassage(doc, p, rank) for rank, p in enumerate(doc.index.search(question, k), start=1)]
    ranked = {doc.id: doc.index.search(question, k) for doc in documents}
    by_id = {doc.id: doc for doc in documents}
    terms = search_terms(question)
    counts = {t: sum(holds(p.text, t) for found in ranked.values() for p in found) for t in terms}
    return [
        FoundPassage(by_id[doc], passage, rank, score, quote_words(passage.text, terms, counts))
        for doc, passage, rank, score in fuse(ranked, question, k)
    ]


def coverage(question: str, found: Sequence[FoundPassage]) -> float:
    """How much of ``question`` the best passage holds, each weighed by its own document's
    word frequencies (:func:`homer.answering.grounding.coverage`)."""
    if not found:
        return grounding.coverage(question, [], {}, 0)
    return max(grounding.coverage(question, [f.passage.text], *f.document.index.frequencies()) for f in found)
