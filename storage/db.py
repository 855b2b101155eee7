"""The SQLite index (sqlite-utils, WAL mode) and its schema migrations.

Every migration is a function in :data:`MIGRATIONS`; ``schema_version`` records how many have
been applied, and :func:`migrate` applies the missing ones inside one write transaction, so
several processes opening the same store at once migrate it exactly once."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_MS = 30_000


def now() -> float:
    """Timestamps in the index are Unix seconds (float)."""
    return time.time()


def _v1_documents_caches_conversations(db: sqlite_utils.Database) -> None:
    db["documents"].create(
        {
            "id": str,  # sha256 of the uploaded bytes: the same content is stored once
            "title": str,
            "file_name": str,
            "kind": str,  # pdf | text | markdown
            "pages": int,
            "token_count": int,
            "chars": int,
            "bytes": int,
            "page_starts": str,  # JSON list: character offset where each page starts
            "created": float,
        },
        pk="id",
    )
    db["caches"].create(
        {
            "id": str,  # cache key: document + model fingerprint + settings + prompt version
            "document_id": str,
            "model_fingerprint": str,
            "model_name": str,
            "settings": str,  # HOMER settings JSON (resolved)
            "prompt_version": str,
            "file": str,  # relative to the store root
            "bytes": int,
            "checksum": str,  # sha256 of the file
            "tokens": int,
            "build_seconds": float,
            "status": str,  # building | ready | corrupt
            "error": str,
            "created": float,
            "updated": float,
        },
        pk="id",
        foreign_keys=[("document_id", "documents", "id")],
    )
    db["caches"].create_index(["document_id"])
    db["conversations"].create(
        {
            "id": str,
            "document_id": str,
            "cache_id": str,
            "messages": str,  # JSON list of {"role", "content"}
            "created": float,
            "updated": float,
        },
        pk="id",
        foreign_keys=[("document_id", "documents", "id")],
    )
    db["conversations"].create_index(["document_id"])


def _v2_jobs_locks_passages(db: sqlite_utils.Database) -> None:
    db["documents"].add_column("passages", str)  # JSON list of [start, end, first page, last page]
    db["jobs"].create(
        {
            "id": str,
            "kind": str,  # build
            "document_id": str,  # content hash (the document row exists once ingested)
            "build_key": str,  # document + model name + requested settings: one active job per key
            "upload": str,  # relative path of an upload waiting for ingest, else null
            "file_name": str,
            "model": str,  # model name or folder the worker loads
            "settings": str,  # requested HOMER settings JSON (unresolved)
            "cache_id": str,
            "state": str,  # queued | running | done | failed
            "progress": float,  # 0..1
            "message": str,
            "error": str,
            "attempts": int,
            "max_attempts": int,
            "owner": str,  # host:pid of the worker holding the job
            "lease_until": float,
            "task_id": str,
            "created": float,
            "enqueued": float,
            "started": float,
            "finished": float,
            "updated": float,
        },
        pk="id",
        defaults={"progress": 0.0, "attempts": 0, "max_attempts": 3},
    )
    db.execute("CREATE UNIQUE INDEX jobs_one_active_per_key ON jobs(build_key) WHERE state IN ('queued', 'running')")
    db["jobs"].create_index(["state"])
    db["locks"].create({"name": str, "owner": str, "expires": float}, pk="name")


def _v3_document_owners(db: sqlite_utils.Database) -> None:
    # Who may see a document when the app runs with login: documents are stored once per
    # content, so several users can own the same one. No rows = the app runs without login.
    db["document_owners"].create({"document_id": str, "owner": str, "added": float}, pk=("document_id", "owner"))
    db["document_owners"].create_index(["owner"])


def _v4_cache_leaf_states(db: sqlite_utils.Database) -> None:
    # An optional companion file per cache: the leaf-stage states a deep read (a fast
    # question-aware re-read, homer.answering.deep_read) starts from. Null when the cache has none.
    db["caches"].add_column("leaf_states_file", str)  # relative to the store root
    db["caches"].add_column("leaf_states_bytes", int)
    db["caches"].add_column("leaf_states_checksum", str)  # sha256 of the file


def _v5_passage_index(db: sqlite_utils.Database) -> None:
    # Short passages per document with an FTS5 index (BM25) for question-time retrieval.
    from .passages import create_tables

    create_tables(db)


def _v6_cache_install_journal(db: sqlite_utils.Database) -> None:
    # The row an install is about to write (JSON), recorded before its file is renamed into
    # place: a writer killed between the rename and the row leaves a file that matches it, and
    # the store completes the row rather than calling a good cache corrupt. Null otherwise.
    db["caches"].add_column("pending", str)


def _v7_owner_names(db: sqlite_utils.Database) -> None:
    # The name each owner gave a document (the file they uploaded or imported): documents are
    # stored once per content, so a second user who uploads the same bytes as report.pdf must
    # see report.pdf, never the first user's file name or title. Null for older rows.
    db["document_owners"].add_column("file_name", str)
    db["document_owners"].add_column("title", str)


def _v8_passage_vectors(db: sqlite_utils.Database) -> None:
    # One sentence embedding per indexed passage (and per document the model that made them)
    # for dense and fused retrieval; filled after indexing, or on first use.
    from .embeddings import create_tables

    create_tables(db)


def _v9_document_locations(db: sqlite_utils.Database) -> None:
    # A sectioned document's (EPUB, DOCX, HTML) section labels, JSON, one per page_starts
    # entry: sources then say "Chapter 3 · The Storm" instead of a page. Null: numbered pages.
    db["documents"].add_column("locations", str)


def _v10_document_shares(db: sqlite_utils.Database) -> None:
    # A team library: an owner shares a document read-only with a named user or with
    # everyone on the instance (grantee "*"); one row per owner and grantee. The share goes
    # when its owner drops the document or the document is deleted.
    db["document_shares"].create(
        {"document_id": str, "owner": str, "grantee": str, "added": float}, pk=("document_id", "owner", "grantee")
    )
    db["document_shares"].create_index(["grantee"])


def _v11_conversation_threads(db: sqlite_utils.Database) -> None:
    # Conversation threads kept on the server: several named threads per document and user.
    # owner: the signed-in user (null without login); name: the thread's title (the first
    # question, cut to 80 characters, until renamed); turns: JSON list of [prompt, answer] as
    # the model saw them over ``cache_id``, re-appended to that cache when the thread is
    # reopened (the shown messages stay in ``messages``). Null for older rows.
    db["conversations"].add_column("owner", str)
    db["conversations"].add_column("name", str)
    db["conversations"].add_column("turns", str)
    db["conversations"].create_index(["document_id", "owner"])


MIGRATIONS = [
    _v1_documents_caches_conversations,
    _v2_jobs_locks_passages,
    _v3_document_owners,
    _v4_cache_leaf_states,
    _v5_passage_index,
    _v6_cache_install_journal,
    _v7_owner_names,
    _v8_passage_vectors,
    _v9_document_locations,
    _v10_document_shares,
    _v11_conversation_threads,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def retry_busy(action, timeout: float = BUSY_TIMEOUT_MS / 1000):
    """Run ``action()`` again (jittered backoff) while SQLite answers "database is locked" or
    "busy" — the cases its busy handler does not wait on (a journal-mode switch, a lock
    upgrade of a reader) — until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.25)


