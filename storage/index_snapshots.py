"""The SQLite index published to a blob location as snapshots, and restored from the newest.

The live index stays on local disk (:mod:`storage.filesystems`). A snapshot is a consistent
copy made with SQLite's online backup API (a read transaction: writers go on, WAL content
not yet checkpointed included) into a temp file, switched to ``journal_mode=DELETE`` so it is
one self-contained file, checked (``PRAGMA quick_check``) and stored as a new immutable blob
(:class:`storage.blobs.BlobStore`). Then the small pointer object ``pointers/<name>`` is
replaced whole; it names the newest snapshot and a few before it::

    {"key": "<sha256>", "bytes": 123, "created": 1765000000.0, "host": "…", "history": ["<older>", …]}

:class:`SnapshotPublisher` publishes in a background thread at most every ``every_seconds``
after a change (a :meth:`~SnapshotPublisher.changed` call, or the database or its WAL file
seen modified) and once more at :meth:`~SnapshotPublisher.close`. :func:`restore_newest`
puts the newest sound snapshot in place at start when the local index is missing — never
over an existing one. A crash loses at most the changes since the last snapshot.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

from .blobs import BlobCorrupt, BlobError, BlobStore
from .files import fsync_dir, host_name

log = logging.getLogger(__name__)

POINTER = "index"
KEEP = 3
SIDE_FILES = ("-wal", "-shm", "-journal")


def snapshot_to_file(db_path: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write a consistent copy of the database at ``db_path`` to ``target`` (a new file) with
    the online backup API; the copy is in rollback-journal mode and passes ``quick_check``."""
    target = Path(target)
    with (
        closing(sqlite3.connect(f"file:{Path(db_path).as_posix()}?mode=ro", uri=True, timeout=30)) as source,
        closing(sqlite3.connect(target)) as copy,
    ):
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
        _check_database(copy, target)
    return target


def _check_database(db: sqlite3.Connection, path: Path) -> None:
    try:
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BlobCorrupt(f"the snapshot {path.name} is not a sound SQLite database: {exc}") from exc
    if verdict != "ok":
        raise BlobCorrupt(f"the snapshot {path.name} failed SQLite's check: {verdict}")


def publish_snapshot(db_path: str | os.PathLike, blobs: BlobStore, name: str = POINTER, keep: int = KEEP) -> dict:
    """Snapshot the database at ``db_path``, store it as a blob and point ``pointers/<name>``
    at it; the pointer's previous snapshots beyond ``keep`` are deleted. Returns the pointer.
    A snapshot equal to the newest one writes nothing."""
    db_path = Path(db_path)
    temp = db_path.with_name(f".{db_path.name}.snapshot-{uuid.uuid4().hex}")
    try:
        snapshot_to_file(db_path, temp)
        size = temp.stat().st_size
        key = blobs.put(temp)
    finally:
        temp.unlink(missing_ok=True)
    previous = _read_pointer(blobs, name)
    if previous is not None and previous.get("key") == key:
        return previous
    history = [previous["key"], *previous.get("history", [])] if previous else []
    history = [k for k in dict.fromkeys(history) if isinstance(k, str) and k != key]
    pointer = {"key": key, "bytes": size, "created": time.time(), "host": host_name(), "history": history[: keep - 1]}
    blobs.write_pointer(name, pointer)
    for old in history[keep - 1 :]:
        try:
            blobs.delete(old)
        except BlobError as exc:  # a leftover snapshot costs space only
            log.warning("could not delete the old index snapshot %s: %s", old[:12], exc)
    return pointer


def _read_pointer(blobs: BlobStore, name: str) -> dict | None:
    try:
        return blobs.read_pointer(name)
    except BlobCorrupt as exc:
        log.warning("%s; a new snapshot replaces it", exc)
        return None


