"""A lexical passage index per document: short passages in SQLite FTS5, ranked by BM25.

Why: a HOMER cache keeps ~M of a book's tokens, chosen without the question, so a specific
fact is often not among them. REFORM (arXiv 2506.01215) answers that by gathering, at
question time, the few passages the question points to and recomputing them at full
resolution after the compressed cache; this module is the gathering half, lexical first.
SQLite's own FTS5 with its ``bm25()`` ranking lives in the store's index database, so
the index needs no service and no new dependency.

* :func:`split_passages` cuts a text into passages of about ``words`` words on natural
  boundaries (blank lines, then lines, then sentences, then words), keeping each one's
  character span and 1-based page (from the document's ``page_starts``);
* :func:`build` (re)indexes a document, :func:`ensure` builds it only when it is missing
  (a document imported from a bundle gets its index from its text on first use);
* :func:`search` returns the ``k`` best :class:`Passage` of one document for a free-text
  query, by one of :data:`METHODS`: ``bm25`` (words only, stop-words dropped, each term
  quoted, so no query can be FTS5 syntax: quotes, ``AND``/``NEAR``, ``*``, ``:``,
  parentheses are all plain text here), ``dense`` (cosine similarity of sentence embeddings,
  :mod:`storage.embeddings`) or ``rrf`` (reciprocal rank fusion of the two, Cormack et al.
  2009). The default is :data:`DEFAULT_METHOD`, or ``HOMER_RETRIEVER`` when set;
* :func:`delete` drops a document's passages and their vectors (``Store.delete_document``
  calls it).

The tables (``passages``, its FTS5 shadow ``passages_fts`` kept in step by triggers, and
``passage_index``, one row per indexed document) are created by the store's schema
migration (:func:`create_tables`); the vectors' tables are :mod:`storage.embeddings`'. BM25's term statistics are those of the whole index (all documents); results
are always those of the one document asked about.
"""

from __future__ import annotations

import bisect
import os
import re
import time
from dataclasses import asdict, dataclass

PASSAGE_WORDS = 120
INDEX_VERSION = 2  # bump when the splitting changes: older indexes are rebuilt on first use
# (2: a long line after the text's start is cut at its own sentence ends, not past them)
TOKENIZE = "porter unicode61"
_MAX_TERMS = 32  # a pasted paragraph as a question still makes a bounded query