@contextmanager
def setup_lock(path: str | Path):
    """One process at a time sets up the index of a store on this machine (an advisory file
    lock next to it); elsewhere (no ``fcntl``) :func:`retry_busy` alone keeps openers apart."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(f"{path}.setup-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open the index (WAL, busy timeout, foreign keys) without migrating it. The switch to
    WAL is made once per file, retried while another process holds the lock it needs."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)

    def to_wal():
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = wal")

    retry_busy(to_wal)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return db


def open_index(path: str | Path) -> sqlite_utils.Database:
    """Connect and migrate, as a store does when it opens: several processes opening a fresh
    store at once take turns (:func:`setup_lock`) and wait out each other's locks."""
    with setup_lock(path):
        db = connect(path)
        retry_busy(lambda: migrate(db))
    return db


def schema_version(db: sqlite_utils.Database) -> int:
    if not db["schema_version"].exists():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: sqlite_utils.Database, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to ``target``; returns the version reached."""
    if schema_version(db) >= target:
        return schema_version(db)
    db.execute("BEGIN IMMEDIATE")  # one migrating process at a time (waits on the busy timeout)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)")
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"the store index has schema version {current}; this version knows {SCHEMA_VERSION}")
        for version in range(current + 1, target + 1):
            MIGRATIONS[version - 1](db)
            db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", [version, now()])
        db.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    return schema_version(db)
