"""The store cannot be made to hurt: identifiers never become paths outside it, deletes stay
inside it, poisoned index rows are reported (and repaired) without a crash, a fresh store
opened by many processes at once opens in every one of them, a crash between a cache file's
rename and its row loses nothing, and a dead writer's temp file is stale at once.

Every test runs on a real SQLite store in a temp folder with a "victim" folder beside it
that must survive untouched."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from store_helpers import ROOT, built, model, story, wait_until  # noqa: F401  (fixtures)

from storage import CacheCorrupt, Store, StoreError
from storage.temp_files import stale_temp


@pytest.fixture
def victim(tmp_path):
    """A folder beside the store with a file in it; its listing must never change."""
    folder = tmp_path / "victim"
    (folder / "inner").mkdir(parents=True)
    (folder / "precious.txt").write_text("keep me")
    (folder / "inner" / "text.txt").write_text("keep me too")
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def add(store, text, name="book.txt"):
    return store.add_document(text.encode(), name, text, "text", [0])


def raw_db(store) -> sqlite3.Connection:
    """A plain connection without foreign keys: how an old or hand-edited index got its rows."""
    conn = sqlite3.connect(str(store.index_path), isolation_level=None, timeout=30)
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def bad_ids(store, victim):
    return [
        str(victim),
        "../victim",
        "../../victim",
        "..",
        ".",
        "/",
        str(store.root),
        "",
        "ab/../../victim",
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "a" * 62 + "/.",
        None,
        12,
    ]


def test_document_id_that_is_a_path_never_reaches_the_filesystem(tmp_path, victim):
    store = Store(tmp_path / "store")
    before = snapshot(victim)
    for bad in bad_ids(store, victim):
        with pytest.raises(StoreError) as info:
            store.add_document(None, "x.txt", "hostile text", "text", [0], document_id=bad)
        assert "\n" not in str(info.value)
        assert "not a document id" in str(info.value) or not bad
        with pytest.raises(StoreError):
            store.document_dir(bad)
        with pytest.raises(StoreError):
            store.cache_path(bad)
        with pytest.raises(StoreError):
            store.leaf_states_path(bad)
    assert snapshot(victim) == before
    assert store.documents() == [] and list((store.root / "documents").iterdir()) == []
    assert (store.root / "index.db").exists()


def test_store_root_as_id_cannot_delete_the_store(tmp_path, victim, built):
    text, cache = built
    store = Store(tmp_path / "store")
    other = add(store, story(5, "other user"))
    kept = store.save_cache(other["id"], cache)
    conn = raw_db(store)
    for poisoned in (str(store.root), str(victim), "../victim", ".."):
        conn.execute(
            "INSERT INTO documents (id, title, file_name, kind, pages, page_starts, created) "
            "VALUES (?, 't', 'x.txt', 'text', 1, '[0]', 0)",
            [poisoned],
        )
    conn.close()
    before, other_files = snapshot(victim), snapshot(store.root / "documents")
    for poisoned in (str(store.root), str(victim), "../victim", ".."):
        store.delete_document(poisoned)  # the row goes; no file is touched for it
        assert store.get_document(poisoned) is None
    assert snapshot(victim) == before and snapshot(store.root / "documents") == other_files
    assert (store.root / "index.db").exists() and store.get_document(other["id"]) is not None
    assert store.load_cache(kept["id"]).keys.shape == cache.keys.shape
    assert store.check() == []


def test_delete_never_leaves_the_store(tmp_path, victim, built):
    text, cache = built
    store = Store(tmp_path / "store")
    doc = add(store, text)
    row = store.save_cache(doc["id"], cache)
    outside = os.path.relpath(victim / "precious.txt", store.root)
    conn = raw_db(store)
    conn.execute(
        "UPDATE caches SET file = ?, leaf_states_file = ? WHERE id = ?",
        [outside, str(victim / "inner" / "text.txt"), row["id"]],
    )
    conn.close()
    before = snapshot(victim)
    with pytest.raises(CacheCorrupt, match="not its own file"):
        store.load_cache(row["id"])  # a row naming another path is never read
    with pytest.raises(CacheCorrupt, match="not its own file"):
        store.open_leaf_states(row["id"])
    store.delete_document(doc["id"])
    assert snapshot(victim) == before
    assert store.documents() == [] and store.caches(status=None) == []
    assert [p for p in (store.root / "caches").rglob("*") if p.is_file()] == []


def test_symlinked_document_folder_is_not_followed(tmp_path, victim):
    store = Store(tmp_path / "store")
    text = story(3)
    doc = add(store, text)
    folder = store.root / "documents" / doc["id"][:2] / doc["id"]
    import shutil

    shutil.rmtree(folder)
    folder.symlink_to(victim, target_is_directory=True)  # planted by hand or by an old bug
    before = snapshot(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        store.document_text(doc["id"])  # never reads (or serves) a file from elsewhere
    with pytest.raises(StoreError, match="symbolic link"):
        store.source_path(doc["id"])
    [problem] = store.check()
    assert problem.kind == "bad-file" and "symbolic link" in problem.detail
    store.delete_document(doc["id"])
    assert snapshot(victim) == before and not folder.is_symlink() and not folder.exists()

    # a folder of a new document that is already a link: refused before writing
    again = store.root / "documents" / doc["id"][:2] / doc["id"]
    again.parent.mkdir(exist_ok=True)
    again.symlink_to(victim, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        add(store, text)
    assert snapshot(victim) == before
    # a whole shard that is a link: the check unlinks the link and leaves its target alone
    again.unlink()
    shard = store.root / "documents" / "ff"
    shard.symlink_to(victim, target_is_directory=True)
    problems = store.check(repair=True)
    assert [p.kind for p in problems] == ["orphan-file"] and problems[0].repaired
    assert not shard.is_symlink() and snapshot(victim) == before and store.check() == []


def test_check_survives_poisoned_rows(tmp_path, victim, built, capsys):
    text, cache = built
    store = Store(tmp_path / "store")
    good = add(store, text)
    good_cache = store.save_cache(good["id"], cache)
    conn = raw_db(store)
    for poisoned in (str(store.root), "../victim", None):
        conn.execute(
            "INSERT INTO documents (id, title, file_name, kind, pages, page_starts, created) "
            "VALUES (?, 't', 'x.txt', 'text', 1, '[0]', 0)",
            [poisoned],
        )
    cache_rows = [
        ("../../victim", "caches/../../victim/precious.txt", "ready"),  # id is a path
        ("0" * 32, None, "ready"),  # NULL file
        ("1" * 32, os.path.relpath(victim / "precious.txt", store.root), "ready"),  # file outside the store
        ("2" * 32, str(victim / "precious.txt"), "ready"),  # absolute file
        ("3" * 32, "caches/33/" + "3" * 32 + ".safetensors", None),  # missing columns
        (None, None, None),
    ]
    for key, file, status in cache_rows:
        conn.execute(
            "INSERT INTO caches (id, document_id, file, status) VALUES (?, ?, ?, ?)", [key, "../victim", file, status]
        )
    conn.execute("UPDATE caches SET leaf_states_file = ? WHERE id = ?", [str(victim / "inner"), "1" * 32])
    conn.close()
    before = snapshot(victim)

    from app.cli import main

    assert main(["store", "check", "--store", str(store.root)]) == 1  # reports, no traceback
    out = capsys.readouterr().out
    assert "bad-row" in out and "Traceback" not in out
    problems = store.check()
    assert {p.kind for p in problems} == {"bad-row"}, problems
    assert len(problems) == 3 + len(cache_rows)
    assert all("\n" not in str(p) for p in problems)
    repaired = store.check(repair=True)
    assert repaired and all(p.repaired for p in repaired), repaired
    assert store.check() == []
    assert snapshot(victim) == before
    assert [d["id"] for d in store.documents()] == [good["id"]]
    assert [c["id"] for c in store.caches(status=None)] == [good_cache["id"]]
    assert store.load_cache(good_cache["id"]).keys.shape == cache.keys.shape
    assert main(["store", "check", "--store", str(store.root)]) == 0


def opener_script() -> str:
    return textwrap.dedent("""
        import json, sys, time
        from storage import Store
        print("ready", flush=True)
        plan = json.loads(sys.stdin.readline())
        failures = []
        for i, root in enumerate(plan["roots"]):
            slot = plan["start"] + i * plan["interval"]
            while time.time() < slot:
                time.sleep(0.0005)
            try:
                store = Store(root)
                store.db.execute("SELECT COUNT(*) FROM documents").fetchone()
                store.db.conn.close()
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        print(json.dumps(failures), flush=True)
    """)


@pytest.mark.e2e
def test_fresh_store_opened_by_many_processes(tmp_path):
    """8 processes open the same fresh store at the same instant, 20 times over (160 opens;
    before the fix about 1 in 50 failed with "database is locked")."""
    processes, rounds = 8, 20
    roots = [str(tmp_path / f"store-{i}") for i in range(rounds)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", opener_script()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        plan = json.dumps({"roots": roots, "start": time.time() + 0.5, "interval": 0.4})
        for child in children:
            child.stdin.write(plan + "\n")
            child.stdin.flush()
        failures = []
        for child in children:
            failures += json.loads(child.stdout.readline())
            child.wait(60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert failures == []
    for root in roots:
        store = Store(root)
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        from storage import db as dbmod

        assert store.db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == dbmod.SCHEMA_VERSION


class Killed(BaseException):
    """The process stops here: nothing after this point runs (no except, no row written)."""


def crash_after_rename(monkeypatch):
    import storage.cache_install as install_module

    def crash(folder):
        raise Killed()

    monkeypatch.setattr(install_module, "fsync_dir", crash)  # runs right after the renames, before the row


def test_crash_between_rename_and_row(tmp_path, monkeypatch, model, built):
    text, cache = built
    store = Store(tmp_path / "store")
    doc = add(store, text)
    first = store.save_cache(doc["id"], cache)
    rebuilt = dataclasses.replace(cache, metadata={**cache.metadata, "note": "rebuilt"})  # same key, other bytes
    with monkeypatch.context() as patch:
        crash_after_rename(patch)
        with pytest.raises(Killed):
            store.save_cache(doc["id"], rebuilt)
    row = store.get_cache(first["id"])
    assert row["checksum"] == first["checksum"] and row["pending"]  # the row still describes the old file
    assert row["checksum"] != __import__("storage.files", fromlist=["x"]).sha256_file(store.root / row["file"])

    reopened = Store(store.root)  # the next process
    loaded = reopened.load_cache(first["id"], model=model)  # not "corrupt": the install is completed
    assert loaded.metadata["note"] == "rebuilt" and torch.equal(loaded.keys, cache.keys)
    row = reopened.get_cache(first["id"])
    assert row["status"] == "ready" and row["pending"] is None and row["checksum"] != first["checksum"]
    assert reopened.check() == []

    # a key that had no row yet: the journalled row finishes on the next look-up
    other = add(store, story(30, "second"))
    with monkeypatch.context() as patch:
        crash_after_rename(patch)
        with pytest.raises(Killed):
            store.save_cache(other["id"], cache)
    [pending] = [c for c in store.db["caches"].rows if c["document_id"] == other["id"]]
    assert pending["status"] == "installing"
    problems = Store(store.root).check(repair=True)
    assert [p.kind for p in problems] == ["unfinished-install"] and problems[0].repaired
    assert store.get_cache(pending["id"])["status"] == "ready"
    assert store.load_cache(pending["id"], model=model).keys.shape == cache.keys.shape

    # a sound cache file with no row at all (an older writer, or the row lost): indexed again
    store.db.execute("DELETE FROM caches WHERE id = ?", [pending["id"]])
    [problem] = store.check()
    assert problem.kind == "unindexed-cache" and not problem.repaired
    assert (store.root / problem.path).exists()  # reported, never removed as an orphan
    [problem] = store.check(repair=True)
    assert problem.repaired and store.check() == []
    assert store.load_cache(pending["id"], model=model).keys.shape == cache.keys.shape


def test_an_install_killed_before_its_rename_keeps_the_old_cache(tmp_path, monkeypatch, model, built):
    text, cache = built
    store = Store(tmp_path / "store")
    doc = add(store, text)
    first = store.save_cache(doc["id"], cache)
    import storage.cache_install as install_module

    real_replace = os.replace

    def crash_on_cache_rename(src, dst):
        if str(dst).endswith(".safetensors") and "caches" in str(dst):
            raise Killed()
        return real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(install_module.os, "replace", crash_on_cache_rename)
        with pytest.raises(Killed):
            store.save_cache(doc["id"], dataclasses.replace(cache, metadata={**cache.metadata, "note": "x"}))
    assert store.load_cache(first["id"], model=model).metadata.get("note") is None
    assert store.check() == []


DEAD_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from storage.files import atomic_output
    root = Path(sys.argv[1])
    with atomic_output(root / "tmp" / "staged.safetensors", root / "tmp") as out:
        out.write(b"x" * (1 << 20))
        out.flush()
        print("writing", flush=True)
        time.sleep(600)
""")