METHODS = ("bm25", "dense", "rrf")
DEFAULT_METHOD = "bm25"  # chosen by benchmarks/retrieval_recall.py (see retriever())
RRF_K = 60       # reciprocal rank fusion constant (Cormack, Clarke & Buettcher, SIGIR 2009)
FUSE_DEPTH = 50  # how many of each list's best are fused

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves shall thee thou thy thine unto ye hath doth
tell please give name named called say said book document text
""".split())

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
        if current is not None and (held >= words or (after_blank and held >= words // 2)
                                    or held + count > 2 * words):
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


_TABLES = [
    "CREATE TABLE IF NOT EXISTS passages (document_id TEXT, seq INTEGER, start INTEGER, end INTEGER, "
    "page INTEGER, text TEXT)",
    "CREATE INDEX IF NOT EXISTS idx_passages_document_id_seq ON passages (document_id, seq)",
    "CREATE TABLE IF NOT EXISTS passage_index (document_id TEXT PRIMARY KEY, passages INTEGER, words INTEGER, "
    "version INTEGER, built REAL)",
    f"CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING FTS5 (text, content=[passages], "
    f"content_rowid=[rowid], tokenize='{TOKENIZE}')",
    "CREATE TRIGGER IF NOT EXISTS passages_ai AFTER INSERT ON passages BEGIN "
    "INSERT INTO passages_fts (rowid, text) VALUES (new.rowid, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS passages_ad AFTER DELETE ON passages BEGIN "
    "INSERT INTO passages_fts (passages_fts, rowid, text) VALUES ('delete', old.rowid, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS passages_au AFTER UPDATE ON passages BEGIN "
    "INSERT INTO passages_fts (passages_fts, rowid, text) VALUES ('delete', old.rowid, old.text); "
    "INSERT INTO passages_fts (rowid, text) VALUES (new.rowid, new.text); END",
]


def create_tables(db) -> None:
    """The index's tables (idempotent). Run by the store's schema migration inside its
    transaction (plain statements: sqlite-utils' ``enable_fts`` runs a script, which would
    commit that transaction); the FTS rows follow the ``passages`` rows by trigger."""
    for statement in _TABLES:
        db.execute(statement)


def _has_tables(db) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'passage_index'").fetchone() is not None


def is_indexed(db, document_id: str) -> bool:
    if not _has_tables(db):
        return False
    row = db.execute("SELECT version FROM passage_index WHERE document_id = ?", [document_id]).fetchone()
    return row is not None and int(row[0]) == INDEX_VERSION


def retriever(method: str | None = None) -> str:
    """The search method: ``method`` when given, else ``HOMER_RETRIEVER``, else
    :data:`DEFAULT_METHOD`; a name not in :data:`METHODS` is a ValueError."""
    name = (method or os.environ.get("HOMER_RETRIEVER") or DEFAULT_METHOD).strip().lower()
    if name not in METHODS:
        raise ValueError(f"retrieval method must be one of {', '.join(METHODS)}, not {name!r}")
    return name


def uses_vectors(method: str | None = None) -> bool:
    return retriever(method) != "bm25"


def build(db, document_id: str, text: str, page_starts: list[int] | None = None,
          words: int = PASSAGE_WORDS, vectors: bool | None = None) -> int:
    """(Re)index ``document_id``'s text; returns the number of passages. One transaction:
    a reader sees the old index or the new one (older vectors are dropped with it). Then the
    passages are embedded when ``vectors`` (default: when the retriever in force uses them)."""
    from . import embeddings

    passages = split_passages(text, page_starts, words)
    with db.atomic():
        if not _has_tables(db):  # a store whose schema predates the index
            create_tables(db)
        db.execute("DELETE FROM passages WHERE document_id = ?", [document_id])
        db.conn.executemany(
            "INSERT INTO passages (document_id, seq, start, end, page, text) VALUES (?, ?, ?, ?, ?, ?)",
            [(document_id, p.seq, p.start, p.end, p.page, p.text) for p in passages])
        db.execute("INSERT OR REPLACE INTO passage_index (document_id, passages, words, version, built) "
                   "VALUES (?, ?, ?, ?, ?)", [document_id, len(passages), words, INDEX_VERSION, time.time()])
        embeddings.delete(db, document_id)
    if vectors if vectors is not None else uses_vectors():
        embeddings.build(db, document_id)
    return len(passages)


def ensure(db, document_id: str, text_of, page_starts_of=None) -> bool:
    """Build the index of ``document_id`` when it has none (or an older one); ``text_of`` and
    ``page_starts_of`` are called only then. Also embeds its passages when the retriever in
    force uses vectors and they are missing (an index built before them). True when the
    passage index was built now."""
    from . import embeddings

    if is_indexed(db, document_id):
        if uses_vectors():
            embeddings.ensure(db, document_id)
        return False
    build(db, document_id, text_of(), page_starts_of() if page_starts_of else None)
    return True


def _bm25(db, document_id: str, query: str, k: int) -> list[Passage]:
    expression = match_expression(query)
    if expression is None:
        return []
    rows = db.execute(
        "SELECT p.seq, p.start, p.end, p.page, p.text, bm25(passages_fts) AS score "
        "FROM passages_fts JOIN passages p ON p.rowid = passages_fts.rowid "
        "WHERE passages_fts MATCH ? AND p.document_id = ? ORDER BY score, p.seq LIMIT ?",
        [expression, document_id, int(k)]).fetchall()
    return [Passage(int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4], float(r[5])) for r in rows]


def _by_seq(db, document_id: str, scored: list[tuple[int, float]]) -> list[Passage]:
    """The passages of ``(seq, score)`` pairs, in that order, with those scores."""
    if not scored:
        return []
    seqs = [s for s, _ in scored]
    rows = db.execute(f"SELECT seq, start, end, page, text FROM passages WHERE document_id = ? AND seq IN "
                      f"({', '.join('?' * len(seqs))})", [document_id, *seqs]).fetchall()
    found = {int(r[0]): r for r in rows}
    return [Passage(s, int(found[s][1]), int(found[s][2]), int(found[s][3]), found[s][4], score)
            for s, score in scored if s in found]


def fuse(rankings: list[list[int]], k: int, constant: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each item scores ``sum(1 / (constant + rank))`` over the
    rankings it is in (rank 1 = best); the ``k`` best ``(item, score)``, best first (ties: the
    better single rank, then the smaller item)."""
    fused: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (constant + rank)
            best[item] = min(best.get(item, rank), rank)
    order = sorted(fused, key=lambda item: (-fused[item], best[item], item))
    return [(item, fused[item]) for item in order[:k]]


def search(db, document_id: str, query: str, k: int = 3, method: str | None = None) -> list[Passage]:
    """The ``k`` passages of ``document_id`` that match ``query`` best, best first, by
    ``method`` (see :func:`retriever`); empty when the query has no word or nothing matches.
    ``dense`` and ``rrf`` embed the document's passages first when they have no vectors yet.
    Never raises on the query's content (an unknown method is a ValueError)."""
    method = retriever(method)
    if k < 1 or not query_terms(query) or not _has_tables(db):
        return []
    if method == "bm25":
        return _bm25(db, document_id, query, k)
    from . import embeddings

    if method == "dense":
        return _by_seq(db, document_id, [(s, -cos) for s, cos in embeddings.search(db, document_id, query, k)])
    depth = max(FUSE_DEPTH, k)
    lexical = [p.seq for p in _bm25(db, document_id, query, depth)]
    dense = [s for s, _ in embeddings.search(db, document_id, query, depth)]
    return _by_seq(db, document_id, [(s, -score) for s, score in fuse([lexical, dense], k)])


def passages(db, document_id: str) -> list[Passage]:
    """All indexed passages of a document, in order."""
    if not _has_tables(db):
        return []
    rows = db.execute("SELECT seq, start, end, page, text FROM passages WHERE document_id = ? ORDER BY seq",
                      [document_id]).fetchall()
    return [Passage(int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]


def delete(db, document_id: str) -> None:
    """Drop the document's passages, its index row (the FTS rows follow by trigger) and its
    passage vectors."""
    from . import embeddings

    with db.atomic():
        if _has_tables(db):
            db.execute("DELETE FROM passages WHERE document_id = ?", [document_id])
            db.execute("DELETE FROM passage_index WHERE document_id = ?", [document_id])
        embeddings.delete(db, document_id)
