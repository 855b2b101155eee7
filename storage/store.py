"""The store: documents by content hash, cache files with checksums, conversations, all
indexed in one SQLite file under a root folder.

Layout under the root::

    index.db                         the SQLite index (WAL)
    documents/ab/<sha256>/source.pdf the uploaded bytes, text.txt the extracted text
    caches/cd/<key>.safetensors      HOMER caches (the engine's safetensors format)
    caches/cd/<key>.leaves.safetensors  optional leaf states of a cache, for deep reads
    tmp/                             temp files named after their writer (host-pid)
    uploads/                         uploads waiting for ingest by a worker
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from homer.cache import CacheMismatchError, HomerCache

from . import db as dbmod
from .errors import CacheCorrupt, StoreError

LEAF_STATES_FORMAT = "homer-leaf-states"  # homer.deep_read.FORMAT
from .files import fsync_dir, host_name, install_file, owner_alive, owner_token, sha256_file, write_bytes_atomic
from .jobs import Jobs
from .locks import Locks

STALE_TEMP_SECONDS = 3600.0


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
        dbmod.migrate(self.db)
        self.jobs = Jobs(self)
        self.locks = Locks(self)

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
        return self.root / "documents" / document_id[:2] / document_id

    def add_document(self, data: bytes | None, file_name: str, text: str, kind: str, page_starts: list[int] | None = None,
                     token_count: int | None = None, title: str | None = None,
                     passages: list | None = None, document_id: str | None = None, size: int | None = None) -> dict:
        """Store an uploaded document once per content (sha256 of ``data``); returns its row.
        Uploading the same bytes again returns the existing row. ``data`` may be None for a
        document imported without its source file: then ``document_id`` is required."""
        if data is not None:
            document_id = hashlib.sha256(data).hexdigest()
        elif not document_id:
            raise StoreError("a document needs its bytes or its content hash")
        existing = self.get_document(document_id)
        if existing is not None:
            return existing
        folder = self.document_dir(document_id)
        if data is not None:
            suffix = Path(file_name).suffix.lower()[:16]
            write_bytes_atomic(data, folder / f"source{suffix}", self.tmp_dir)
        write_bytes_atomic(text.encode("utf-8"), folder / "text.txt", self.tmp_dir)
        row = {
            "id": document_id, "title": title or Path(file_name).stem, "file_name": Path(file_name).name,
            "kind": kind, "pages": len(page_starts or [0]), "token_count": token_count, "chars": len(text),
            "bytes": len(data) if data is not None else size, "page_starts": json.dumps(page_starts or [0]),
            "passages": json.dumps(passages) if passages is not None else None, "created": dbmod.now(),
        }
        self.db["documents"].insert(row, ignore=True)  # a concurrent writer may have won: same content
        return self.get_document(document_id)

    def get_document(self, document_id: str) -> dict | None:
        rows = list(self.db["documents"].rows_where("id = ?", [document_id]))
        return rows[0] if rows else None

    def document(self, ref: str) -> dict:
        """A document by id, unique id prefix, file name or title; :class:`StoreError` if none."""
        doc = self.get_document(ref)
        if doc is not None:
            return doc
        rows = list(self.db["documents"].rows_where("id LIKE ? OR file_name = ? OR title = ?",
                                                    [f"{ref}%", ref, ref]))
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise StoreError(f"no document {ref!r} in the store")
        raise StoreError(f"{ref!r} matches {len(rows)} documents; use more of the id")

    def documents(self) -> list[dict]:
        return list(self.db["documents"].rows_where(order_by="created"))

    def document_text(self, document_id: str) -> str:
        return (self.document_dir(document_id) / "text.txt").read_text(encoding="utf-8")

    def source_path(self, document_id: str) -> Path | None:
        files = sorted(self.document_dir(document_id).glob("source*"))
        return files[0] if files else None

    def page_starts(self, document_id: str) -> list[int]:
        return json.loads(self.document(document_id)["page_starts"] or "[0]")

    def delete_document(self, document_id: str) -> None:
        """Remove a document with its caches, conversations and finished jobs (rows and files)."""
        doc = self.document(document_id)
        document_id = doc["id"]
        for cache in self.caches(document_id, status=None):
            self.delete_cache(cache["id"])
        with self.db.atomic():
            self.db.execute("DELETE FROM conversations WHERE document_id = ?", [document_id])
            self.db.execute("DELETE FROM document_owners WHERE document_id = ?", [document_id])
            self.db.execute("UPDATE jobs SET state = 'failed', error = 'the document was deleted', finished = ? "
                            "WHERE document_id = ? AND state IN ('queued', 'running')", [dbmod.now(), document_id])
            self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])
        shutil.rmtree(self.document_dir(document_id), ignore_errors=True)
        parent = self.document_dir(document_id).parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()

    # --- caches ------------------------------------------------------------------------
    def cache_path(self, key: str) -> Path:
        return self.root / "caches" / key[:2] / f"{key}.safetensors"

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

    def install_cache_file(self, document_id: str, source, build_seconds: float | None = None) -> dict:
        """Install a cache file given as a path or a binary file object (bundle import)."""
        self.document(document_id)
        staged = self.staging_path()
        try:
            install_file(source, staged, self.tmp_dir)
            return self._install_cache(document_id, staged, build_seconds)
        finally:
            staged.unlink(missing_ok=True)

    def _install_cache(self, document_id: str, staged: Path, build_seconds: float | None,
                       leaf_states: str | os.PathLike | None = None) -> dict:
        try:
            meta = cache_file_metadata(staged)
        except Exception as exc:
            raise StoreError(f"not a readable cache file: {exc}") from exc
        if meta.get("format") != "homer-cache":
            raise StoreError("not a HOMER cache file")
        key = cache_key(document_id, meta.get("model_fingerprint", ""), meta.get("settings", "{}"),
                        meta.get("prompt_version", ""))
        leaves = None
        if leaf_states is not None:  # checked before anything is moved into place
            leaves = Path(leaf_states)
            _check_leaf_states_file(leaves, meta)
            leaves_checksum, leaves_size = sha256_file(leaves), leaves.stat().st_size
        checksum, size = sha256_file(staged), staged.stat().st_size
        target = self.cache_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        if leaves is not None:
            leaves_target = self.leaf_states_path(key)
            os.replace(leaves, leaves_target)
        fsync_dir(target.parent)
        if build_seconds is None:
            build_seconds = float(meta.get("build_seconds") or 0.0)
        stamp = dbmod.now()
        row = {
            "id": key, "document_id": document_id, "model_fingerprint": meta.get("model_fingerprint", ""),
            "model_name": meta.get("model_name", ""), "settings": meta.get("settings", "{}"),
            "prompt_version": meta.get("prompt_version", ""), "file": str(target.relative_to(self.root)),
            "bytes": size, "checksum": checksum, "tokens": _cache_tokens(target), "build_seconds": build_seconds,
            "status": "ready", "error": None, "created": stamp, "updated": stamp,
        }
        if leaves is not None:
            row.update(leaf_states_file=str(leaves_target.relative_to(self.root)), leaf_states_bytes=leaves_size,
                       leaf_states_checksum=leaves_checksum)
        self.db["caches"].upsert(row, pk="id")  # columns not given (earlier leaf states) are kept
        return self.get_cache(key)

    def leaf_states_path(self, key: str) -> Path:
        return self.root / "caches" / key[:2] / f"{key}.leaves.safetensors"

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
        path = self.root / row["leaf_states_file"]
        reason = None
        if not path.exists():
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
        (self.root / row["leaf_states_file"]).unlink(missing_ok=True)

    def get_cache(self, key: str) -> dict | None:
        rows = list(self.db["caches"].rows_where("id = ?", [key]))
        return rows[0] if rows else None

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
                   device: str = "cpu") -> HomerCache:
        """Load a ready cache (memory-mapped). Checks the file's checksum (``verify``) and the
        model fingerprint. A missing, truncated or altered file raises :class:`CacheCorrupt`
        (one line) and the row is marked for rebuild; a cache of another model raises
        :class:`StoreError`."""
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
        path = self.root / row["file"]
        reason = None
        if not path.exists():
            reason = "the cache file is missing"
        elif path.stat().st_size != row["bytes"]:
            reason = f"the cache file has {path.stat().st_size} bytes, {row['bytes']} were written (truncated?)"
        elif verify and sha256_file(path) != row["checksum"]:
            reason = "the cache file's checksum does not match (altered or corrupt)"
        if reason is None:
            try:
                cache = HomerCache.load(path, expected_fingerprint=row["model_fingerprint"], device=device)
            except CacheMismatchError as exc:
                reason = str(exc)
        if reason is not None:
            self.mark_corrupt(key, reason)
            raise CacheCorrupt(f"cache {key[:12]} of document {row['document_id'][:12]}: {reason}; marked for rebuild")
        return cache

    def delete_cache(self, key: str) -> None:
        row = self.get_cache(key)
        if row is None:
            return
        (self.root / row["file"]).unlink(missing_ok=True)
        if row.get("leaf_states_file"):
            (self.root / row["leaf_states_file"]).unlink(missing_ok=True)
        self.db.execute("DELETE FROM conversations WHERE cache_id = ?", [key])
        self.db.execute("DELETE FROM caches WHERE id = ?", [key])

    # --- conversations -----------------------------------------------------------------
    def add_conversation(self, document_id: str, cache_id: str | None = None) -> str:
        conversation_id = uuid.uuid4().hex
        stamp = dbmod.now()
        self.db["conversations"].insert({"id": conversation_id, "document_id": self.document(document_id)["id"],
                                         "cache_id": cache_id, "messages": "[]", "created": stamp, "updated": stamp})
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

    # --- consistency -------------------------------------------------------------------
    def check(self, repair: bool = False) -> list[Problem]:
        """Find files without rows, rows without files, corrupt cache files and stale temp
        files. With ``repair`` remove them (a broken cache row is dropped so the document is
        rebuilt on next use)."""
        problems: list[Problem] = []
        known_caches = set()
        for row in self.caches(status=None):
            path = self.root / row["file"]
            known_caches.add(path)
            if row.get("leaf_states_file"):
                leaves = self.root / row["leaf_states_file"]
                known_caches.add(leaves)
                if not leaves.exists():
                    problems.append(Problem("missing-file", row["leaf_states_file"],
                                            f"leaf states of cache {row['id'][:12]} point at no file"))
                elif leaves.stat().st_size != row["leaf_states_bytes"] or sha256_file(leaves) != row["leaf_states_checksum"]:
                    problems.append(Problem("corrupt-file", row["leaf_states_file"],
                                            f"checksum of the leaf states of cache {row['id'][:12]} does not match"))
                else:
                    leaves = None
                if leaves is not None and repair:  # the cache itself may be fine: drop only its leaf states
                    self.drop_leaf_states(row["id"])
                    problems[-1].repaired = True
            if row["status"] != "ready":
                continue
            if not path.exists():
                problems.append(Problem("missing-file", row["file"], f"cache row {row['id'][:12]} points at no file"))
            elif path.stat().st_size != row["bytes"] or sha256_file(path) != row["checksum"]:
                problems.append(Problem("corrupt-file", row["file"], f"checksum of cache {row['id'][:12]} does not match"))
            else:
                continue
            if repair:
                self.delete_cache(row["id"])
                problems[-1].repaired = True
        for path in sorted((self.root / "caches").rglob("*")):
            if path.is_file() and path not in known_caches:
                problems.append(Problem("orphan-file", str(path.relative_to(self.root)), "no cache row"))
                if repair:
                    path.unlink(missing_ok=True)
                    problems[-1].repaired = True
        known_docs = {row["id"] for row in self.documents()}
        for folder in sorted((self.root / "documents").glob("*/*")):
            if folder.is_dir() and folder.name not in known_docs:
                problems.append(Problem("orphan-file", str(folder.relative_to(self.root)), "no document row"))
                if repair:
                    shutil.rmtree(folder, ignore_errors=True)
                    problems[-1].repaired = True
        for document_id in sorted(known_docs):
            if not (self.document_dir(document_id) / "text.txt").exists():
                problems.append(Problem("missing-document-file", str(self.document_dir(document_id).relative_to(self.root)),
                                        f"document {document_id[:12]} has no text file"))
                if repair:
                    self.delete_document(document_id)
                    problems[-1].repaired = True
        active_uploads = {row["upload"] for row in self.db["jobs"].rows_where(
            "state IN ('queued', 'running') AND upload IS NOT NULL")}
        for path in sorted((self.root / "uploads").glob("*")):
            if str(path.relative_to(self.root)) not in active_uploads and _older_than(path, 60):
                problems.append(Problem("orphan-file", str(path.relative_to(self.root)), "upload of no active job"))
                if repair:
                    path.unlink(missing_ok=True)
                    problems[-1].repaired = True
        for path in sorted(self.tmp_dir.glob("*")):
            if stale_temp(path):
                problems.append(Problem("stale-temp", str(path.relative_to(self.root)), "left by a stopped writer"))
                if repair:
                    path.unlink(missing_ok=True)
                    problems[-1].repaired = True
        return problems

    def remove_stale_temp_files(self) -> int:
        """Delete temp files whose writer is gone (a worker restarting after a crash)."""
        removed = 0
        for path in self.tmp_dir.glob("*"):
            if stale_temp(path):
                path.unlink(missing_ok=True)
                removed += 1
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


def _cache_tokens(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.get_slice("positions").get_shape()[0])


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def stale_temp(path: Path) -> bool:
    """A temp file is stale when its writer (``host-pid`` in its name) is a dead process on
    this host, or when it is older than an hour."""
    host = host_name()
    for part in path.name.split("."):
        if part.startswith(f"{host}-"):
            pid = part[len(host) + 1:]
            if pid.isdigit() and int(pid) != os.getpid() and owner_alive(f"{host}:{pid}") is False:
                return True
    return _older_than(path, STALE_TEMP_SECONDS)
