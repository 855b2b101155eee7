"""The store: documents by content hash, cache files with checksums, conversations, all
indexed in one SQLite file under a root folder.

Layout under the root::

    index.db                         the SQLite index (WAL); index.db.setup-lock: openers take turns
    documents/ab/<sha256>/source.pdf the uploaded bytes, text.txt the extracted text
    caches/cd/<key>.safetensors      HOMER caches (the engine's safetensors format)
    caches/cd/<key>.leaves.safetensors  optional leaf states of a cache, for deep reads
    tmp/                             temp files named after their writer (host-pid)
    uploads/                         uploads waiting for ingest by a worker
    checkpoints/<key>/               a running (or stopped) build's checkpoints, build.json
                                     names its document; removed when the cache is indexed
    checkpoint.key                   the store's secret the checkpoints are stamped with (mode
                                     0600, made once): a forged checkpoint is not resumed from

No identifier becomes a path unless it has its exact form (:mod:`storage.ids`: a document id
is 64 lowercase hex digits, a cache key 32), every path is proven to lie inside the root with
no symbolic link on the way, and a row's ``file`` column is used only when it names the row's
own place. A cache file is checked for structure (:meth:`HomerCache.load`) before it is
indexed and whenever it is loaded or checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from homer.cache import CacheMismatchError, HomerCache

from . import db as dbmod
from .errors import CacheCorrupt, CacheExists, StoreError
from .ids import check_cache_key, check_document_id, check_upload_name, inside, is_cache_key, is_document_id, is_link, remove_file, remove_tree

LEAF_STATES_FORMAT = "homer-leaf-states"  # homer.leaf_states.FORMAT
from .files import fsync_dir, host_name, install_file, owner_alive, owner_token, sha256_file, write_bytes_atomic
from .jobs import Jobs
from .locks import Locks

STALE_TEMP_SECONDS = 3600.0
CHECKPOINT_INFO = "build.json"
CHECKPOINT_SECRET = "checkpoint.key"
SECRET_BYTES = 32


def stale_checkpoint_seconds() -> float:
    """A stopped build's checkpoints are kept this long for a retry to resume from
    (``HOMER_CHECKPOINT_MAX_AGE_HOURS``, 24) before :meth:`Store.check` calls them stale."""
    return float(os.environ.get("HOMER_CHECKPOINT_MAX_AGE_HOURS", "24")) * 3600.0


def default_root() -> Path:
    """``homer_home() / "store"`` (``HOMER_HOME`` respected, ``/data`` on a Space)."""
    from homer.paths import homer_home

    return homer_home() / "store"


def cache_key(document_id: str, model_fingerprint: str, settings_json: str, prompt_version: str) -> str:
    """What identifies a cache: document content hash, model fingerprint, HOMER settings and
    prompt template version."""
    material = json.dumps([document_id, model_fingerprint, settings_json, prompt_version])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def cache_file_metadata(path: str | os.PathLike) -> dict:
    """The string metadata of a safetensors cache file, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


@dataclass
class Problem:
    """One finding of :meth:`Store.check`."""

    kind: str      # orphan-file | missing-file | corrupt-file | stale-temp | missing-document-file
    #                | bad-row | bad-file | unindexed-cache | unfinished-install | stale-checkpoint
    path: str
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.path} — {self.detail}{' (repaired)' if self.repaired else ''}"