@pytest.mark.e2e
def test_dead_writers_temp_file_is_stale_at_once(tmp_path, victim):
    store = Store(tmp_path / "store")
    writer = subprocess.Popen(
        [sys.executable, "-c", DEAD_WRITER, str(store.root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        [temp] = wait_until(lambda: list(store.tmp_dir.iterdir()), timeout=60, what="the temp file")
        assert f"-{writer.pid}." in temp.name
        assert not stale_temp(temp) and store.check() == []  # a live writer's file is left alone
        writer.kill()
        wait_until(lambda: not _running(writer.pid), timeout=30, what="the writer to stop")
        assert stale_temp(temp)  # a zombie is no writer either
        writer.wait()
        assert stale_temp(temp)
        [problem] = store.check()
        assert problem.kind == "stale-temp" and problem.path == f"tmp/{temp.name}"
        [problem] = store.check(repair=True)
        assert problem.repaired and not temp.exists() and store.check() == []
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    # the engine's own temp names carry the writer too (HomerCache.save)
    from homer.cache import writer_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = writer_tag().rsplit("-", 1)[0] + f"-{dead.pid}"
    leftover = store.tmp_dir / f".abc.safetensors.{tag}.k2j4_x.tmp"
    leftover.write_bytes(b"\0" * 1024)
    assert stale_temp(leftover)
    assert store.remove_stale_temp_files() == 1 and not leftover.exists()
    mine = store.tmp_dir / f".abc.safetensors.{writer_tag()}.k2j4_x.tmp"
    mine.write_bytes(b"\0")
    assert not stale_temp(mine)  # this process is alive


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_job_row_naming_a_path_outside_the_uploads_is_never_read_or_deleted(tmp_path):
    """A poisoned job row (an old index, a hand edit) whose upload names a file outside the
    store: the worker fails the job in one line, reads nothing and deletes nothing."""
    from app import tasks

    store = Store(tmp_path / "store")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("../victim.txt", str(victim), "uploads/../../victim.txt", "index.db"):
        with pytest.raises(StoreError):
            store.upload_path(name)
    job, _ = store.jobs.create("a" * 64, "k" * 32, "embedded", upload="../victim.txt", file_name="victim.txt")
    tasks._drop_upload(store, job)
    with pytest.raises(StoreError):
        tasks._ingest_upload(store, job, None)
    assert victim.read_text() == "keep me" and (store.root / "index.db").exists()


def test_like_wildcards_never_match_in_the_store(tmp_path):
    store = Store(tmp_path / "store")
    store.add_document(b"hello there", "a.txt", "hello there", "text")
    for ref in ("%", "_", "%%", "_%"):
        with pytest.raises(StoreError):
            store.document(ref)
    assert store.document(store.documents()[0]["id"][:6])["file_name"] == "a.txt"
