"""Deep read in the app: leaf states stored next to a cache (opt-in), kept by the worker when
``HOMER_DEEP_READ=1``, and a chat turn answered from a question-aware re-read — on a tiny
random model, no browser."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import tiny_model
from store_helpers import FAST as FAST_SETTINGS
from store_helpers import story, text_pdf

from app import library, tasks
from app.chat import DEEP_READ_UNAVAILABLE, ChatService, describe_turn
from app.ingest import add_to_store, ingest_bytes
from homer import Conversation, HomerConfig, build_document_cache
from homer.answering.citations import cite_answer
from homer.generation import GenerationSettings
from storage import CacheCorrupt, Store, StoreError
from storage.bundles import export_bundle
from storage.files import sha256_file

EXACT = HomerConfig(significance="uncalibrated", cache_dtype="float32")  # deep read == full build, bit for bit


def add_built(store, tiny, data: bytes, name: str, leaf_states: bool, config=EXACT) -> tuple[dict, dict]:
    """A stored document and its cache, built as the worker builds it (with or without leaf states)."""
    model, tokenizer, _ = tiny
    doc = add_to_store(store, ingest_bytes(data, name, tokenizer))
    leaves = store.staging_path(".leaves.safetensors") if leaf_states else None
    cache = build_document_cache(
        model,
        tokenizer,
        store.document_text(doc["id"]),
        config,
        metadata={"document_id": doc["id"]},
        leaf_states=leaves,
    )
    row = store.save_cache(doc["id"], cache, leaf_states=leaves)
    assert leaves is None or not leaves.exists()  # moved into place
    return doc, row


# --- storage -----------------------------------------------------------------------------
def test_leaf_states_are_stored_indexed_checked_and_deleted_with_the_document(tmp_path, tiny):
    store = Store(tmp_path / "store")
    doc, row = add_built(store, tiny, story(20).encode(), "ada.txt", leaf_states=True)
    path = store.root / row["leaf_states_file"]
    assert path == store.leaf_states_path(row["id"]) and path.parent == (store.root / row["file"]).parent
    assert row["leaf_states_bytes"] == path.stat().st_size > row["bytes"]
    assert len(row["leaf_states_checksum"]) == 64
    assert store.open_leaf_states(row["id"], expected_fingerprint=tiny[2]) == path
    assert store.check() == [] and list(store.tmp_dir.iterdir()) == []
    with pytest.raises(StoreError, match="not by the loaded model"):
        store.open_leaf_states(row["id"], expected_fingerprint="0" * 32)

    # the same cache saved again without leaf states (a bundle import, an old worker) keeps them
    again = store.save_cache(doc["id"], store.load_cache(row["id"]))
    assert again["id"] == row["id"] and again["leaf_states_checksum"] == row["leaf_states_checksum"]

    # a cache without leaf states: None, not an error
    other, plain = add_built(store, tiny, story(20, "b").encode(), "b.txt", leaf_states=False)
    assert plain["leaf_states_file"] is None and store.open_leaf_states(plain["id"]) is None

    # the library says which document can be deep-read
    entries = library.library(store, "tiny", tiny[2])
    assert {e["name"]: e["deep_read"] for e in entries} == {"ada.txt": True, "b.txt": False}
    rows = {row[0]: dict(zip(library.HEADERS, row)) for row in library.table_rows(entries)}
    assert rows["ada.txt"]["deep read"] == "available" and rows["b.txt"]["deep read"] == "—"
    assert rows["ada.txt"]["state"] == rows["b.txt"]["state"] == "ready"

    store.delete_document(doc["id"])
    assert not path.exists() and not (store.root / row["file"]).exists()
    assert store.check() == []


@pytest.mark.slow
def test_damaged_or_orphan_leaf_states_are_reported_and_repaired(tmp_path, tiny):
    store = Store(tmp_path / "store")
    doc, row = add_built(store, tiny, story(20).encode(), "ada.txt", leaf_states=True)
    path = store.root / row["leaf_states_file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    [problem] = store.check()
    assert problem.kind == "corrupt-file" and problem.path == row["leaf_states_file"]
    with pytest.raises(CacheCorrupt, match="leaf states of cache .*checksum"):
        store.open_leaf_states(row["id"])
    # dropped from the index and the disk; the cache itself stays ready
    assert store.open_leaf_states(row["id"]) is None and not path.exists()
    assert store.get_cache(row["id"])["status"] == "ready" and store.check() == []
    [entry] = library.library(store, "tiny", tiny[2])
    assert entry["state"] == "ready" and not entry["deep_read"]  # the library no longer offers a deep read

    # a leaf-state file no row knows is an orphan
    stray = path.with_name("f" * 32 + ".leaves.safetensors")
    stray.write_bytes(b"x")
    [problem] = store.check(repair=True)
    assert problem.kind == "orphan-file" and problem.repaired and not stray.exists()

    # a row whose leaf-state file vanished: repair drops the leaf states only
    _, row = add_built(store, tiny, story(20, "c").encode(), "c.txt", leaf_states=True)
    (store.root / row["leaf_states_file"]).unlink()
    [problem] = store.check(repair=True)
    assert problem.kind == "missing-file" and problem.repaired
    assert store.get_cache(row["id"])["leaf_states_file"] is None and store.check() == []


def test_leaf_states_of_another_model_are_refused(tmp_path, tiny):
    store = Store(tmp_path / "store")
    model, tokenizer, _ = tiny
    doc = add_to_store(store, ingest_bytes(story(10).encode(), "a.txt", tokenizer))
    text = store.document_text(doc["id"])
    leaves = store.staging_path(".leaves.safetensors")
    build_document_cache(tiny_model("llama", window=1024, seed=3), tokenizer, text, EXACT, leaf_states=leaves)
    cache = build_document_cache(model, tokenizer, text, EXACT)
    with pytest.raises(StoreError, match="another model"):
        store.save_cache(doc["id"], cache, leaf_states=leaves)
    assert store.caches(doc["id"], status=None) == []


def test_bundles_leave_the_leaf_states_out(tmp_path, tiny):
    store = Store(tmp_path / "store")
    doc, row = add_built(store, tiny, story(20).encode(), "ada.txt", leaf_states=True)
    bundle = export_bundle(store, doc["id"], tmp_path / "ada.homer-bundle.zip")
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
    assert sorted(names) == ["cache.safetensors", "manifest.json", "source.txt", "text.txt"]
    assert bundle.stat().st_size < row["leaf_states_bytes"]


# --- worker ------------------------------------------------------------------------------
def test_the_worker_keeps_leaf_states_only_when_asked(tmp_path, model_dir, configure):
    store = Store(tmp_path / "store")
    queued = []
    configure(builds={"deep_read": False})
    job = tasks.submit_file(store, queued.append, story(20).encode(), "ada.txt", str(model_dir), FAST_SETTINGS)
    assert tasks.run_build(store, job["id"]) == "done"
    row = store.get_cache(store.jobs.get(job["id"])["cache_id"])
    assert row["leaf_states_file"] is None
    # the same request again is reused while leaf states are not wanted …
    assert (
        tasks.submit_document(store, queued.append, row["document_id"], str(model_dir), FAST_SETTINGS)["id"]
        == job["id"]
    )

    # … and read again when they are: same cache key (leaf states do not change the cache)
    configure(builds={"deep_read": True})
    again = tasks.submit_document(store, queued.append, row["document_id"], str(model_dir), FAST_SETTINGS)
    assert again["id"] != job["id"] and again["state"] == "queued"
    assert tasks.run_build(store, again["id"]) == "done"
    finished = store.jobs.get(again["id"])
    assert finished["cache_id"] == row["id"] and "leaf states" in finished["message"]
    row = store.get_cache(row["id"])
    assert row["leaf_states_file"] and store.open_leaf_states(row["id"]) is not None
    assert store.check() == [] and list(store.tmp_dir.iterdir()) == []
    # now ready with leaf states: reused
    assert (
        tasks.submit_document(store, queued.append, row["document_id"], str(model_dir), FAST_SETTINGS)["id"]
        == again["id"]
    )


# --- chat --------------------------------------------------------------------------------
@pytest.fixture
def service(tmp_path, tiny):
    return ChatService(Store(tmp_path / "store"), loader=lambda name: tiny)


def test_a_deep_read_answer_equals_a_full_question_aware_build(service, tiny):
    model, tokenizer, _ = tiny
    pages = [story(10, f"page{i}") for i in range(4)]
    doc, row = add_built(service.store, tiny, text_pdf(pages), "book.pdf", leaf_states=True)
    question = "Who kept the lamp?"
    settings = GenerationSettings(max_new_tokens=6)
    items = list(service.ask("s", doc["id"], question, "tiny", settings, deep_read=True))
    assert items[0][0] == "" and items[0][1]["phase"] == "deep reading"
    shown, stats = items[-1]
    assert "phase" not in stats and stats["deep_read"] is True and stats["deep_read_seconds"] > 0
    assert (
        stats["deep_read_mode"] == "leaf-states" and not stats["cache_reused"]
    )  # only the question ran the leaf layers
    assert "deep read for this question" in describe_turn(stats)

    # the same answer as a question-aware cache built from scratch for this question
    full = build_document_cache(model, tokenizer, service.store.document_text(doc["id"]), EXACT, question=question)
    expected = "".join(Conversation(full, model, tokenizer).ask(question, settings=settings))
    assert service.session("s", doc["id"]).turns == [(question, expected)]
    assert stats["cache_tokens"] == len(full)
    # citations are computed on the cache the answer came from
    cited = cite_answer(model, tokenizer, full, service.store.page_starts(doc["id"]), question, expected)
    assert "sources" in stats and stats["citations"] == cited.to_dict()["pages"]
    assert shown == expected + (f"\n\nSources: {stats['sources']}" if stats["sources"] else "")  # a sources line if any

    # the history goes on: a regular follow-up sees the deep-read turn
    *_, (_, follow) = service.ask("s", doc["id"], "And then?", "tiny", settings)
    assert follow["turn"] == 2 and not follow["deep_read"] and follow["cache_id"] == row["id"]
    assert follow["appended_tokens"] > len(question)  # the deep-read turn was appended before the question
    assert [m["role"] for m in service.history("s", doc["id"])] == ["user", "assistant"] * 2
    # and a second deep read in the same conversation answers its own question
    *_, (_, third) = service.ask("s", doc["id"], "Where?", "tiny", settings, deep_read=True)
    assert third["deep_read"] and third["turn"] == 3


def test_deep_read_without_leaf_states_answers_normally_and_says_why(service, tiny):
    doc, row = add_built(service.store, tiny, story(20).encode(), "ada.txt", leaf_states=False)
    settings = GenerationSettings(max_new_tokens=4)
    *_, (answer, stats) = service.ask("a", doc["id"], "Who?", "tiny", settings, deep_read=True)
    *_, (plain, _) = service.ask("b", doc["id"], "Who?", "tiny", settings)
    assert answer == plain and stats["deep_read"] is False and stats["cache_reused"]
    assert stats["deep_read_unavailable"] == DEEP_READ_UNAVAILABLE
    assert "start the app with --deep-read and read it again" in describe_turn(stats)


def test_damaged_leaf_states_give_a_readable_message(service, tiny):
    doc, row = add_built(service.store, tiny, story(20).encode(), "ada.txt", leaf_states=True)
    path = service.store.root / row["leaf_states_file"]
    path.write_bytes(path.read_bytes()[:-100] + bytes(100))
    *_, (_, stats) = service.ask("a", doc["id"], "Who?", "tiny", GenerationSettings(max_new_tokens=2), deep_read=True)
    assert not stats["deep_read"] and stats["deep_read_unavailable"].startswith("deep read unavailable: leaf states")
    assert service.store.get_cache(row["id"])["status"] == "ready"


def test_leaf_states_of_other_settings_are_refused(service, tiny, tmp_path, monkeypatch):
    """The store checks the file against its cache row (model, settings, prompt); the engine
    checks again (LeafStateMismatchError): either way a readable message, a normal answer."""
    doc, row = add_built(service.store, tiny, story(20).encode(), "ada.txt", leaf_states=True)
    model, tokenizer, _ = tiny
    other = tmp_path / "other.leaves.safetensors"
    build_document_cache(
        model,
        tokenizer,
        service.store.document_text(doc["id"]),
        HomerConfig(significance="uncalibrated", cache_dtype="float32", warmup_layers=1),
        leaf_states=other,
    )
    settings = GenerationSettings(max_new_tokens=2)

    monkeypatch.setattr(service.store, "open_leaf_states", lambda *args, **kwargs: other)  # past the store's check
    *_, (_, stats) = service.ask("a", doc["id"], "Who?", "tiny", settings, deep_read=True)
    assert not stats["deep_read"] and "made with other settings" in stats["deep_read_unavailable"]
    assert "warmup_layers" in stats["deep_read_unavailable"]
    monkeypatch.undo()

    path = service.store.root / row["leaf_states_file"]
    path.write_bytes(other.read_bytes())  # consistent with the index, but not with its cache
    service.store.db.execute(
        "UPDATE caches SET leaf_states_bytes = ?, leaf_states_checksum = ? WHERE id = ?",
        [path.stat().st_size, sha256_file(path), row["id"]],
    )
    *_, (_, stats) = service.ask("b", doc["id"], "Who?", "tiny", settings, deep_read=True)
    assert not stats["deep_read"] and "other HOMER settings" in stats["deep_read_unavailable"]
    assert torch.is_grad_enabled()
