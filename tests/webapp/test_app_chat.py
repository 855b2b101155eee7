"""The app's plain functions (chat sessions, library, inspector) on a tiny random model —
no browser, no server."""

from __future__ import annotations

import pytest
from conftest import tiny_model
from store_helpers import story, text_pdf

from app import library
from app.chat import ChatError, ChatService, describe_turn, settings_overrides
from app.ingest import IngestError, add_to_store, ingest_bytes
from app.inspector import density_figure, inspect, kept_density, tree_figure, tree_shape
from homer import HomerConfig, build_document_cache
from homer.fingerprint import model_fingerprint
from homer.generation import GenerationSettings
from storage import Store, StoreError

FAST = HomerConfig(significance="uncalibrated")


def add_ready(store, tiny, data: bytes, name: str) -> tuple[dict, dict]:
    model, tokenizer, _ = tiny
    doc = add_to_store(store, ingest_bytes(data, name, tokenizer))
    cache = build_document_cache(
        model, tokenizer, store.document_text(doc["id"]), FAST, metadata={"document_id": doc["id"]}
    )
    return doc, store.save_cache(doc["id"], cache)


@pytest.fixture
def service(tmp_path, tiny):
    store = Store(tmp_path / "store")
    return ChatService(store, loader=lambda name: tiny)


@pytest.mark.slow
def test_two_questions_reuse_the_loaded_cache(service, tiny, configure):
    configure(answering={"focus": "cache"})  # the cache path (a focused turn also feeds its passages)
    doc, row = add_ready(service.store, tiny, story(40).encode(), "ada.txt")
    assert service.ready_cache(doc["id"], "tiny")["id"] == row["id"]
    settings = GenerationSettings(max_new_tokens=5)
    *_, (answer1, first) = service.ask("s1", doc["id"], "Who kept the lamp?", "tiny", settings)
    *_, (answer2, second) = service.ask("s1", doc["id"], "And then?", "tiny", settings)
    assert first["cache_source"] == "disk" and second["cache_source"] == "memory"
    assert second["cache_reused"] and second["turn"] == 2 and second["cache_id"] == row["id"]
    # only the new question (plus the previous answer's end) was fed, never the document
    assert 0 < second["appended_tokens"] < 40 < second["document_tokens"]
    assert second["time_to_first_token"] > 0 and second["new_tokens"] >= 1
    assert "time to first token" in describe_turn(second)
    history = service.history("s1", doc["id"])
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    stored = service.store.conversations(doc["id"])
    assert len(stored) == 1 and len(service.store.conversation(stored[0]["id"])["messages"]) == 4
    assert service.history("s2", doc["id"]) == []  # another session has its own conversation
    service.clear("s1", doc["id"])
    assert service.history("s1", doc["id"]) == []
    *_, (_, third) = service.ask("s1", doc["id"], "Who?", "tiny", settings)
    assert third["turn"] == 1 and third["cache_source"] == "memory"


@pytest.mark.slow
def test_an_evicted_conversation_re_appends_its_turns(service, tiny, configure):
    # one conversation kept; the cache's conversation (random-weight model, made-up questions)
    configure(chat={"max_conversations": 1}, answering={"focus": "cache"})
    a, _ = add_ready(service.store, tiny, story(30, "a").encode(), "a.txt")
    b, _ = add_ready(service.store, tiny, story(30, "b").encode(), "b.txt")
    settings = GenerationSettings(max_new_tokens=3)
    list(service.ask("s", a["id"], "One?", "tiny", settings))
    list(service.ask("s", b["id"], "Two?", "tiny", settings))  # evicts a's working cache
    assert service.session("s", a["id"]).conversation is None
    *_, (_, stats) = service.ask("s", a["id"], "Three?", "tiny", settings)
    assert stats["turn"] == 2 and stats["appended_tokens"] > len("One?")  # history re-appended, not the document