class Store:
    """Documents, caches, conversations and jobs of one store root."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("documents", "caches", "tmp", "uploads"):
            (self.root / name).mkdir(exist_ok=True)
        self.index_path = self.root / "index.db"
        self._local = threading.local()
        self._local.db = dbmod.open_index(self.index_path)  # several processes may open a fresh store at once
        self.jobs = Jobs(self)
        self.locks = Locks(self)
        self._checkpoint_secret: bytes | None = None

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def db(self):
        """The calling thread's connection to the index (SQLite connections are per thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = dbmod.connect(self.index_path)
        return db

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    # --- documents ---------------------------------------------------------------------
    def document_dir(self, document_id: str) -> Path:
        """The folder of a document: only for a well-formed id (64 lowercase hex digits), and
        only when no folder on the way is a symbolic link — else :class:`StoreError`."""
        check_document_id(document_id)
        return inside(self.root, self.root / "documents" / document_id[:2] / document_id)

    def add_document(self, data: bytes | None, file_name: str, text: str, kind: str, page_starts: list[int] | None = None,
                     token_count: int | None = None, title: str | None = None,
                     passages: list | None = None, document_id: str | None = None, size: int | None = None,
                     locations: list[str] | None = None) -> dict:
        """Store an uploaded document once per content (sha256 of ``data``); returns its row.
        Uploading the same bytes again returns the existing row. ``data`` may be None for a
        document imported without its source file: then ``document_id`` is required."""
        if data is not None:
            document_id = hashlib.sha256(data).hexdigest()
        elif not document_id:
            raise StoreError("a document needs its bytes or its content hash")
        check_document_id(document_id)  # before anything is looked up or written
        if locations is not None and len(locations) != len(page_starts or [0]):
            raise StoreError(f"{len(locations)} section labels for {len(page_starts or [0])} sections")
        existing = self.get_document(document_id)
        if existing is not None:
            return existing
        folder = self.document_dir(document_id)
        if is_link(folder):
            raise StoreError(f"the folder of document {document_id[:12]} is a symbolic link; refused")
        if data is not None:
            suffix = Path(file_name).suffix.lower()[:16]
            write_bytes_atomic(data, folder / f"source{suffix}", self.tmp_dir)
        write_bytes_atomic(text.encode("utf-8"), folder / "text.txt", self.tmp_dir)
        row = {
            "id": document_id, "title": title or Path(file_name).stem, "file_name": Path(file_name).name,
            "kind": kind, "pages": len(page_starts or [0]), "token_count": token_count, "chars": len(text),
            "bytes": len(data) if data is not None else size, "page_starts": json.dumps(page_starts or [0]),
            "passages": json.dumps(passages) if passages is not None else None, "created": dbmod.now(),
            "locations": json.dumps(list(locations)) if locations is not None else None,
        }
        self.db["documents"].insert(row, ignore=True)  # a concurrent writer may have won: same content
        return self.get_document(document_id)

    def set_passages(self, document_id: str, passages: list) -> None:
        """Record a stored document's token-counted passages (a document stored before they
        were counted: askable first, :mod:`app.read_ahead`)."""
        self.db["documents"].update(document_id, {"passages": json.dumps(passages)})

    def get_document(self, document_id: str) -> dict | None:
        rows = list(self.db["documents"].rows_where("id = ?", [document_id]))
        return rows[0] if rows else None

    def document(self, ref: str) -> dict:
        """A document by id, unique id prefix, file name or title; :class:`StoreError` if none.
        The prefix is compared as a string (not LIKE: ``%`` or ``_`` in ``ref`` match nothing)."""
        doc = self.get_document(ref)
        if doc is not None:
            return doc
        if not isinstance(ref, str) or not ref:
            raise StoreError(f"no document {ref!r} in the store")
        rows = list(self.db["documents"].rows_where(
            "substr(id, 1, length(:ref)) = :ref OR file_name = :ref OR title = :ref", {"ref": ref}))
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise StoreError(f"no document {ref!r} in the store")
        raise StoreError(f"{ref!r} matches {len(rows)} documents; use more of the id")

    def documents(self) -> list[dict]:
        return list(self.db["documents"].rows_where(order_by="created"))

    def document_text(self, document_id: str) -> str:
        path = self._document_file(document_id, "text.txt")
        return path.read_text(encoding="utf-8")

    def source_path(self, document_id: str) -> Path | None:
        folder = self._document_file(document_id, "text.txt").parent
        files = sorted(p for p in folder.glob("source*") if not is_link(p))
        return files[0] if files else None

    def _document_file(self, document_id: str, name: str) -> Path:
        """A file in a document's folder, refused when the folder or the file is a link (a
        planted link would make the store read or serve a file from elsewhere)."""
        folder = self.document_dir(document_id)
        if is_link(folder) or is_link(folder / name):
            raise StoreError(f"the files of document {document_id[:12]} are symbolic links; refused")
        return folder / name

    def page_starts(self, document_id: str) -> list[int]:
        return json.loads(self.document(document_id)["page_starts"] or "[0]")

    def location_map(self, document_id: str):
        """The document's :class:`homer.reading.locations.LocationMap` (pages, or labelled sections)."""
        from homer.reading.locations import LocationMap

        doc = self.document(document_id)
        labels = json.loads(doc["locations"]) if doc.get("locations") else None
        return LocationMap.of(json.loads(doc["page_starts"] or "[0]"), labels)

    def delete_document(self, document_id: str) -> None:
        """Remove a document with its caches, conversations and finished jobs (rows and files).
        Only the document's own folder is removed, after proving it lies inside the store (a
        link is unlinked, never followed); a row whose id is not a document id (an old,
        poisoned index) loses its rows and touches no file."""
        doc = self.document(document_id)
        document_id = doc["id"]
        for cache in self.caches(document_id, status=None):
            self.delete_cache(cache["id"])
        self._delete_document_rows(document_id)
        for key, info in self.checkpoint_folders():
            if info.get("document_id") == document_id:
                self.drop_checkpoints(key)
        if not is_document_id(document_id):
            return
        folder = self.document_dir(document_id)
        remove_tree(self.root, folder)
        parent = folder.parent
        try:
            if not is_link(parent) and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        except OSError:
            pass  # a concurrent upload of a document of the same shard

    def _delete_document_rows(self, document_id) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM conversations WHERE document_id = ?", [document_id])
            self.db.execute("DELETE FROM document_owners WHERE document_id = ?", [document_id])
            self.db.execute("DELETE FROM document_shares WHERE document_id = ?", [document_id])
            from . import passages
            passages.delete(self.db, document_id)  # its passage index, FTS rows included
            self.db.execute("UPDATE jobs SET state = 'failed', error = 'the document was deleted', finished = ? "
                            "WHERE document_id = ? AND state IN ('queued', 'running')", [dbmod.now(), document_id])
            self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])

    # --- caches ------------------------------------------------------------------------
    def cache_path(self, key: str) -> Path:
        """Where cache ``key`` lives: only for a well-formed key (32 lowercase hex digits)."""
        check_cache_key(key)
        return inside(self.root, self.root / "caches" / key[:2] / f"{key}.safetensors")

    def staging_path(self, suffix: str = ".safetensors") -> Path:
        """A fresh temp path in the store (same file system, named after its writer so a
        crashed writer's leftovers are found by :meth:`check`)."""
        return self.tmp_dir / f"{uuid.uuid4().hex}.{owner_token().replace(':', '-')}{suffix}"

    def save_cache(self, document_id: str, cache: HomerCache, build_seconds: float | None = None,
                   leaf_states: str | os.PathLike | None = None) -> dict:
        """Write ``cache`` for a stored document: temp name, fsync, rename into place, then the
        row (with checksum and bytes) is marked ready. Returns the row.

        ``leaf_states``: a leaf-state file written by the same build (``build_document_cache(...,
        leaf_states=path)``, best at :meth:`staging_path`), moved next to the cache and indexed
        with its own checksum. Without it, leaf states already stored for this cache key stay
        (they do not change the cache, so they are still valid)."""
        self.document(document_id)
        staged = self.staging_path()
        try:
            cache.save(staged)  # the engine's own temp → fsync → rename
            return self._install_cache(document_id, staged, build_seconds, leaf_states)
        finally:
            staged.unlink(missing_ok=True)

    def install_cache_file(self, document_id: str, source, build_seconds: float | None = None,
                           replace: bool = True) -> dict:
        """Install a cache file given as a path or a binary file object (bundle import).
        With ``replace=False`` a cache already stored under the same key (row or file) is
        never touched: :class:`CacheExists` is raised instead, also to the loser of two
        simultaneous installs of one key."""
        self.document(document_id)
        staged = self.staging_path()
        try:
            install_file(source, staged, self.tmp_dir)
            return self._install_cache(document_id, staged, build_seconds, replace=replace)
        finally:
            staged.unlink(missing_ok=True)

    def _install_cache(self, document_id: str, staged: Path, build_seconds: float | None,
                       leaf_states: str | os.PathLike | None = None, replace: bool = True) -> dict:
        try:
            meta = cache_file_metadata(staged)
        except Exception as exc:
            raise StoreError(f"not a readable cache file: {exc}") from exc
        if meta.get("format") != "homer-cache":
            raise StoreError("not a HOMER cache file")
        key = cache_key(document_id, meta.get("model_fingerprint", ""), meta.get("settings", "{}"),
                        meta.get("prompt_version", ""))
        check_cache_file(staged, meta.get("model_fingerprint", ""))  # inconsistent tensors are never indexed
        leaves = None
        if leaf_states is not None:  # checked before anything is moved into place
            leaves = Path(leaf_states)
            _check_leaf_states_file(leaves, meta)
            leaves_checksum, leaves_size = sha256_file(leaves), leaves.stat().st_size
        checksum, size = sha256_file(staged), staged.stat().st_size
        target = self.cache_path(key)
        leaves_target = self.leaf_states_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if build_seconds is None:
            build_seconds = float(meta.get("build_seconds") or 0.0)
        stamp = dbmod.now()
        row = {
            "id": key, "document_id": document_id, "model_fingerprint": meta.get("model_fingerprint", ""),
            "model_name": meta.get("model_name", ""), "settings": meta.get("settings", "{}"),
            "prompt_version": meta.get("prompt_version", ""), "file": str(target.relative_to(self.root)),
            "bytes": size, "checksum": checksum, "tokens": _cache_tokens(staged), "build_seconds": build_seconds,
            "status": "ready", "error": None, "created": stamp, "updated": stamp,
        }
        if leaves is not None:
            row.update(leaf_states_file=str(leaves_target.relative_to(self.root)), leaf_states_bytes=leaves_size,
                       leaf_states_checksum=leaves_checksum)
        if replace:
            self._journal_install(row)  # a crash after the rename below leaves the row able to finish
            os.replace(staged, target)
        else:
            _link_new(staged, target, key, self.get_cache(key) is not None)
        if leaves is not None:
            os.replace(leaves, leaves_target)
        fsync_dir(target.parent)
        if replace:
            self.db["caches"].upsert({**row, "pending": None}, pk="id")  # columns not given (earlier leaf states) are kept
        else:  # the file was linked in new; a build of the same key may still have won the row
            try:
                self.db["caches"].insert(row, pk="id")
            except sqlite3.IntegrityError:
                raise CacheExists(f"cache {key[:12]} is already in the store") from None
        self.drop_checkpoints(key)  # the cache is indexed: a build of it has nothing left to resume
        return self.get_cache(key)

    def _journal_install(self, row: dict) -> None:
        """Record, before a cache file is renamed into place, the row it will get (column
        ``pending``). A writer killed between the rename and the row leaves a file that
        matches the journal, and :meth:`_finish_install` completes the row instead of calling a
        good cache corrupt. A key without a row gets one in state ``installing``."""
        pending = json.dumps({**row, "owner": owner_token()})
        fresh = {**row, "status": "installing", "pending": pending}
        columns = ", ".join(fresh)
        marks = ", ".join("?" for _ in fresh)
        self.db.execute(f"INSERT INTO caches ({columns}) VALUES ({marks}) "
                        "ON CONFLICT(id) DO UPDATE SET pending = excluded.pending", list(fresh.values()))

    def _finish_install(self, row: dict, checksum: str | None = None) -> dict | None:
        """Complete an install whose writer stopped after renaming its file: when the file in
        place is the journalled one (size and sha256; ``checksum`` if already computed), the
        journalled row is written and returned. None when there is nothing to finish."""
        try:
            pending = json.loads(row.get("pending") or "null")
            path = self._row_file(row)
            if not isinstance(pending, dict) or pending.get("id") != row["id"] or not path.is_file():
                return None
            if path.stat().st_size != pending.get("bytes"):
                return None
            if (checksum or sha256_file(path)) != pending.get("checksum"):
                return None
        except (StoreError, ValueError, OSError):
            return None
        pending.pop("owner", None)
        update = {k: v for k, v in pending.items() if k in row}
        if pending.get("leaf_states_file"):  # the leaves were renamed after the cache: maybe not
            leaves = self.leaf_states_path(row["id"])
            if not leaves.is_file() or is_link(leaves) or sha256_file(leaves) != pending.get("leaf_states_checksum"):
                for column in ("leaf_states_file", "leaf_states_bytes", "leaf_states_checksum"):
                    update.pop(column, None)
        update.update(status="ready", error=None, pending=None, updated=dbmod.now())
        self.db["caches"].update(row["id"], update)
        return self.get_cache(row["id"])

    def leaf_states_path(self, key: str) -> Path:
        check_cache_key(key)
        return inside(self.root, self.root / "caches" / key[:2] / f"{key}.leaves.safetensors")

    def upload_path(self, name: str) -> Path:
        """The file of a job's upload (``uploads/<document id><suffix>``), proven to be inside
        the store's uploads folder; :class:`StoreError` for any other name."""
        path = inside(self.root, self.root / check_upload_name(name))
        if is_link(path):
            raise StoreError(f"the upload {name[:40]!r} is a symbolic link; refused")
        return path

    def cache_file(self, row: dict) -> Path:
        """The cache file of a cache row, proven to be its own place in the store (for readers
        such as the bundle export); :class:`StoreError` when the row names anything else."""
        return self._row_file(row)

    def _row_file(self, row: dict, column: str = "file") -> Path:
        """The file a cache row names, proven to be the row's own place in the store: a row
        (from an old index, or written by hand) naming any other path is refused, so no path
        read from the index is ever opened, replaced or deleted outside the store."""
        key = check_cache_key(row.get("id"))
        expected = self.cache_path(key) if column == "file" else self.leaf_states_path(key)
        recorded = row.get(column)
        if not isinstance(recorded, str) or Path(recorded).as_posix() != expected.relative_to(self.root).as_posix():
            raise StoreError(f"cache row {key[:12]} names {str(recorded)[:40]!r}, not its own file")
        if is_link(expected):
            raise StoreError(f"the file of cache {key[:12]} is a symbolic link; refused")
        return expected

    def open_leaf_states(self, key: str, expected_fingerprint: str | None = None, verify: bool = True) -> Path | None:
        """The path of the cache's leaf-state file after checking it (size, ``verify``: sha256,
        format and model fingerprint), or None when the cache has no leaf states. A missing or
        damaged file raises :class:`CacheCorrupt` (one line) and is dropped from the index —
        the cache itself stays ready; reading the document again with leaf states restores it."""
        row = self.get_cache(key)
        if row is None:
            raise StoreError(f"no cache {key} in the store")
        if not row.get("leaf_states_file"):
            return None
        if expected_fingerprint is not None and row["model_fingerprint"] != expected_fingerprint:
            raise StoreError(f"cache {key[:12]} was built by model {row['model_name'] or '?'} "
                             f"(fingerprint {row['model_fingerprint'][:12]}), not by the loaded model")
        reason = None
        try:
            path = self._row_file(row, "leaf_states_file")
        except StoreError as exc:
            path, reason = None, str(exc)
        if reason is not None:
            pass
        elif not path.exists():
            reason = "the leaf-state file is missing"
        elif path.stat().st_size != row["leaf_states_bytes"]:
            reason = (f"the leaf-state file has {path.stat().st_size} bytes, {row['leaf_states_bytes']} were written "
                      "(truncated?)")
        elif verify and sha256_file(path) != row["leaf_states_checksum"]:
            reason = "the leaf-state file's checksum does not match (altered or corrupt)"
        else:
            try:
                _check_leaf_states_file(path, {k: row[k] for k in ("model_fingerprint", "settings", "prompt_version")})
            except StoreError as exc:
                reason = str(exc)
        if reason is not None:
            self.drop_leaf_states(key)
            raise CacheCorrupt(f"leaf states of cache {key[:12]}: {reason}; dropped (read the document again "
                               "with leaf states to restore them)")
        return path

    def drop_leaf_states(self, key: str) -> None:
        """Delete a cache's leaf-state file and its columns (the cache stays)."""
        row = self.get_cache(key)
        if row is None or not row.get("leaf_states_file"):
            return
        self.db.execute("UPDATE caches SET leaf_states_file = NULL, leaf_states_bytes = NULL, "
                        "leaf_states_checksum = NULL WHERE id = ?", [key])
        if is_cache_key(key):
            try:  # only the key's own place, proven inside the store; never the path a row names
                remove_file(self.root, self.leaf_states_path(key))
            except StoreError:
                pass

    def get_cache(self, key: str) -> dict | None:
        """The row of cache ``key`` (None if none). An install whose writer stopped after
        renaming its file into place is completed here (see :meth:`_journal_install`)."""
        rows = list(self.db["caches"].rows_where("id = ?", [key]))
        row = rows[0] if rows else None
        if row is not None and row.get("pending") and row.get("status") != "ready":
            row = self._finish_install(row) or row
        return row

    def caches(self, document_id: str | None = None, status: str | None = "ready", model_fingerprint: str | None = None,
               settings: str | None = None, prompt_version: str | None = None) -> list[dict]:
        """Cache rows, newest first, filtered by any of the key's parts."""
        where, args = [], []
        for column, value in (("document_id", document_id), ("status", status), ("model_fingerprint", model_fingerprint),
                              ("settings", settings), ("prompt_version", prompt_version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        return list(self.db["caches"].rows_where(" AND ".join(where) or None, args, order_by="updated DESC"))

    def mark_corrupt(self, key: str, reason: str) -> None:
        """Flag a cache for rebuild; it is never loaded again as it is."""
        self.db.execute("UPDATE caches SET status = 'corrupt', error = ?, updated = ? WHERE id = ?",
                        [reason, dbmod.now(), key])

    def load_cache(self, key: str, model=None, expected_fingerprint: str | None = None, verify: bool = True,
                   device: str = "cpu", model_config=None) -> HomerCache:
        """Load a ready cache (memory-mapped). Checks the file's checksum (``verify``), the
        model fingerprint and the file's structure (:meth:`HomerCache.load`: against the
        model's dimensions when ``model``/``model_config`` is given or the fingerprint was
        computed in this process). A missing, truncated, altered or inconsistent file raises
        :class:`CacheCorrupt` (one line) and the row is marked for rebuild — it is never
        served; a cache of another model raises :class:`StoreError`."""
        row = self.get_cache(key)
        if row is None:
            raise StoreError(f"no cache {key} in the store")
        if row["status"] != "ready":
            raise CacheCorrupt(f"cache {key[:12]} needs a rebuild: {row['error'] or row['status']}")
        if model is not None:
            from homer.fingerprint import model_fingerprint

            expected_fingerprint = model_fingerprint(model)
        if expected_fingerprint is not None and row["model_fingerprint"] != expected_fingerprint:
            raise StoreError(f"cache {key[:12]} was built by model {row['model_name'] or '?'} "
                             f"(fingerprint {row['model_fingerprint'][:12]}), not by the loaded model")
        if model is not None and model_config is None:
            model_config = model.config
        reason = None
        try:
            path = self._row_file(row)
        except StoreError as exc:
            path, reason = None, str(exc)
        if reason is None and not path.exists():
            reason = "the cache file is missing"
        if reason is None:
            size, checksum = path.stat().st_size, None
            if size != row["bytes"]:
                reason = f"the cache file has {size} bytes, {row['bytes']} were written (truncated?)"
            elif verify:
                checksum = sha256_file(path)
                if checksum != row["checksum"]:
                    reason = "the cache file's checksum does not match (altered or corrupt)"
            if reason is not None and row.get("pending"):  # its writer stopped after the rename
                finished = self._finish_install(row, checksum)
                if finished is not None:
                    row, reason = finished, None
        if reason is None:
            try:
                cache = HomerCache.load(path, expected_fingerprint=row["model_fingerprint"], device=device,
                                        config=model_config)
            except CacheMismatchError as exc:
                reason = str(exc).replace(path.name, "the cache file")
        if reason is not None:
            self.mark_corrupt(key, reason)
            raise CacheCorrupt(f"cache {key[:12]} of document {str(row['document_id'])[:12]}: {reason}; "
                               "marked for rebuild")
        return cache

    def delete_cache(self, key: str) -> None:
        row = self.get_cache(key)
        if row is None:
            return
        if is_cache_key(key):  # only the key's own files, proven inside the store; never the path a row names
            for path in (self.cache_path, self.leaf_states_path):
                try:
                    remove_file(self.root, path(key))
                except StoreError:
                    pass  # a linked folder: left alone, reported by check
        # conversations (threads) stay: reopened, one says its cache is gone and starts over
        self.db.execute("DELETE FROM caches WHERE id = ?", [key])
        if is_cache_key(key):
            self.drop_checkpoints(key)

    # --- build checkpoints (homer.checkpoints) ---------------------------------------------
    def checkpoint_dir(self, key: str) -> Path:
        """The checkpoint folder of the build of cache ``key`` (a well-formed key only)."""
        check_cache_key(key)
        return inside(self.root, self.root / "checkpoints" / key)

    def build_checkpoints(self, document_id: str, key: str):
        """The :class:`homer.checkpoints.DirectoryCheckpointer` a build of cache ``key`` of
        document ``document_id`` saves its finished subtrees to — an earlier, stopped build's
        checkpoints included, which the build resumes from. Its temp files are written in the
        store's ``tmp/``, named after their writer; ``build.json`` names the document (for
        :meth:`check` and :meth:`delete_document`). Removed when the cache is indexed."""
        from homer.checkpoints import DirectoryCheckpointer

        check_document_id(document_id)
        secret = self.checkpoint_secret()  # a damaged key file refuses before any folder is made
        folder = self.checkpoint_dir(key)
        if is_link(folder) or is_link(folder.parent):
            raise StoreError(f"the checkpoint folder of cache {key[:12]} is a symbolic link; refused")
        folder.mkdir(parents=True, exist_ok=True)
        info = folder / CHECKPOINT_INFO
        if is_link(info) or self._checkpoint_info(folder).get("document_id") != document_id:
            write_bytes_atomic(json.dumps({"document_id": document_id, "cache_key": key, "created": dbmod.now()}).encode(),
                               info, self.tmp_dir)
        return DirectoryCheckpointer(folder, temp_dir=self.tmp_dir, temp_tag=owner_token().replace(":", "-"),
                                     secret=secret)

    def checkpoint_secret(self) -> bytes:
        """The store's secret that every checkpoint is stamped with (an HMAC,
        :mod:`homer.checkpoints`): ``checkpoint.key`` in the root, outside the checkpoint
        folders, mode 0600. The first caller makes it — random bytes written to a temp file and
        hard-linked into place (created exclusively where the file system has no hard links),
        so of openers racing (processes or machines sharing the store) one wins and every one
        reads the winner's; it is never replaced. A key file that is a
        link or not :data:`SECRET_BYTES` long is refused (:class:`StoreError`; a build then
        goes on without checkpoints) and reported by :meth:`check`, whose repair removes it."""
        if self._checkpoint_secret is None:
            self._checkpoint_secret = _read_or_make_secret(self.root / CHECKPOINT_SECRET, self.tmp_dir)
        return self._checkpoint_secret

    def drop_checkpoints(self, key: str) -> None:
        """Remove the checkpoint folder of cache ``key`` (only that folder, proven inside the store)."""
        try:
            remove_tree(self.root, self.checkpoint_dir(key))
        except (StoreError, OSError):
            pass  # a linked folder: left alone, reported by check

    @staticmethod
    def _checkpoint_info(folder: Path) -> dict:
        info = folder / CHECKPOINT_INFO
        try:
            if is_link(info):
                return {}
            data = json.loads(info.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def checkpoint_folders(self) -> list[tuple[str, dict]]:
        """(cache key, build.json) of every well-formed checkpoint folder."""
        return [(path.name, self._checkpoint_info(path)) for path in _entries(self.root / "checkpoints")
                if is_cache_key(path.name) and path.is_dir() and not is_link(path)]

    def _check_checkpoints(self, repair: bool, problems: list[Problem]) -> None:
        """Checkpoint folders no build will resume from: not a folder of a cache key, of a
        document that is gone, or — with no queued or running job for the document and no
        build holding the key — of a cache already indexed, or untouched for longer than
        :func:`stale_checkpoint_seconds`."""
        try:
            _read_secret(self.root / CHECKPOINT_SECRET)
        except (StoreError, OSError) as exc:
            problems.append(Problem("bad-file", CHECKPOINT_SECRET, f"{_one_line(exc)} (a new one is made)"))
            if repair:
                self._remove(self.root / CHECKPOINT_SECRET, problems)
        folder = self.root / "checkpoints"
        if is_link(folder):
            problems.append(Problem("bad-file", "checkpoints", "the checkpoint folder is a symbolic link"))
            if repair:
                self._remove(folder, problems)
            return
        active = {row[0] for row in self.db.execute(
            "SELECT DISTINCT document_id FROM jobs WHERE state IN ('queued', 'running')").fetchall()}
        max_age = stale_checkpoint_seconds()
        for path in _entries(folder):
            relative = _relative(self.root, path)
            if not is_cache_key(path.name) or is_link(path) or not path.is_dir():
                problems.append(Problem("orphan-file", relative, "not a build's checkpoint folder"))
            else:
                key, info = path.name, self._checkpoint_info(path)
                document_id = info.get("document_id")
                cache = self.get_cache(key)
                age = time.time() - _newest_mtime(path)
                if not info and age < 60:
                    continue  # a build that just made its folder writes build.json next
                if not is_document_id(document_id) or self.get_document(document_id) is None:
                    detail = "checkpoints of a build whose document is gone"
                elif document_id in active or self.locks.holder(f"build:{key}") is not None:
                    continue  # a build under way (a rebuild of a ready cache too), or queued to resume
                elif cache is not None and cache.get("status") == "ready":
                    detail = f"checkpoints of cache {key[:12]}, which is already built"
                elif age > max_age:
                    detail = (f"checkpoints of a stopped build of document {document_id[:12]}, "
                              f"untouched for {age / 3600:.0f} h")
                else:
                    continue  # a stopped build that a retry may still resume
                problems.append(Problem("stale-checkpoint", relative, detail))
            if repair:
                self._remove(path, problems)

    # --- conversations -----------------------------------------------------------------
    def add_conversation(self, document_id: str, cache_id: str | None = None, owner: str | None = None,
                         name: str | None = None) -> str:
        """A new conversation (a thread) about a document, owned by ``owner`` (None without
        login); ``name`` defaults to its first question when that is asked."""
        conversation_id = uuid.uuid4().hex
        stamp = dbmod.now()
        self.db["conversations"].insert({"id": conversation_id, "document_id": self.document(document_id)["id"],
                                         "cache_id": cache_id, "messages": "[]", "created": stamp, "updated": stamp,
                                         "owner": owner, "name": thread_name(name) if name else None, "turns": "[]"})
        return conversation_id

    def conversation(self, conversation_id: str) -> dict:
        rows = list(self.db["conversations"].rows_where("id = ?", [conversation_id]))
        if not rows:
            raise StoreError(f"no conversation {conversation_id}")
        row = rows[0]
        row["messages"] = json.loads(row["messages"])
        return row

    def add_message(self, conversation_id: str, role: str, content: str) -> None:
        with self.db.atomic():
            messages = self.conversation(conversation_id)["messages"]
            messages.append({"role": role, "content": content})
            self.db["conversations"].update(conversation_id, {"messages": json.dumps(messages), "updated": dbmod.now()})

    def conversations(self, document_id: str) -> list[dict]:
        return list(self.db["conversations"].rows_where("document_id = ?", [document_id], order_by="updated DESC"))

    # --- threads: a user's named conversations about a document --------------------------
    def threads(self, document_id: str, owner: str | None) -> list[dict]:
        """``owner``'s threads about a document, the most recently used first: id, name (the
        first question when never named), cache_id, messages (their number), created, updated.
        Without login (``owner`` None) the threads that have no owner."""
        rows = self.db.execute(
            "SELECT id, name, cache_id, messages, created, updated FROM conversations "
            "WHERE document_id = ? AND owner IS ? ORDER BY updated DESC, created DESC", [document_id, owner]).fetchall()
        out = []
        for thread_id, name, cache_id, messages, created, updated in rows:
            messages = json.loads(messages or "[]")
            out.append({"id": thread_id, "name": name or _default_name(messages), "cache_id": cache_id,
                        "messages": len(messages), "created": created, "updated": updated})
        return out

    def thread(self, thread_id: str, owner: str | None, document_id: str | None = None) -> dict:
        """One thread with its messages and turns (lists), only for its owner (and, when
        given, about ``document_id``): another user's thread is answered as a missing one."""
        rows = list(self.db["conversations"].rows_where("id = ? AND owner IS ?", [str(thread_id or ""), owner]))
        if not rows or (document_id is not None and rows[0]["document_id"] != document_id):
            raise StoreError(f"no thread {str(thread_id or '')[:40]}")
        row = rows[0]
        row["messages"] = json.loads(row["messages"] or "[]")
        row["turns"] = [tuple(t) for t in json.loads(row["turns"] or "[]")]
        row["name"] = row["name"] or _default_name(row["messages"])
        return row

    def rename_thread(self, thread_id: str, owner: str | None, name: str) -> str:
        """Give a thread a name (whitespace collapsed, at most 80 characters); returns it."""
        name = thread_name(name)
        if not name:
            raise StoreError("type a name for the thread")
        with self.db.atomic():
            self.thread(thread_id, owner)
            self.db["conversations"].update(thread_id, {"name": name})
        return name

    def delete_thread(self, thread_id: str, owner: str | None) -> None:
        with self.db.atomic():
            self.thread(thread_id, owner)
            self.db.execute("DELETE FROM conversations WHERE id = ?", [thread_id])

    def save_turn(self, conversation_id: str, cache_id: str | None, messages: list[dict],
                  turns: list[tuple[str, str]]) -> None:
        """Append a turn's shown ``messages`` and record the thread's ``turns`` (as the model
        saw them over ``cache_id``, all of them) in one write; an unnamed thread is named
        after its first question."""
        with self.db.atomic():
            row = self.conversation(conversation_id)
            stored = row["messages"] + [{"role": m["role"], "content": m["content"]} for m in messages]
            update = {"messages": json.dumps(stored), "turns": json.dumps([list(t) for t in turns]),
                      "cache_id": cache_id, "updated": dbmod.now()}
            if not row.get("name"):
                update["name"] = _default_name(stored) or None
            self.db["conversations"].update(conversation_id, update)

    # --- consistency -------------------------------------------------------------------
    def check(self, repair: bool = False) -> list[Problem]:
        """Find bad rows, files without rows, rows without files, corrupt or structurally
        inconsistent cache files and stale temp files. With ``repair`` fix them: a bad row
        (an id that is not an id, a row naming a path that is not its own) loses just the row;
        a broken cache row is dropped so the document is rebuilt on next use; a sound cache
        file found without its row (its writer stopped before the row) is indexed again; orphan
        and stale files are removed — only paths proven inside the store, links unlinked, never
        followed. It never stops on a row it cannot read: that row is reported instead."""
        problems: list[Problem] = []
        known: set[Path] = set()
        for row in self._rows("caches", problems):
            try:
                self._check_cache_row(row, repair, problems, known)
            except Exception as exc:  # whatever the row holds, check goes on
                self._bad_row("caches", row, f"unreadable cache row ({type(exc).__name__}: {_one_line(exc)})",
                              repair, problems)
        for path in _walk_files(self.root / "caches"):
            if path in known:
                continue
            try:
                self._check_loose_cache_file(path, repair, problems)
            except Exception as exc:
                problems.append(Problem("orphan-file", _relative(self.root, path), f"unreadable: {_one_line(exc)}"))
        documents = self._rows("documents", problems)
        known_docs = set()
        for row in documents:
            document_id = row.get("id")
            if not is_document_id(document_id):
                self._bad_row("documents", row, "the document id is not a sha256 (64 lowercase hex digits)",
                              repair, problems)
                continue
            known_docs.add(document_id)
            try:
                folder = self.document_dir(document_id)
                text = folder / "text.txt"
                if is_link(folder) or is_link(text):
                    problems.append(Problem("bad-file", _relative(self.root, folder),
                                            f"the files of document {document_id[:12]} are symbolic links"))
                    if repair:
                        self.delete_document(document_id)
                        problems[-1].repaired = True
                elif not text.is_file():
                    problems.append(Problem("missing-document-file", _relative(self.root, folder),
                                            f"document {document_id[:12]} has no text file"))
                    if repair:
                        self.delete_document(document_id)
                        problems[-1].repaired = True
            except Exception as exc:
                problems.append(Problem("bad-file", f"documents/{document_id[:2]}/{document_id}",
                                        f"document {document_id[:12]}: {_one_line(exc)}"))
        for shard in _entries(self.root / "documents"):
            for folder in (_entries(shard) if shard.is_dir() and not is_link(shard) else [shard]):
                if folder.name in known_docs and folder.parent.name == folder.name[:2] and not is_link(shard):
                    continue
                problems.append(Problem("orphan-file", _relative(self.root, folder), "no document row"))
                if repair:
                    self._remove(folder, problems)
            if repair and shard.is_dir() and not is_link(shard) and not any(shard.iterdir()):
                shard.rmdir()
        try:
            active_uploads = {row["upload"] for row in self.db["jobs"].rows_where(
                "state IN ('queued', 'running') AND upload IS NOT NULL")}
        except Exception as exc:
            problems.append(Problem("bad-row", "jobs", f"unreadable jobs table: {_one_line(exc)}"))
            active_uploads = None
        for path in _entries(self.root / "uploads"):
            if active_uploads is not None and _relative(self.root, path) not in active_uploads and _older_than(path, 60):
                problems.append(Problem("orphan-file", _relative(self.root, path), "upload of no active job"))
                if repair:
                    self._remove(path, problems)
        for path in _entries(self.tmp_dir):
            if stale_temp(path):
                problems.append(Problem("stale-temp", _relative(self.root, path), "left by a stopped writer"))
                if repair:
                    self._remove(path, problems)
        try:
            self._check_checkpoints(repair, problems)
        except Exception as exc:
            problems.append(Problem("bad-file", "checkpoints", f"the checkpoints cannot be checked: {_one_line(exc)}"))
        return problems

    def _rows(self, table: str, problems: list[Problem]) -> list[dict]:
        try:
            return list(self.db[table].rows)
        except Exception as exc:
            problems.append(Problem("bad-row", table, f"the {table} table cannot be read: {_one_line(exc)}"))
            return []

    def _remove(self, path: Path, problems: list[Problem]) -> None:
        """Remove an orphan or stale path (proven inside the store; a link is unlinked)."""
        try:
            remove_tree(self.root, path) if path.is_dir() and not is_link(path) else remove_file(self.root, path)
            problems[-1].repaired = True
        except (StoreError, OSError) as exc:
            problems[-1].detail += f"; not removed: {_one_line(exc)}"

    def _bad_row(self, table: str, row: dict, detail: str, repair: bool, problems: list[Problem]) -> None:
        """Report a row the store cannot use; with ``repair`` delete just that row (and the
        rows that hang on it) — no file is touched for it."""
        shown = str(row.get("id"))[:40]
        problems.append(Problem("bad-row", f"{table}/{shown}", detail))
        if not repair:
            return
        with self.db.atomic():
            if table == "caches":
                self.db.execute("DELETE FROM conversations WHERE cache_id IS ?", [row.get("id")])
                self.db.execute("DELETE FROM caches WHERE id IS ?", [row.get("id")])
            else:
                self.db.execute("DELETE FROM conversations WHERE document_id IS ?", [row.get("id")])
                self.db.execute("DELETE FROM document_owners WHERE document_id IS ?", [row.get("id")])
                self.db.execute("DELETE FROM document_shares WHERE document_id IS ?", [row.get("id")])
                self.db.execute("UPDATE jobs SET state = 'failed', error = 'the document was removed', finished = ? "
                                "WHERE document_id IS ? AND state IN ('queued', 'running')", [dbmod.now(), row.get("id")])
                for cache in self.db.execute("SELECT id FROM caches WHERE document_id IS ?", [row.get("id")]).fetchall():
                    if is_cache_key(cache[0]):
                        self.delete_cache(cache[0])
                self.db.execute("DELETE FROM conversations WHERE cache_id IN "
                                "(SELECT id FROM caches WHERE document_id IS ?)", [row.get("id")])
                self.db.execute("DELETE FROM caches WHERE document_id IS ?", [row.get("id")])
                self.db.execute("DELETE FROM documents WHERE id IS ?", [row.get("id")])
        problems[-1].repaired = True

    def _check_cache_row(self, row: dict, repair: bool, problems: list[Problem], known: set[Path]) -> None:
        key = row.get("id")
        if not is_cache_key(key):
            self._bad_row("caches", row, "the cache id is not 32 lowercase hex digits", repair, problems)
            return
        if not is_document_id(row.get("document_id")) or self.get_document(row["document_id"]) is None:
            self._bad_row("caches", row, f"cache {key[:12]} belongs to no stored document", repair, problems)
            return
        if row.get("status") not in ("ready", "installing", "corrupt", "building"):
            self._bad_row("caches", row, f"cache {key[:12]} has no valid status ({str(row.get('status'))[:20]!r})",
                          repair, problems)
            return
        try:
            path = self._row_file(row)
        except StoreError as exc:
            self._bad_row("caches", row, _one_line(exc), repair, problems)
            return
        known.add(path)
        if row.get("pending"):
            finished = self._finish_install(row)
            if finished is not None:  # only when the file in place is the journalled one
                problems.append(Problem("unfinished-install", _relative(self.root, path),
                                        f"cache {key[:12]} was renamed into place but its row never written"))
                problems[-1].repaired = True  # completing it is safe, with or without repair
                row = finished
        if row.get("leaf_states_file"):
            try:
                leaves = self._row_file(row, "leaf_states_file")
            except StoreError as exc:
                leaves, reason = None, _one_line(exc)
            else:
                known.add(leaves)
                reason = None
                if not leaves.is_file():
                    reason = f"leaf states of cache {key[:12]} point at no file"
                elif (leaves.stat().st_size != row.get("leaf_states_bytes")
                      or sha256_file(leaves) != row.get("leaf_states_checksum")):
                    reason = f"checksum of the leaf states of cache {key[:12]} does not match"
            if reason is not None:
                kind = "missing-file" if leaves is not None and not leaves.is_file() else "corrupt-file"
                problems.append(Problem(kind, str(row.get("leaf_states_file"))[:80], reason))
                if repair:  # the cache itself may be fine: drop only its leaf states
                    self.drop_leaf_states(key)
                    problems[-1].repaired = True
        if row.get("status") == "installing":
            if not path.exists() and _install_abandoned(row):
                problems.append(Problem("unfinished-install", _relative(self.root, path),
                                        f"an install of cache {key[:12]} stopped before its file was in place"))
                if repair:
                    self.delete_cache(key)
                    problems[-1].repaired = True
            return
        if row.get("status") != "ready":
            return
        if not path.exists():
            problems.append(Problem("missing-file", _relative(self.root, path), f"cache row {key[:12]} points at no file"))
        elif path.stat().st_size != row.get("bytes") or sha256_file(path) != row.get("checksum"):
            problems.append(Problem("corrupt-file", _relative(self.root, path), f"checksum of cache {key[:12]} does not match"))
        else:
            try:
                check_cache_file(path, row.get("model_fingerprint"))
                return
            except StoreError as exc:
                problems.append(Problem("corrupt-file", _relative(self.root, path), f"cache {key[:12]}: {exc}"))
        if repair:
            self.delete_cache(key)
            problems[-1].repaired = True

    def _check_loose_cache_file(self, path: Path, repair: bool, problems: list[Problem]) -> None:
        """A file under caches/ without a row. A sound cache at its own key's place whose
        document is stored (a writer stopped between the rename and the row) is indexed again
        (with ``repair``); anything else is an orphan."""
        relative = _relative(self.root, path)
        name = path.name
        key = name.removesuffix(".safetensors")
        if not is_link(path) and is_cache_key(key) and path.parent.name == key[:2] and self.get_cache(key) is None:
            row = self._indexable(path, key)
            if row is not None:
                problems.append(Problem("unindexed-cache", relative,
                                        f"a sound cache of document {row['document_id'][:12]} without its row"))
                if repair:
                    try:
                        self.db["caches"].insert(row, pk="id")
                    except sqlite3.IntegrityError:
                        pass  # its writer wrote the row meanwhile
                    problems[-1].repaired = True
                return
        if name.endswith(".leaves.safetensors") and not is_link(path):
            owner = self.get_cache(name.removesuffix(".leaves.safetensors"))
            if owner is not None and owner.get("status") in ("installing", "ready") and owner.get("pending"):
                return  # an install of that cache is under way (its leaves are renamed after the cache)
        problems.append(Problem("orphan-file", relative, "no cache row"))
        if repair:
            self._remove(path, problems)

    def _indexable(self, path: Path, key: str) -> dict | None:
        """The row a cache file without one should have, or None when it is not a sound cache
        of a stored document under its own key."""
        try:
            meta = cache_file_metadata(path)
        except Exception:
            return None
        if meta.get("format") != "homer-cache":
            return None
        claimed = meta.get("document_id")
        candidates = [claimed] if is_document_id(claimed) else [row["id"] for row in self.documents()]
        document_id = next((d for d in candidates if is_document_id(d) and self.get_document(d) is not None
                            and cache_key(d, meta.get("model_fingerprint", ""), meta.get("settings", "{}"),
                                          meta.get("prompt_version", "")) == key), None)
        if document_id is None:
            return None
        try:
            check_cache_file(path, meta.get("model_fingerprint"))
        except StoreError:
            return None
        stamp = dbmod.now()
        row = {"id": key, "document_id": document_id, "model_fingerprint": meta.get("model_fingerprint", ""),
               "model_name": meta.get("model_name", ""), "settings": meta.get("settings", "{}"),
               "prompt_version": meta.get("prompt_version", ""), "file": _relative(self.root, path),
               "bytes": path.stat().st_size, "checksum": sha256_file(path), "tokens": _cache_tokens(path),
               "build_seconds": float(meta.get("build_seconds") or 0.0), "status": "ready", "error": None,
               "created": stamp, "updated": stamp}
        leaves = self.leaf_states_path(key)
        if leaves.is_file() and not is_link(leaves):
            try:
                _check_leaf_states_file(leaves, meta)
                row.update(leaf_states_file=_relative(self.root, leaves), leaf_states_bytes=leaves.stat().st_size,
                           leaf_states_checksum=sha256_file(leaves))
            except StoreError:
                pass
        return row

    def remove_stale_temp_files(self) -> int:
        """Delete temp files whose writer is gone (a worker restarting after a crash)."""
        removed = 0
        for path in _entries(self.tmp_dir):
            if stale_temp(path):
                try:
                    remove_tree(self.root, path) if path.is_dir() and not is_link(path) else remove_file(self.root, path)
                    removed += 1
                except (StoreError, OSError):
                    pass
        return removed


def _check_leaf_states_file(path: Path, cache_meta: dict) -> None:
    """A leaf-state file must be one (its header says so) and come from the cache's model."""
    try:
        meta = cache_file_metadata(path)
    except Exception as exc:
        raise StoreError(f"not a readable leaf-state file: {exc}") from exc
    if meta.get("format") != LEAF_STATES_FORMAT:
        raise StoreError("not a HOMER leaf-state file")
    if meta.get("model_fingerprint") != cache_meta.get("model_fingerprint"):
        raise StoreError(f"the leaf states were made by another model (fingerprint "
                         f"{meta.get('model_fingerprint', '')[:12]}) than the cache")
    if "settings" in cache_meta and meta.get("settings") != cache_meta["settings"]:
        raise StoreError("the leaf states were made with other HOMER settings than the cache")
    if "prompt_version" in cache_meta:
        try:
            version = json.loads(meta.get("build_metadata") or "{}").get("prompt_version")
        except ValueError:
            version = None
        if version != cache_meta["prompt_version"]:
            raise StoreError("the leaf states were made with another prompt than the cache")


def _link_new(staged: Path, target: Path, key: str, row_exists: bool) -> None:
    """Put ``staged`` at ``target`` only if nothing is there (a hard link fails on an existing
    name, atomically); :class:`CacheExists` otherwise."""
    if row_exists:
        raise CacheExists(f"cache {key[:12]} is already in the store")
    try:
        os.link(staged, target)
    except FileExistsError:
        raise CacheExists(f"cache {key[:12]} is already in the store") from None
    except OSError:  # a file system without hard links: exclusive create, then copy
        try:
            with open(target, "xb") as out, open(staged, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
        except FileExistsError:
            raise CacheExists(f"cache {key[:12]} is already in the store") from None
    staged.unlink(missing_ok=True)


def check_cache_file(path: Path, fingerprint: str | None = None) -> None:
    """Refuse (:class:`StoreError`, one line) a cache file whose tensors do not fit together
    or do not fit its model (when that model's fingerprint was computed in this process)."""
    try:
        HomerCache.load(path, expected_fingerprint=fingerprint or None)
    except CacheMismatchError as exc:
        raise StoreError(str(exc).replace(Path(path).name, "the cache file")) from None


def _cache_tokens(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.get_slice("positions").get_shape()[0])


THREAD_NAME_CHARS = 80


def thread_name(text: str | None) -> str:
    """A thread's title: whitespace collapsed, at most 80 characters (cut with "…")."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= THREAD_NAME_CHARS else text[:THREAD_NAME_CHARS - 1].rstrip() + "…"


def _default_name(messages: list[dict]) -> str:
    """An unnamed thread's title: its first question, else empty."""
    first = next((m.get("content") for m in messages if m.get("role") == "user"), "")
    return thread_name(first if isinstance(first, str) else "")


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def stale_temp(path: Path) -> bool:
    """A temp file is stale when its writer (``host-pid`` in its name) is gone: no such
    process on this host, a zombie, or a newer process that reused the pid (it started after
    the file was last written) — known at once, not after a timeout. A name without a writer
    of this host (another machine on a shared store) is stale after an hour."""
    host = host_name()
    try:
        written = os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    for part in path.name.split("."):
        if part.startswith(f"{host}-"):
            pid = part[len(host) + 1:]
            if pid.isdigit():
                return not _writer_alive(int(pid), written)
    return _older_than(path, STALE_TEMP_SECONDS)


def _writer_alive(pid: int, written: float) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= written + 1.0  # a process started later only reused the pid
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not ours to inspect: assume it is alive
        return True


def _install_abandoned(row: dict) -> bool:
    """Whether the writer of an ``installing`` row is gone (dead on this host, or an hour old)."""
    try:
        owner = json.loads(row.get("pending") or "{}").get("owner")
    except (ValueError, AttributeError):
        owner = None
    if owner_alive(owner) is False:
        return True
    return dbmod.now() - float(row.get("updated") or 0) > STALE_TEMP_SECONDS


def _read_secret(path: Path) -> bytes | None:
    """The bytes of the key file at ``path``; None when there is none. A link, a non-file or a
    file of the wrong length is refused (:class:`StoreError`); a mode wider than 0600 (a
    copied store) is narrowed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size != SECRET_BYTES:
        raise StoreError(f"the store's {path.name} is not a {SECRET_BYTES}-byte file; "
                         "checkpoints are not used until `store check --repair` removes it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(SECRET_BYTES + 1)
    if len(data) != SECRET_BYTES:
        raise StoreError(f"the store's {path.name} is not a {SECRET_BYTES}-byte file; "
                         "checkpoints are not used until `store check --repair` removes it")
    return data


def _read_or_make_secret(path: Path, temp_dir: Path) -> bytes:
    """The secret in ``path``, made first if there is none (see :meth:`Store.checkpoint_secret`)."""
    secret = _read_secret(path)
    if secret is not None:
        return secret
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{owner_token().replace(':', '-')}.", suffix=".tmp",
                               dir=temp_dir)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(SECRET_BYTES))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # never over an existing key: of racing makers, the first link wins
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some mounted buckets): exclusive create
            _create_exclusive(path, Path(tmp).read_bytes())
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for _ in range(40):  # an exclusive create is not atomic: a racing maker may still be writing it
        try:
            secret = _read_secret(path)
            break
        except StoreError:
            if time.time() - os.lstat(path).st_mtime > 5:
                raise
            time.sleep(0.05)
    if secret is None:
        raise StoreError(f"the store's {path.name} could not be made")
    return secret


def _create_exclusive(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` (mode 0600); nothing when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _relative(root: Path, path: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _entries(folder: Path) -> list[Path]:
    """The entries of a folder (not following links), sorted; none when it is missing."""
    try:
        return sorted(Path(entry.path) for entry in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of a folder or anything in it (links not followed)."""
    newest = 0.0
    for path in [folder, *_walk_files(folder)]:
        try:
            newest = max(newest, os.lstat(path).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _walk_files(folder: Path) -> list[Path]:
    """Every non-folder entry below ``folder`` (links included, never followed), sorted."""
    found = []
    for current, folders, files in os.walk(folder, followlinks=False):
        found += [Path(current) / name for name in files]
        found += [Path(current) / name for name in folders if is_link(Path(current) / name)]
    return sorted(found)