def restore_newest(db_path: str | os.PathLike, blobs: BlobStore, name: str = POINTER) -> dict | None:
    """When no database exists at ``db_path``, put the newest sound snapshot there (a damaged
    or missing one is skipped for the one before it) and return its pointer entry
    (``{"key", "restored_from"}``); None when a local database exists or no snapshot does.
    Leftover ``-wal``/``-shm``/``-journal`` files of a lost database are removed first: SQLite
    would otherwise replay them into the restored copy."""
    db_path = Path(db_path)
    if db_path.exists():
        return None
    pointer = _read_pointer(blobs, name)
    if not pointer or not isinstance(pointer.get("key"), str):
        return None
    db_path.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for key in [pointer["key"], *pointer.get("history", [])]:
        temp = db_path.with_name(f".{db_path.name}.restore-{uuid.uuid4().hex}")
        try:
            blobs.download(key, temp)
            with closing(sqlite3.connect(temp)) as db:
                _check_database(db, temp)
            for suffix in SIDE_FILES:
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            if db_path.exists():
                return None  # another opener restored or made it meanwhile: theirs stands
            os.replace(temp, db_path)
            fsync_dir(db_path.parent)
            log.info("restored the index from snapshot %s (%s)", key[:12], blobs.location.url)
            return {"key": key, "restored_from": blobs.location.url}
        except (BlobError, sqlite3.DatabaseError) as exc:
            problems.append(f"{key[:12]}: {exc}")
            log.warning("index snapshot %s not restored: %s", key[:12], exc)
        finally:
            temp.unlink(missing_ok=True)
    raise BlobError(f"no sound index snapshot at {blobs.location.url}: " + "; ".join(problems))


def _change_signature(db_path: Path) -> tuple:
    """(mtime, size) of the database and its WAL: a commit changes one of them."""
    signature = []
    for path in (db_path, Path(f"{db_path}-wal")):
        try:
            st = path.stat()
            signature.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            signature.append(None)
    return tuple(signature)


class SnapshotPublisher:
    """Publishes the index at ``db_path`` to ``blobs`` in a background thread: once when
    started, then at most every ``every_seconds`` after a change, and at :meth:`close` (see
    the module docstring). A snapshot equal to the published one writes nothing.

        publisher = SnapshotPublisher(index_path, blobs, every_seconds=30).start()
        ...                                  # writes; publisher.changed() after each is optional
        publisher.close()                    # the last snapshot, then the thread stops
    """

    def __init__(
        self,
        db_path: str | os.PathLike,
        blobs: BlobStore,
        every_seconds: float = 30.0,
        name: str = POINTER,
        poll_seconds: float | None = None,
    ):
        self.db_path = Path(db_path)
        self.blobs = blobs
        self.every_seconds = float(every_seconds)
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(5.0, max(0.05, self.every_seconds / 4))
        self.name = name
        self.published = 0
        self.last_pointer: dict | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._publish_lock = threading.Lock()
        self._dirty = False
        self._last_publish = 0.0
        self._seen: tuple | None = None  # nothing published yet: the index as it is goes out first
        self._thread: threading.Thread | None = None

    def start(self) -> SnapshotPublisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="index-snapshots", daemon=True)
            self._thread.start()
        return self

    def changed(self) -> None:
        """Note a change to the index (it is published within ``every_seconds``)."""
        self._dirty = True
        self._wake.set()

    def publish(self) -> dict | None:
        """Publish now (whatever the timer says); returns the pointer, None on failure (the
        error is logged and kept in :attr:`last_error`; the change stays pending)."""
        with self._publish_lock:
            signature = _change_signature(self.db_path)
            self._dirty = False
            try:
                pointer = publish_snapshot(self.db_path, self.blobs, self.name)
            except (BlobError, sqlite3.Error, OSError) as exc:
                self._dirty = True
                self.last_error = str(exc)
                log.warning("the index snapshot was not published: %s", exc)
                return None
            self._seen, self._last_publish = signature, time.monotonic()
            self.last_pointer, self.last_error = pointer, None
            self.published += 1
            return pointer

    def pending(self) -> bool:
        """Whether a change has not been published yet."""
        return self._dirty or _change_signature(self.db_path) != self._seen

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            wait = self._last_publish + self.every_seconds - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            if self.pending():
                self.publish()

    def close(self) -> dict | None:
        """Stop the thread and publish a last snapshot when anything changed since the last
        one. Returns the newest pointer this publisher wrote (or None)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.db_path.exists() and self.pending():
            self.publish()
        return self.last_pointer

    def __enter__(self) -> SnapshotPublisher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