def test_chat_without_a_cache_of_this_model_answers_from_passages(service, tiny, tmp_path):
    doc = add_to_store(service.store, ingest_bytes(story(10).encode(), "x.txt"))
    shown, stats = list(service.ask("s", doc["id"], "What is this book about?", "tiny"))[-1]
    assert "no cache for the model in use" in shown and stats["focus"] == "waiting" and stats["new_tokens"] == 0
    shown, stats = list(
        service.ask("s", doc["id"], "Where did the harbour master go?", "tiny", GenerationSettings(max_new_tokens=3))
    )[-1]
    assert stats["focus"] == "passages" and stats["cache_source"] == "none" and not stats["cache_used"]
    with pytest.raises(ChatError, match="type a question"):
        next(service.ask("s", doc["id"], "  ", "tiny"))
    # a cache of another model is never picked
    other = tiny_model("llama", window=1024, seed=3)
    other_fp = model_fingerprint(other)
    cache = build_document_cache(other, tiny[1], service.store.document_text(doc["id"]), FAST)
    service.store.save_cache(doc["id"], cache)
    assert service.store.caches(doc["id"], model_fingerprint=other_fp)
    assert service.ready_cache(doc["id"], "tiny") is None
    with pytest.raises(StoreError):
        service.load_cache(service.store.caches(doc["id"])[0]["id"], tiny[2])


def test_settings_overrides_keep_only_changes(tiny):
    config = tiny[0].config
    assert settings_overrides(config, {"max_chunk_len": 512, "target_len": 512, "significance": "calibrated"}) == {}
    assert settings_overrides(config, {"max_chunk_len": 256.0, "significance": "random"}) == {
        "max_chunk_len": 256,
        "significance": "random",
    }
    with pytest.raises(ValueError):
        settings_overrides(config, {"warmup_layers": 99})


def test_library_states_labels_and_ownership(tmp_path, tiny):
    store = Store(tmp_path / "store")
    _, fingerprint = tiny[2], tiny[2]
    doc, _ = add_ready(store, tiny, story(20).encode(), "ready.txt")
    other = add_to_store(store, ingest_bytes(story(20, "x").encode(), "other.txt"))
    entries = {e["name"]: e for e in library.library(store, "tiny", fingerprint)}
    assert entries["ready.txt"]["state"] == "ready" and entries["ready.txt"]["ready"]
    assert entries["other.txt"]["state"] == "not read by this model yet"
    # built without leaf states: no deep read, and the table says so in its own column
    assert not entries["ready.txt"]["deep_read"] and not entries["other.txt"]["deep_read"]
    rows = {row[0]: dict(zip(library.HEADERS, row)) for row in library.table_rows(list(entries.values()))}
    assert all(len(row) == len(library.HEADERS) for row in library.table_rows(list(entries.values())))
    assert rows["ready.txt"]["state"] == "ready" and rows["ready.txt"]["deep read"] == "—"
    assert rows["other.txt"]["deep read"] == "—"
    assert library.choices(list(entries.values()), ready_only=True) == [(f"ready.txt · {doc['id'][:8]}", doc["id"])]
    job = {"state": "running", "progress": 0.43, "started": 100.0, "message": "x"}
    assert library.job_label(job, now=110.0) == "reading 43 % · ETA 13 s"
    assert library.job_label({"state": "failed", "error": "the file is empty"}) == "failed: the file is empty"
    # with login: each user sees what they added
    library.add_owner(store, doc["id"], "ann")
    assert [e["name"] for e in library.library(store, "tiny", fingerprint, owner="ann")] == ["ready.txt"]
    assert library.library(store, "tiny", fingerprint, owner="bob") == []
    with pytest.raises(StoreError):
        library.delete_document(store, doc["id"], owner="bob")
    library.add_owner(store, doc["id"], "bob")
    assert library.delete_document(store, doc["id"], owner="bob").startswith("removed")
    assert store.get_document(doc["id"]) is not None  # ann still has it
    # the last owner's delete removes the stored copy, in the same words (they tell nothing of others)
    assert library.delete_document(store, doc["id"], owner="ann") == "removed ready.txt from your library"
    assert store.get_document(doc["id"]) is None and store.get_document(other["id"]) is not None


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty.txt", b"", "empty"),
        ("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00" * 50, "binary"),
        ("broken.pdf", b"%PDF-1.4\n garbage", "PDF"),
        ("sheet.xlsx", b"PK\x03\x04 data", "unsupported"),
    ],
)
def test_bad_uploads_are_refused_before_queueing(tmp_path, name, data, reason):
    store = Store(tmp_path / "store")

    class Queue:
        def __init__(self):
            self.store, self.calls = store, 0

        def submit_file(self, *args):
            self.calls += 1
            raise AssertionError("a bad file reached the queue")

    queue = Queue()
    with pytest.raises(IngestError, match=reason):
        library.check_upload(data, name)
    [line] = library.submit_uploads(queue, [(name, data)], "tiny")
    assert line.startswith("✗") and reason in line and queue.calls == 0
    assert store.documents() == [] and store.jobs.list() == []


