"""A lexical passage index per document: short passages in SQLite FTS5, ranked by BM25.

Why: a HOMER cache keeps ~M of a book's tokens, chosen without the question, so a specific
fact is often not among them. REFORM (arXiv 2506.01215) answers that by gathering, at
question time, the few passages the question points to and recomputing them at full
resolution after the compressed cache; this module is the gathering half, lexical first.
The passages live in the store's index database (and its FTS5 shadow table); a search ranks
one document's passages by FTS5's ``bm25()`` over that document's own term statistics
(:class:`homer.answering.passages.PassageIndex`, the ranking a notebook gets for the same
text), so the index needs no service and no new dependency.

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
  2009). The default is :data:`DEFAULT_METHOD`; the caller passes another (the app its setting);
* :func:`delete` drops a document's passages and their vectors (``Store.delete_document``
  calls it).

The tables (``passages``, its FTS5 shadow ``passages_fts`` kept in step by triggers, and
``passage_index``, one row per indexed document) are created by the store's schema
migration (:func:`create_tables`); the vectors' tables are :mod:`storage.embeddings`'. BM25's
term statistics are the one document's own (another user's documents never move a ranking).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from homer.answering.passages import (  # noqa: F401  (the store's callers find these here too)
    INDEX_VERSION,
    PASSAGE_WORDS,
    STOP_WORDS,
    TOKENIZE,
    Passage,
    PassageIndex,
    match_expression,
    query_terms,
    split_passages,
)

METHODS = ("bm25", "dense", "rrf")
DEFAULT_METHOD = "bm25"  # chosen by benchmarks/retrieval_recall.py (see retriever())
RRF_K = 60  # reciprocal rank fusion constant (Cormack, Clarke & Buettcher, SIGIR 2009)
FUSE_DEPTH = 50  # how many of each list's best are fused
_RANKERS_KEPT = 8  # documents whose BM25 ranker stays in memory

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
    """The search method: ``method`` when given (any case, spaces around ignored), else
    :data:`DEFAULT_METHOD`; a name not in :data:`METHODS` is a ValueError."""
    name = (method or DEFAULT_METHOD).strip().lower()
    if name not in METHODS:
        raise ValueError(f"retrieval method must be one of {', '.join(METHODS)}, not {name!r}")
    return name


def uses_vectors(method: str | None = None) -> bool:
    return retriever(method) != "bm25"


def build(
    db,
    document_id: str,
    text: str,
    page_starts: list[int] | None = None,
    words: int = PASSAGE_WORDS,
    vectors: bool | None = None,
) -> int:
    """(Re)index ``document_id``'s text; returns the number of passages. One transaction:
    a reader sees the old index or the new one (older vectors are dropped with it). Then the
    passages are embedded when ``vectors`` (default: when :data:`DEFAULT_METHOD` uses them)."""
    from . import embeddings

    passages = split_passages(text, page_starts, words)
    with db.atomic():
        if not _has_tables(db):  # a store whose schema predates the index
            create_tables(db)
        db.execute("DELETE FROM passages WHERE document_id = ?", [document_id])
        db.conn.executemany(
            "INSERT INTO passages (document_id, seq, start, end, page, text) VALUES (?, ?, ?, ?, ?, ?)",
            [(document_id, p.seq, p.start, p.end, p.page, p.text) for p in passages],
        )
        db.execute(
            "INSERT OR REPLACE INTO passage_index (document_id, passages, words, version, built) "
            "VALUES (?, ?, ?, ?, ?)",
            [document_id, len(passages), words, INDEX_VERSION, time.time()],
        )
        embeddings.delete(db, document_id)
    if vectors if vectors is not None else uses_vectors():
        embeddings.build(db, document_id)
    return len(passages)


def ensure(db, document_id: str, text_of, page_starts_of=None, method: str | None = None) -> bool:
    """Build the index of ``document_id`` when it has none (or an older one); ``text_of`` and
    ``page_starts_of`` are called only then. Also embeds its passages when the search
    ``method`` (see :func:`retriever`) uses vectors and they are missing (an index built
    before them). True when the passage index was built now."""
    from . import embeddings

    vectors = uses_vectors(method)
    if is_indexed(db, document_id):
        if vectors:
            embeddings.ensure(db, document_id)
        return False
    build(db, document_id, text_of(), page_starts_of() if page_starts_of else None, vectors=vectors)
    return True


_RANKERS: OrderedDict = OrderedDict()
_RANKERS_LOCK = threading.Lock()


def ranker(db, document_id: str) -> PassageIndex | None:
    """The document's stored passages as a :class:`homer.answering.passages.PassageIndex`
    (BM25 over the document's own term statistics: the ranking a notebook gets for the same
    text, whatever else the store holds), kept for the last few documents; None when the
    document has no index."""
    row = (
        db.execute("SELECT built, passages FROM passage_index WHERE document_id = ?", [document_id]).fetchone()
        if _has_tables(db)
        else None
    )
    if row is None:
        return None
    main = db.execute("PRAGMA database_list").fetchone()
    key = (main[2] or str(id(db.conn)), document_id, row[0], row[1])  # the database file, the index build
    with _RANKERS_LOCK:
        found = _RANKERS.get(key)
        if found is not None:
            _RANKERS.move_to_end(key)
            return found
    found = PassageIndex(passages(db, document_id))
    with _RANKERS_LOCK:
        for old in [k for k in _RANKERS if k[:2] == key[:2]]:
            _RANKERS.pop(old)
        _RANKERS[key] = found
        while len(_RANKERS) > _RANKERS_KEPT:
            _RANKERS.popitem(last=False)
    return found


def _bm25(db, document_id: str, query: str, k: int) -> list[Passage]:
    found = ranker(db, document_id)
    return found.search(query, k) if found is not None else []


def _by_seq(db, document_id: str, scored: list[tuple[int, float]]) -> list[Passage]:
    """The passages of ``(seq, score)`` pairs, in that order, with those scores."""
    if not scored:
        return []
    seqs = [s for s, _ in scored]
    rows = db.execute(
        f"SELECT seq, start, end, page, text FROM passages WHERE document_id = ? AND seq IN "
        f"({', '.join('?' * len(seqs))})",
        [document_id, *seqs],
    ).fetchall()
    found = {int(r[0]): r for r in rows}
    return [
        Passage(s, int(found[s][1]), int(found[s][2]), int(found[s][3]), found[s][4], score)
        for s, score in scored
        if s in found
    ]


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
    rows = db.execute(
        "SELECT seq, start, end, page, text FROM passages WHERE document_id = ? ORDER BY seq", [document_id]
    ).fetchall()
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
