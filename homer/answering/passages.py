"""Passages of a document and a lexical index over them: SQLite FTS5, ranked by BM25.

Why: a HOMER cache keeps ~M of a book's tokens, chosen without the question, so a specific
fact is often not among them. REFORM (arXiv 2506.01215) answers that by gathering, at
question time, the few passages the question points to and recomputing them at full
resolution after the compressed cache; this module is the gathering half, lexical first.

* :func:`split_passages` cuts a text into passages of about ``words`` words on natural
  boundaries (blank lines, then lines, then sentences, then words), keeping each one's
  character span and 1-based page (from the document's ``page_starts``);
* :class:`PassageIndex` holds one document's passages in SQLite FTS5 (the standard
  library's ``sqlite3``, in memory) and ranks them by FTS5's own ``bm25()`` for a free-text
  question (:func:`match_expression`: words only, stop-words dropped, each term quoted, so
  no question is FTS5 syntax). Its term statistics are the document's own: the same
  question gets the same passages in a notebook and in the app, whatever else the app's
  store holds (the store keeps the passages in its index database and ranks them with this
  class, :mod:`storage.passages`).
"""

from __future__ import annotations

import bisect
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

PASSAGE_WORDS = 120
INDEX_VERSION = 2  # bump when the splitting changes: older indexes are rebuilt on first use
# (2: a long line after the text's start is cut at its own sentence ends, not past them)
TOKENIZE = "porter unicode61"
_MAX_TERMS = 32  # a pasted paragraph as a question still makes a bounded query