def test_good_pdf_passes_the_quick_check():
    library.check_upload(text_pdf(["Page one.", "Page two."]), "two.pdf")


def test_export_and_import_between_stores(tmp_path, tiny):
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    doc, row = add_ready(a, tiny, story(20).encode(), "ada.txt")
    bundle = library.export_document(a, doc["id"], tiny[2], folder=tmp_path)
    assert bundle.name == "ada.homer-bundle.zip"
    with pytest.raises(StoreError, match="refused: the cache was built by model"):
        library.import_bundle_file(b, bundle, "0" * 32)
    assert b.documents() == []
    imported = library.import_bundle_file(b, bundle, tiny[2], owner="ann")
    assert imported["id"] == row["id"] and library.owned_ids(b, "ann") == {doc["id"]}
    with pytest.raises(StoreError, match="no cache of the model in use"):
        library.export_document(a, doc["id"], "f" * 32)


def test_inspector_density_and_tree(tmp_path, tiny):
    store = Store(tmp_path / "store")
    pages = [story(8, f"page{i}") for i in range(4)]
    doc, row = add_ready(store, tiny, text_pdf(pages), "book.pdf")
    cache = store.load_cache(row["id"])
    shape, data = inspect(store, row, cache, tiny[1])
    assert data["unit"] == "page" and len(data["density"]) == doc["pages"] == 4
    assert sum(data["kept"]) == shape["kept_context_tokens"] > 0
    assert sum(data["total"]) == shape["context_tokens"]
    assert all(0 < d <= 1 for d in data["density"])
    assert shape["leaves"] == 2 ** shape["height"] > 1 and shape["levels"][-1]["tokens_kept"] == len(cache)
    chunks = kept_density(cache, bins=10)
    assert chunks["unit"] == "token" and sum(chunks["total"]) == shape["context_tokens"]
    assert sum(chunks["kept"]) == shape["kept_context_tokens"]
    assert tree_shape(cache) == shape
    density_figure(data)
    tree_figure(shape)


@pytest.mark.slow
def test_a_long_chat_leaves_out_its_oldest_turns_and_an_overlong_question_is_refused(service, tiny, configure):
    configure(answering={"focus": "cache"})  # the cache's conversation filling the window
    doc, _ = add_ready(service.store, tiny, story(40).encode(), "ada.txt")
    settings = GenerationSettings(max_new_tokens=40)
    last = {}
    for i in range(10):
        *_, (_, last) = service.ask("s", doc["id"], f"Question {i}: who kept the lamp, and where?", "tiny", settings)
    assert last["turn"] == 10 and last["forgotten_turns"] > 0
    assert "oldest turn" in describe_turn(last)
    assert len(service.history("s", doc["id"])) == 20  # the page keeps every turn; the model sees the recent ones
    with pytest.raises(ChatError, match="window"):
        next(service.ask("s", doc["id"], "why " * 300, "tiny", settings))
    *_, (_, after) = service.ask("s", doc["id"], "And then?", "tiny", settings)
    assert after["turn"] == 11 and after["new_tokens"] >= 1
