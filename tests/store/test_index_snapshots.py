"""Index snapshots (storage.index_snapshots) in a folder and in a real S3 server (SeaweedFS on
loopback): publish, lose the local disk, restore the same rows; debounced publishing."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from seaweedfs_helpers import s3_location, seaweedfs  # noqa: F401  (fixtures)

from storage.blobs import BlobError, BlobStore
from storage.index_snapshots import SnapshotPublisher, publish_snapshot, restore_newest


@pytest.fixture(params=["folder", "s3"])
def blobs(request, tmp_path):
    if request.param == "folder":
        return BlobStore(tmp_path / "remote")
    return BlobStore(request.getfixturevalue("s3_location"))


def live_index(path: Path) -> sqlite3.Connection:
    """A WAL database that never checkpoints on its own: committed rows stay in the -wal file."""
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE IF NOT EXISTS threads (id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
    db.commit()
    return db


def add_rows(db: sqlite3.Connection, first: int, count: int) -> None:
    db.executemany(
        "INSERT INTO threads VALUES (?, ?, ?)",
        [(i, f"thread {i}", bytes([i % 256]) * 500) for i in range(first, first + count)],
    )
    db.commit()


def rows(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT * FROM threads ORDER BY id").fetchall()


def lose_local_disk(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_publish_then_restore_on_an_empty_disk_gives_the_same_rows(blobs, tmp_path):
    index = tmp_path / "home" / "index.db"
    index.parent.mkdir()
    db = live_index(index)
    add_rows(db, 0, 50)
    assert Path(f"{index}-wal").stat().st_size > 0  # the rows are in the WAL, not yet in index.db
    pointer = publish_snapshot(index, blobs)
    expected = rows(index)
    db.close()
    lose_local_disk(index)
    restored = restore_newest(index, blobs)
    assert restored == {"key": pointer["key"], "restored_from": blobs.location.url}
    assert rows(index) == expected and len(expected) == 50
    with closing(sqlite3.connect(index)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file


def test_restore_never_replaces_a_local_index(blobs, tmp_path):
    index = tmp_path / "index.db"
    db = live_index(index)
    add_rows(db, 0, 3)
    publish_snapshot(index, blobs)
    add_rows(db, 3, 3)
    db.close()
    assert restore_newest(index, blobs) is None
    assert len(rows(index)) == 6


def test_nothing_to_restore_without_a_snapshot(blobs, tmp_path):
    assert restore_newest(tmp_path / "index.db", blobs) is None
    assert not (tmp_path / "index.db").exists()


def test_a_corrupted_newest_snapshot_falls_back_to_the_one_before(blobs, tmp_path):
    index = tmp_path / "index.db"
    db = live_index(index)
    add_rows(db, 0, 5)
    older = publish_snapshot(index, blobs)
    add_rows(db, 5, 5)
    newest = publish_snapshot(index, blobs)
    assert newest["history"] == [older["key"]]
    db.close()
    path = blobs.object_path(newest["key"])
    data = bytearray(blobs.fs.cat_file(path))
    data[200] ^= 0xFF
    blobs.fs.pipe_file(path, bytes(data))
    lose_local_disk(index)
    assert restore_newest(index, blobs)["key"] == older["key"]
    assert len(rows(index)) == 5


def test_no_sound_snapshot_is_a_clear_error(tmp_path):
    blobs = BlobStore(tmp_path / "remote")
    blobs.write_pointer("index", {"key": "d" * 64, "history": []})
    with pytest.raises(BlobError, match="no sound index snapshot"):
        restore_newest(tmp_path / "index.db", blobs)
    assert not (tmp_path / "index.db").exists()


def test_a_lost_databases_leftover_wal_is_not_replayed_into_the_restored_copy(tmp_path):
    blobs = BlobStore(tmp_path / "remote")
    index = tmp_path / "index.db"
    db = live_index(index)
    add_rows(db, 0, 4)
    publish_snapshot(index, blobs)
    db.close()
    index.unlink()
    other = live_index(tmp_path / "other.db")  # a WAL full of another database's pages
    add_rows(other, 100, 40)
    Path(f"{index}-wal").write_bytes(Path(f"{tmp_path / 'other.db'}-wal").read_bytes())
    other.close()
    restore_newest(index, blobs)
    assert [r[0] for r in rows(index)] == [0, 1, 2, 3]


def test_old_snapshots_beyond_keep_are_deleted(tmp_path):
    blobs = BlobStore(tmp_path / "remote")
    index = tmp_path / "index.db"
    db = live_index(index)
    keys = []
    for n in range(5):
        add_rows(db, n, 1)
        keys.append(publish_snapshot(index, blobs, keep=3)["key"])
    db.close()
    assert set(blobs.keys()) == set(keys[-3:])
    assert blobs.read_pointer("index")["history"] == [keys[3], keys[2]]
    assert publish_snapshot(index, blobs, keep=3)["key"] == keys[-1]  # unchanged: nothing new written
    assert set(blobs.keys()) == set(keys[-3:])


def test_the_publisher_debounces_and_publishes_at_shutdown(blobs, tmp_path):
    index = tmp_path / "index.db"
    db = live_index(index)
    add_rows(db, 0, 1)
    publisher = SnapshotPublisher(index, blobs, every_seconds=1.0, poll_seconds=0.05).start()
    try:
        deadline = time.monotonic() + 30
        while publisher.published == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.published == 1  # the first change goes out at once
        started = time.monotonic()
        for n in range(1, 21):  # a burst of twenty commits
            add_rows(db, n, 1)
            publisher.changed()
            time.sleep(0.02)
        burst = time.monotonic() - started
        while publisher.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not publisher.pending()
        assert 1 <= publisher.published - 1 <= 1 + int(burst / 1.0)  # one snapshot per window, not twenty
        before_last = publisher.published
        add_rows(db, 21, 1)  # no changed() call: the WAL file's change is seen
    finally:
        last = publisher.close()
        db.close()
    assert publisher.published == before_last + 1 and publisher.last_error is None
    assert blobs.read_pointer("index")["key"] == last["key"]
    lose_local_disk(index)
    restore_newest(index, blobs)
    assert [r[0] for r in rows(index)] == list(range(22))


def test_a_publish_that_fails_keeps_the_change_pending(tmp_path):
    index = tmp_path / "index.db"
    db = live_index(index)
    add_rows(db, 0, 1)
    db.close()
    remote = tmp_path / "remote"
    remote.write_text("a file where the folder should be")
    publisher = SnapshotPublisher(index, BlobStore(remote), every_seconds=60)
    assert publisher.publish() is None and publisher.pending() and publisher.last_error
    remote.unlink()
    assert publisher.close()["key"] and not publisher.pending()
