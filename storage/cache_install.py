"""Writing a cache into the store so that no crash leaves a wrong one: the file is staged in
``tmp/``, checked (header, tensors, model), journalled in its row, renamed into place and
only then marked ready; an install whose writer died after the rename is completed by the
next reader (:meth:`CacheInstallMixin._finish_install`).

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root``, ``db`` and
``tmp_dir``, and :meth:`document`, :meth:`staging_path`, :meth:`cache_path`,
:meth:`leaf_states_path`, :meth:`_row_file`, :meth:`get_cache` and :meth:`drop_checkpoints`)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from homer.cache import HomerCache

from . import db as dbmod
from .caches import cache_file_metadata, cache_tokens, check_cache_file, check_leaf_states_file
from .errors import CacheExists, StoreError
from .files import fsync_dir, install_file, owner_alive, owner_token, sha256_file
from .ids import cache_key, is_link
from .temp_files import STALE_TEMP_SECONDS


class CacheInstallMixin:
    """Saving a built cache, installing a cache file (bundle import), finishing a stopped install."""

    def save_cache(
        self,
        document_id: str,
        cache: HomerCache,
        build_seconds: float | None = None,
        leaf_states: str | os.PathLike | None = None,
    ) -> dict:
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

    def install_cache_file(
        self, document_id: str, source, build_seconds: float | None = None, replace: bool = True
    ) -> dict:
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

    def _install_cache(
        self,
        document_id: str,
        staged: Path,
        build_seconds: float | None,
        leaf_states: str | os.PathLike | None = None,
        replace: bool = True,
    ) -> dict:
        try:
            meta = cache_file_metadata(staged)
        except Exception as exc:
            raise StoreError(f"not a readable cache file: {exc}") from exc
        if meta.get("format") != "homer-cache":
            raise StoreError("not a HOMER cache file")
        key = cache_key(
            document_id, meta.get("model_fingerprint", ""), meta.get("settings", "{}"), meta.get("prompt_version", "")
        )
        check_cache_file(staged, meta.get("model_fingerprint", ""))  # inconsistent tensors are never indexed
        leaves = None
        if leaf_states is not None:  # checked before anything is moved into place
            leaves = Path(leaf_states)
            check_leaf_states_file(leaves, meta)
            leaves_checksum, leaves_size = sha256_file(leaves), leaves.stat().st_size
        checksum, size = sha256_file(staged), staged.stat().st_size
        target = self.cache_path(key)
        leaves_target = self.leaf_states_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if build_seconds is None:
            build_seconds = float(meta.get("build_seconds") or 0.0)
        stamp = dbmod.now()
        row = {
            "id": key,
            "document_id": document_id,
            "model_fingerprint": meta.get("model_fingerprint", ""),
            "model_name": meta.get("model_name", ""),
            "settings": meta.get("settings", "{}"),
            "prompt_version": meta.get("prompt_version", ""),
            "file": str(target.relative_to(self.root)),
            "bytes": size,
            "checksum": checksum,
            "tokens": cache_tokens(staged),
            "build_seconds": build_seconds,
            "status": "ready",
            "error": None,
            "created": stamp,
            "updated": stamp,
        }
        if leaves is not None:
            row.update(
                leaf_states_file=str(leaves_target.relative_to(self.root)),
                leaf_states_bytes=leaves_size,
                leaf_states_checksum=leaves_checksum,
            )
        if replace:
            self._journal_install(row)  # a crash after the rename below leaves the row able to finish
            os.replace(staged, target)
        else:
            _link_new(staged, target, key, self.get_cache(key) is not None)
        if leaves is not None:
            os.replace(leaves, leaves_target)
        fsync_dir(target.parent)
        if replace:
            self.db["caches"].upsert(
                {**row, "pending": None}, pk="id"
            )  # columns not given (earlier leaf states) are kept
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
        self.db.execute(
            f"INSERT INTO caches ({columns}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET pending = excluded.pending",
            list(fresh.values()),
        )

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


def install_abandoned(row: dict) -> bool:
    """Whether the writer of an ``installing`` row is gone (dead on this host, or an hour old)."""
    try:
        owner = json.loads(row.get("pending") or "{}").get("owner")
    except (ValueError, AttributeError):
        owner = None
    if owner_alive(owner) is False:
        return True
    return dbmod.now() - float(row.get("updated") or 0) > STALE_TEMP_SECONDS
