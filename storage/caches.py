"""The store's caches: where a cache file and its leaf states live, the rows that index them,
and loading one with every check (size, checksum, model, structure) before it is served.
Writing a cache in is :mod:`storage.cache_install`.

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root`` and ``db``,
:meth:`_finish_install` of :mod:`storage.cache_install`, and :meth:`drop_checkpoints`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from homer.cache import CacheMismatchError, HomerCache

from . import db as dbmod
from .errors import CacheCorrupt, StoreError
from .files import sha256_file
from .ids import check_cache_key, inside, is_cache_key, is_link, remove_file

LEAF_STATES_FORMAT = "homer-leaf-states"  # homer.leaf_states.FORMAT


class CachesMixin:
    """Cache files and their rows: paths, look-ups, loading, leaf states, deletion."""

    def cache_path(self, key: str) -> Path:
        """Where cache ``key`` lives: only for a well-formed key (32 lowercase hex digits)."""
        check_cache_key(key)
        return inside(self.root, self.root / "caches" / key[:2] / f"{key}.safetensors")

    def leaf_states_path(self, key: str) -> Path:
        check_cache_key(key)
        return inside(self.root, self.root / "caches" / key[:2] / f"{key}.leaves.safetensors")

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
            raise StoreError(
                f"cache {key[:12]} was built by model {row['model_name'] or '?'} "
                f"(fingerprint {row['model_fingerprint'][:12]}), not by the loaded model"
            )
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
            reason = (
                f"the leaf-state file has {path.stat().st_size} bytes, {row['leaf_states_bytes']} were written "
                "(truncated?)"
            )
        elif verify and sha256_file(path) != row["leaf_states_checksum"]:
            reason = "the leaf-state file's checksum does not match (altered or corrupt)"
        else:
            try:
                check_leaf_states_file(path, {k: row[k] for k in ("model_fingerprint", "settings", "prompt_version")})
            except StoreError as exc:
                reason = str(exc)
        if reason is not None:
            self.drop_leaf_states(key)
            raise CacheCorrupt(
                f"leaf states of cache {key[:12]}: {reason}; dropped (read the document again "
                "with leaf states to restore them)"
            )
        return path

    def drop_leaf_states(self, key: str) -> None:
        """Delete a cache's leaf-state file and its columns (the cache stays)."""
        row = self.get_cache(key)
        if row is None or not row.get("leaf_states_file"):
            return
        self.db.execute(
            "UPDATE caches SET leaf_states_file = NULL, leaf_states_bytes = NULL, "
            "leaf_states_checksum = NULL WHERE id = ?",
            [key],
        )
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

    def caches(
        self,
        document_id: str | None = None,
        status: str | None = "ready",
        model_fingerprint: str | None = None,
        settings: str | None = None,
        prompt_version: str | None = None,
    ) -> list[dict]:
        """Cache rows, newest first, filtered by any of the key's parts."""
        where, args = [], []
        for column, value in (
            ("document_id", document_id),
            ("status", status),
            ("model_fingerprint", model_fingerprint),
            ("settings", settings),
            ("prompt_version", prompt_version),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        return list(self.db["caches"].rows_where(" AND ".join(where) or None, args, order_by="updated DESC"))

    def mark_corrupt(self, key: str, reason: str) -> None:
        """Flag a cache for rebuild; it is never loaded again as it is."""
        self.db.execute(
            "UPDATE caches SET status = 'corrupt', error = ?, updated = ? WHERE id = ?", [reason, dbmod.now(), key]
        )

    def load_cache(
        self,
        key: str,
        model=None,
        expected_fingerprint: str | None = None,
        verify: bool = True,
        device: str = "cpu",
        model_config=None,
    ) -> HomerCache:
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
            raise StoreError(
                f"cache {key[:12]} was built by model {row['model_name'] or '?'} "
                f"(fingerprint {row['model_fingerprint'][:12]}), not by the loaded model"
            )
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
                cache = HomerCache.load(
                    path, expected_fingerprint=row["model_fingerprint"], device=device, config=model_config
                )
            except CacheMismatchError as exc:
                reason = str(exc).replace(path.name, "the cache file")
        if reason is not None:
            self.mark_corrupt(key, reason)
            raise CacheCorrupt(
                f"cache {key[:12]} of document {str(row['document_id'])[:12]}: {reason}; marked for rebuild"
            )
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


def cache_file_metadata(path: str | os.PathLike) -> dict:
    """The string metadata of a safetensors cache file, without reading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def check_leaf_states_file(path: Path, cache_meta: dict) -> None:
    """A leaf-state file must be one (its header says so) and come from the cache's model."""
    try:
        meta = cache_file_metadata(path)
    except Exception as exc:
        raise StoreError(f"not a readable leaf-state file: {exc}") from exc
    if meta.get("format") != LEAF_STATES_FORMAT:
        raise StoreError("not a HOMER leaf-state file")
    if meta.get("model_fingerprint") != cache_meta.get("model_fingerprint"):
        raise StoreError(
            f"the leaf states were made by another model (fingerprint "
            f"{meta.get('model_fingerprint', '')[:12]}) than the cache"
        )
    if "settings" in cache_meta and meta.get("settings") != cache_meta["settings"]:
        raise StoreError("the leaf states were made with other HOMER settings than the cache")
    if "prompt_version" in cache_meta:
        try:
            version = json.loads(meta.get("build_metadata") or "{}").get("prompt_version")
        except ValueError:
            version = None
        if version != cache_meta["prompt_version"]:
            raise StoreError("the leaf states were made with another prompt than the cache")


def check_cache_file(path: Path, fingerprint: str | None = None) -> None:
    """Refuse (:class:`StoreError`, one line) a cache file whose tensors do not fit together
    or do not fit its model (when that model's fingerprint was computed in this process)."""
    try:
        HomerCache.load(path, expected_fingerprint=fingerprint or None)
    except CacheMismatchError as exc:
        raise StoreError(str(exc).replace(Path(path).name, "the cache file")) from None


def cache_tokens(path: Path) -> int:
    """The number of cached tokens of a cache file (from its header, no tensor read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.get_slice("positions").get_shape()[0])
