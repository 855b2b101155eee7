"""The store on real SQLite files: round trip, dedupe, delete, check/repair, corrupt caches,
migrations, locks."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import tiny_model
from store_helpers import built, model, story  # noqa: F401  (fixtures)

from storage import CacheCorrupt, Store, StoreError
from storage import db as dbmod


def add(store, text, name="book.txt"):
    return store.add_document(text.encode(), name, text, "text", [0])


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_round_trip_is_bit_exact_and_indexed(tmp_path, model, built):
    text, cache = built
    store = Store(tmp_path / "store")
    doc = add(store, text)
    row = store.save_cache(doc["id"], cache)
    assert row["status"] == "ready" and row["bytes"] == (store.root / row["file"]).stat().st_size
    assert row["tokens"] == len(cache) and len(row["checksum"]) == 64
    loaded = store.load_cache(row["id"], model=model)
    for name, tensor in cache.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert store.caches(doc["id"])[0]["id"] == row["id"]
    assert not list(store.tmp_dir.iterdir()), "no temp files left"
    assert store.check() == []


def test_same_content_is_stored_once(tmp_path):
    store = Store(tmp_path)
    text = story(5)
    first = add(store, text, "a.txt")
    results = []
    threads = [threading.Thread(target=lambda: results.append(add(store, text, "copy.txt"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r["id"] for r in results} == {first["id"]}
    assert len(store.documents()) == 1
    assert len(list((store.root / "documents").glob("*/*"))) == 1


def test_cache_key_covers_model_settings_and_prompt(tmp_path):
    from storage.store import cache_key

    base = cache_key("doc", "fp", '{"a": 1}', "v1")
    assert (
        len(
            {
                base,
                cache_key("doc2", "fp", '{"a": 1}', "v1"),
                cache_key("doc", "fp2", '{"a": 1}', "v1"),
                cache_key("doc", "fp", '{"a": 2}', "v1"),
                cache_key("doc", "fp", '{"a": 1}', "v2"),
            }
        )
        == 5
    )


def test_delete_document_leaves_nothing_behind(tmp_path, built):
    text, cache = built
    store = Store(tmp_path)
    doc = add(store, text)
    row = store.save_cache(doc["id"], cache)
    conversation = store.add_conversation(doc["id"], row["id"])
    store.save_turn(conversation, row["id"], [{"role": "user", "content": "Who kept the lamp?"}], [])
    assert store.conversation(conversation)["messages"][0]["content"] == "Who kept the lamp?"
    store.delete_document(doc["id"])
    assert store.documents() == [] and store.caches(status=None) == [] and store.conversations(doc["id"]) == []
    assert files_under(store.root / "documents") == [] and files_under(store.root / "caches") == []
    assert store.check() == []


def test_check_finds_and_repairs_orphans_missing_and_corrupt_files(tmp_path, built):
    text, cache = built
    store = Store(tmp_path)
    kept = store.save_cache(add(store, text)["id"], cache)
    missing = store.save_cache(add(store, story(30, "B"))["id"], cache)
    corrupt = store.save_cache(add(store, story(30, "C"))["id"], cache)
    (store.root / missing["file"]).unlink()
    path = store.root / corrupt["file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    (store.root / "caches" / "zz").mkdir()
    (store.root / "caches" / "zz" / "orphan.safetensors").write_bytes(b"x")
    (store.root / "documents" / "ab" / "ab12").mkdir(parents=True)
    (store.root / "documents" / "ab" / "ab12" / "text.txt").write_text("orphan")

    problems = store.check()
    assert sorted(p.kind for p in problems) == ["corrupt-file", "missing-file", "orphan-file", "orphan-file"]
    assert all(str(p) for p in problems)
    repaired = store.check(repair=True)
    assert all(p.repaired for p in repaired)
    assert store.check() == []
    assert [c["id"] for c in store.caches(status=None)] == [kept["id"]]
    assert len(store.documents()) == 3  # documents stay; their caches are rebuilt on next use


@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "deleted", "replaced-by-garbage"])
def test_a_damaged_cache_is_reported_and_marked_for_rebuild(tmp_path, model, built, damage):
    text, cache = built
    store = Store(tmp_path)
    row = store.save_cache(add(store, text)["id"], cache)
    path = store.root / row["file"]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: row["bytes"] // 2])
    elif damage == "flipped-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"\0" * row["bytes"])
    with pytest.raises(CacheCorrupt) as info:
        store.load_cache(row["id"], model=model)
    assert "\n" not in str(info.value) and "marked for rebuild" in str(info.value)
    assert store.get_cache(row["id"])["status"] == "corrupt"
    with pytest.raises(CacheCorrupt, match="needs a rebuild"):
        store.load_cache(row["id"])
    assert store.caches(status="ready") == []


def test_a_cache_of_another_model_is_refused(tmp_path, built):
    text, cache = built
    store = Store(tmp_path)
    row = store.save_cache(add(store, text)["id"], cache)
    with pytest.raises(StoreError, match="not by the loaded model"):
        store.load_cache(row["id"], model=tiny_model("llama", window=1024, seed=3))
    assert store.get_cache(row["id"])["status"] == "ready"  # the cache is fine, just not for this model


def test_migrations_upgrade_an_old_index_in_place(tmp_path):
    db = dbmod.connect(tmp_path / "index.db")
    assert dbmod.migrate(db, target=1) == 1
    db["documents"].insert(
        {
            "id": "abc",
            "title": "old",
            "file_name": "old.txt",
            "kind": "text",
            "pages": 1,
            "page_starts": "[0]",
            "created": 0.0,
        }
    )
    db.close()
    store = Store(tmp_path)
    assert dbmod.schema_version(store.db) == dbmod.SCHEMA_VERSION
    assert store.get_document("abc")["title"] == "old"
    assert store.db["jobs"].exists() and "passages" in store.db["documents"].columns_dict
    assert Store(tmp_path).db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == dbmod.SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_root_follows_homer_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMER_HOME", str(tmp_path / "home"))
    assert Store().root == tmp_path / "home" / "store"


def test_lock_is_exclusive_until_it_expires(tmp_path):
    store = Store(tmp_path)
    assert store.locks.acquire("build:k", "a", ttl=60)
    assert not store.locks.acquire("build:k", "b", ttl=60)
    assert store.locks.acquire("build:k", "a", ttl=60)  # re-entrant for its owner
    store.locks.release("build:k", "a")
    assert store.locks.acquire("build:k", "b", ttl=-1)  # already expired
    assert store.locks.acquire("build:k", "c", ttl=60)


def test_one_active_job_per_build_key(tmp_path):
    store = Store(tmp_path)
    first, created = store.jobs.create("doc", "key", "m")
    again, created_again = store.jobs.create("doc", "key", "m")
    assert created and not created_again and again["id"] == first["id"]
    assert store.jobs.claim(first["id"], "w1", 30) and not store.jobs.claim(first["id"], "w2", 30)
    assert store.jobs.finish(first["id"], "w1", None)
    _, created_new = store.jobs.create("doc", "key", "m")
    assert created_new