STOP_WORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves shall thee thou thy thine unto ye hath doth
tell please give name named called say said book document text
""".split()
)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # as FTS5's unicode61 tokenizer cuts words
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True)
class Passage:
    """One passage: its order in the document, character span ``[start, end)`` in the
    document's text, 1-based first page, text, and the score of the search that found it,
    lower is better for every method: BM25 as SQLite reports it, minus the cosine for
    ``dense``, minus the fused reciprocal-rank score for ``rrf``; 0.0 outside a search."""

    seq: int
    start: int
    end: int
    page: int
    text: str
    score: float = 0.0

    def quote(self, limit: int = 160, query: str = "") -> str:
        """A short one-line quote of the passage for a sources list: from a few words before
        the first word of ``query`` it holds (a word starting with it: BM25 matched stems),
        else from its start."""
        flat = " ".join(self.text.split())
        if len(flat) <= limit:
            return flat
        start = 0
        terms = [t for t in query_terms(query) if t not in STOP_WORDS]
        if terms:
            hit = re.search(r"(?<!\w)(?:" + "|".join(map(re.escape, terms)) + ")", flat, re.IGNORECASE)
            if hit and hit.start() > limit // 3:
                start = flat.rfind(" ", 0, max(hit.start() - limit // 4, 0)) + 1
        piece = flat[start:]
        if len(piece) > limit:
            piece = piece[: limit - 1].rsplit(" ", 1)[0] + "…"
        return ("…" if start else "") + piece

    def to_dict(self) -> dict:
        return asdict(self)


def _pieces(text: str, start: int, end: int, words: int):
    """Spans inside ``[start, end)`` at sentence ends, then every ``words`` words, for a line
    too long to be a passage on its own."""
    cuts = [start] + [m.end() for m in _SENTENCE_END.finditer(text, start, end)] + [end]  # absolute offsets
    for a, b in zip(cuts, cuts[1:]):
        found = [m.start() for m in re.finditer(r"\S+", text[a:b])]
        if len(found) <= 2 * words:
            yield a, b
            continue
        for i in range(0, len(found), words):
            yield a + found[i], (a + found[i + words] if i + words < len(found) else b)


def split_passages(text: str, page_starts: list[int] | None = None, words: int = PASSAGE_WORDS) -> list[Passage]:
    """Passages of about ``words`` words, cut on natural boundaries: whole lines are gathered
    until a passage reaches ``words`` words, and a blank line closes a passage that already
    holds half of that; a line of more than twice ``words`` words is cut at its sentence ends
    (and a sentence that long every ``words`` words). Spans cover the text's words in order,
    without overlap; linear in the text."""
    if words < 1:
        raise ValueError("a passage needs at least one word")
    starts = list(page_starts or [0])
    units = []  # (start, end, words, blank line before)
    position, blank = 0, False
    for line in text.splitlines(keepends=True):
        a, b = position, position + len(line)
        position = b
        count = len(line.split())
        if not count:
            blank = True
            continue
        if count > 2 * words:
            for i, (s, e) in enumerate(_pieces(text, a, b, words)):
                units.append((s, e, len(text[s:e].split()), blank and i == 0))
        else:
            units.append((a, b, count, blank))
        blank = False
    passages, current, held = [], None, 0
    for s, e, count, after_blank in units:
        if current is not None and (held >= words or (after_blank and held >= words // 2) or held + count > 2 * words):
            passages.append(current)
            current, held = None, 0
        current = (current[0], e) if current else (s, e)
        held += count
    if current is not None:
        passages.append(current)
    out = []
    for seq, (s, e) in enumerate(passages):
        body = text[s:e]
        lead = len(body) - len(body.lstrip())
        body = body.strip()
        page = bisect.bisect_right(starts, s + lead)  # 1-based
        out.append(Passage(seq, s + lead, s + lead + len(body), max(page, 1), body))
    return out


def query_terms(query: str) -> list[str]:
    """The words of ``query`` worth searching for: lower-cased, stop-words and one-letter
    words dropped (all of them kept when nothing else is left), duplicates removed."""
    words = [w.lower() for w in _WORD.findall(query or "")]
    kept = [w for w in words if w not in STOP_WORDS and (len(w) > 1 or w.isdigit())] or words
    seen: dict[str, None] = {}
    for w in kept:
        seen.setdefault(w, None)
    return list(seen)[:_MAX_TERMS]


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression for a free-text query: every term double-quoted (so it is a
    string, never an operator or a column filter) and joined with OR; None when the query
    holds no word."""
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class PassageIndex:
    """One document's passages in an in-memory SQLite FTS5 table, ranked by BM25.

    ``PassageIndex.of_text(text, page_starts)`` splits and indexes a text (about 0.1 s for a
    book); ``PassageIndex(passages)`` indexes passages split before (the store's). Searching
    is thread-safe; the index is read-only once built."""

    def __init__(self, passages: Sequence[Passage]):
        self._passages = list(passages)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"CREATE VIRTUAL TABLE fts USING FTS5 (text, tokenize='{TOKENIZE}')")
        self._db.executemany(
            "INSERT INTO fts (rowid, text) VALUES (?, ?)", [(i, p.text) for i, p in enumerate(self._passages)]
        )
        self._frequencies: tuple | None = None

    @classmethod
    def of_text(cls, text: str, page_starts: list[int] | None = None, words: int = PASSAGE_WORDS) -> "PassageIndex":
        return cls(split_passages(text, page_starts, words))

    def __len__(self) -> int:
        return len(self._passages)

    @property
    def passages(self) -> list[Passage]:
        """All passages, in document order."""
        return list(self._passages)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """The ``k`` passages that match ``query`` best, best first (ties: document order),
        each with its BM25 score (lower is better, as SQLite reports it); empty when the query
        holds no word or nothing matches. Never raises on the query's content."""
        expression = match_expression(query)
        if expression is None or k < 1:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bm25(fts) AS score FROM fts WHERE fts MATCH ? ORDER BY score, rowid LIMIT ?",
                [expression, int(k)],
            ).fetchall()
        out = []
        for rowid, score in rows:
            p = self._passages[int(rowid)]
            out.append(Passage(p.seq, p.start, p.end, p.page, p.text, float(score)))
        return out

    def frequencies(self) -> tuple[Counter, int]:
        """The passages' content-word document frequencies (:func:`homer.answering.grounding.document_frequencies`),
        computed once: what the not-found check weighs a question's words by."""
        if self._frequencies is None:
            from .grounding import document_frequencies

            self._frequencies = document_frequencies([p.text for p in self._passages])
        return self._frequencies
