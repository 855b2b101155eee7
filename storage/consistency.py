"""The store's consistency check and repair (``homer store check [--repair]``): rows that are
not what the store writes, files without rows, rows without files, corrupt or inconsistent
cache files, stopped writers' temp files and installs, and checkpoints no build will resume
from. A repair touches only paths proven inside the store (links unlinked, never followed).

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root``, ``db``,
``tmp_dir``, ``locks`` and ``checkpoint_max_age_hours``, and the look-ups and deletions of
the other parts: documents, caches, cache installs, checkpoints)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from . import db as dbmod
from .cache_install import install_abandoned
from .caches import cache_file_metadata, cache_tokens, check_cache_file, check_leaf_states_file
from .checkpoints import CHECKPOINT_SECRET, read_secret
from .errors import StoreError, one_line
from .files import entries, newest_mtime, older_than, sha256_file, shown_path, walk_files
from .ids import cache_key, is_cache_key, is_document_id, is_link, remove_file, remove_tree
from .temp_files import stale_temp


@dataclass
class Problem:
    """One finding of :meth:`Store.check`."""

    kind: str  # orphan-file | missing-file | corrupt-file | stale-temp | missing-document-file
    #                | bad-row | bad-file | unindexed-cache | unfinished-install | stale-checkpoint
    path: str
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.path} — {self.detail}{' (repaired)' if self.repaired else ''}"


class ConsistencyMixin:
    """:meth:`check` and its parts: documents, caches, uploads, temp files, checkpoints."""

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
                self._bad_row(
                    "caches", row, f"unreadable cache row ({type(exc).__name__}: {one_line(exc)})", repair, problems
                )
        for path in walk_files(self.root / "caches"):
            if path in known:
                continue
            try:
                self._check_loose_cache_file(path, repair, problems)
            except Exception as exc:
                problems.append(Problem("orphan-file", shown_path(self.root, path), f"unreadable: {one_line(exc)}"))
        documents = self._rows("documents", problems)
        known_docs = set()
        for row in documents:
            document_id = row.get("id")
            if not is_document_id(document_id):
                self._bad_row(
                    "documents", row, "the document id is not a sha256 (64 lowercase hex digits)", repair, problems
                )
                continue
            known_docs.add(document_id)
            try:
                folder = self.document_dir(document_id)
                text = folder / "text.txt"
                if is_link(folder) or is_link(text):
                    problems.append(
                        Problem(
                            "bad-file",
                            shown_path(self.root, folder),
                            f"the files of document {document_id[:12]} are symbolic links",
                        )
                    )
                    if repair:
                        self.delete_document(document_id)
                        problems[-1].repaired = True
                elif not text.is_file():
                    problems.append(
                        Problem(
                            "missing-document-file",
                            shown_path(self.root, folder),
                            f"document {document_id[:12]} has no text file",
                        )
                    )
                    if repair:
                        self.delete_document(document_id)
                        problems[-1].repaired = True
            except Exception as exc:
                problems.append(
                    Problem(
                        "bad-file",
                        f"documents/{document_id[:2]}/{document_id}",
                        f"document {document_id[:12]}: {one_line(exc)}",
                    )
                )
        for shard in entries(self.root / "documents"):
            for folder in entries(shard) if shard.is_dir() and not is_link(shard) else [shard]:
                if folder.name in known_docs and folder.parent.name == folder.name[:2] and not is_link(shard):
                    continue
                problems.append(Problem("orphan-file", shown_path(self.root, folder), "no document row"))
                if repair:
                    self._remove(folder, problems)
            if repair and shard.is_dir() and not is_link(shard) and not any(shard.iterdir()):
                shard.rmdir()
        try:
            active_uploads = {
                row["upload"]
                for row in self.db["jobs"].rows_where("state IN ('queued', 'running') AND upload IS NOT NULL")
            }
        except Exception as exc:
            problems.append(Problem("bad-row", "jobs", f"unreadable jobs table: {one_line(exc)}"))
            active_uploads = None
        for path in entries(self.root / "uploads"):
            if (
                active_uploads is not None
                and shown_path(self.root, path) not in active_uploads
                and older_than(path, 60)
            ):
                problems.append(Problem("orphan-file", shown_path(self.root, path), "upload of no active job"))
                if repair:
                    self._remove(path, problems)
        for path in entries(self.tmp_dir):
            if stale_temp(path):
                problems.append(Problem("stale-temp", shown_path(self.root, path), "left by a stopped writer"))
                if repair:
                    self._remove(path, problems)
        try:
            self._check_checkpoints(repair, problems)
        except Exception as exc:
            problems.append(Problem("bad-file", "checkpoints", f"the checkpoints cannot be checked: {one_line(exc)}"))
        return problems

    def _rows(self, table: str, problems: list[Problem]) -> list[dict]:
        try:
            return list(self.db[table].rows)
        except Exception as exc:
            problems.append(Problem("bad-row", table, f"the {table} table cannot be read: {one_line(exc)}"))
            return []

    def _remove(self, path: Path, problems: list[Problem]) -> None:
        """Remove an orphan or stale path (proven inside the store; a link is unlinked)."""
        try:
            remove_tree(self.root, path) if path.is_dir() and not is_link(path) else remove_file(self.root, path)
            problems[-1].repaired = True
        except (StoreError, OSError) as exc:
            problems[-1].detail += f"; not removed: {one_line(exc)}"

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
                self.db.execute(
                    "UPDATE jobs SET state = 'failed', error = 'the document was removed', finished = ? "
                    "WHERE document_id IS ? AND state IN ('queued', 'running')",
                    [dbmod.now(), row.get("id")],
                )
                for cache in self.db.execute(
                    "SELECT id FROM caches WHERE document_id IS ?", [row.get("id")]
                ).fetchall():
                    if is_cache_key(cache[0]):
                        self.delete_cache(cache[0])
                self.db.execute(
                    "DELETE FROM conversations WHERE cache_id IN (SELECT id FROM caches WHERE document_id IS ?)",
                    [row.get("id")],
                )
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
            self._bad_row(
                "caches",
                row,
                f"cache {key[:12]} has no valid status ({str(row.get('status'))[:20]!r})",
                repair,
                problems,
            )
            return
        try:
            path = self._row_file(row)
        except StoreError as exc:
            self._bad_row("caches", row, one_line(exc), repair, problems)
            return
        known.add(path)
        if row.get("pending"):
            finished = self._finish_install(row)
            if finished is not None:  # only when the file in place is the journalled one
                problems.append(
                    Problem(
                        "unfinished-install",
                        shown_path(self.root, path),
                        f"cache {key[:12]} was renamed into place but its row never written",
                    )
                )
                problems[-1].repaired = True  # completing it is safe, with or without repair
                row = finished
        if row.get("leaf_states_file"):
            try:
                leaves = self._row_file(row, "leaf_states_file")
            except StoreError as exc:
                leaves, reason = None, one_line(exc)
            else:
                known.add(leaves)
                reason = None
                if not leaves.is_file():
                    reason = f"leaf states of cache {key[:12]} point at no file"
                elif leaves.stat().st_size != row.get("leaf_states_bytes") or sha256_file(leaves) != row.get(
                    "leaf_states_checksum"
                ):
                    reason = f"checksum of the leaf states of cache {key[:12]} does not match"
            if reason is not None:
                kind = "missing-file" if leaves is not None and not leaves.is_file() else "corrupt-file"
                problems.append(Problem(kind, str(row.get("leaf_states_file"))[:80], reason))
                if repair:  # the cache itself may be fine: drop only its leaf states
                    self.drop_leaf_states(key)
                    problems[-1].repaired = True
        if row.get("status") == "installing":
            if not path.exists() and install_abandoned(row):
                problems.append(
                    Problem(
                        "unfinished-install",
                        shown_path(self.root, path),
                        f"an install of cache {key[:12]} stopped before its file was in place",
                    )
                )
                if repair:
                    self.delete_cache(key)
                    problems[-1].repaired = True
            return
        if row.get("status") != "ready":
            return
        if not path.exists():
            problems.append(
                Problem("missing-file", shown_path(self.root, path), f"cache row {key[:12]} points at no file")
            )
        elif path.stat().st_size != row.get("bytes") or sha256_file(path) != row.get("checksum"):
            problems.append(
                Problem("corrupt-file", shown_path(self.root, path), f"checksum of cache {key[:12]} does not match")
            )
        else:
            try:
                check_cache_file(path, row.get("model_fingerprint"))
                return
            except StoreError as exc:
                problems.append(Problem("corrupt-file", shown_path(self.root, path), f"cache {key[:12]}: {exc}"))
        if repair:
            self.delete_cache(key)
            problems[-1].repaired = True

    def _check_loose_cache_file(self, path: Path, repair: bool, problems: list[Problem]) -> None:
        """A file under caches/ without a row. A sound cache at its own key's place whose
        document is stored (a writer stopped between the rename and the row) is indexed again
        (with ``repair``); anything else is an orphan."""
        relative = shown_path(self.root, path)
        name = path.name
        key = name.removesuffix(".safetensors")
        if not is_link(path) and is_cache_key(key) and path.parent.name == key[:2] and self.get_cache(key) is None:
            row = self._indexable(path, key)
            if row is not None:
                problems.append(
                    Problem(
                        "unindexed-cache",
                        relative,
                        f"a sound cache of document {row['document_id'][:12]} without its row",
                    )
                )
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
        document_id = next(
            (
                d
                for d in candidates
                if is_document_id(d)
                and self.get_document(d) is not None
                and cache_key(
                    d, meta.get("model_fingerprint", ""), meta.get("settings", "{}"), meta.get("prompt_version", "")
                )
                == key
            ),
            None,
        )
        if document_id is None:
            return None
        try:
            check_cache_file(path, meta.get("model_fingerprint"))
        except StoreError:
            return None
        stamp = dbmod.now()
        row = {
            "id": key,
            "document_id": document_id,
            "model_fingerprint": meta.get("model_fingerprint", ""),
            "model_name": meta.get("model_name", ""),
            "settings": meta.get("settings", "{}"),
            "prompt_version": meta.get("prompt_version", ""),
            "file": shown_path(self.root, path),
            "bytes": path.stat().st_size,
            "checksum": sha256_file(path),
            "tokens": cache_tokens(path),
            "build_seconds": float(meta.get("build_seconds") or 0.0),
            "status": "ready",
            "error": None,
            "created": stamp,
            "updated": stamp,
        }
        leaves = self.leaf_states_path(key)
        if leaves.is_file() and not is_link(leaves):
            try:
                check_leaf_states_file(leaves, meta)
                row.update(
                    leaf_states_file=shown_path(self.root, leaves),
                    leaf_states_bytes=leaves.stat().st_size,
                    leaf_states_checksum=sha256_file(leaves),
                )
            except StoreError:
                pass
        return row

    def _check_checkpoints(self, repair: bool, problems: list[Problem]) -> None:
        """Checkpoint folders no build will resume from: not a folder of a cache key, of a
        document that is gone, or — with no queued or running job for the document and no
        build holding the key — of a cache already indexed, or untouched for longer than
        the store's ``checkpoint_max_age_hours`` (a stopped build's checkpoints are kept that
        long for a retry to resume from)."""
        try:
            read_secret(self.root / CHECKPOINT_SECRET)
        except (StoreError, OSError) as exc:
            problems.append(Problem("bad-file", CHECKPOINT_SECRET, f"{one_line(exc)} (a new one is made)"))
            if repair:
                self._remove(self.root / CHECKPOINT_SECRET, problems)
        folder = self.root / "checkpoints"
        if is_link(folder):
            problems.append(Problem("bad-file", "checkpoints", "the checkpoint folder is a symbolic link"))
            if repair:
                self._remove(folder, problems)
            return
        active = {
            row[0]
            for row in self.db.execute(
                "SELECT DISTINCT document_id FROM jobs WHERE state IN ('queued', 'running')"
            ).fetchall()
        }
        max_age = self.checkpoint_max_age_hours * 3600.0
        for path in entries(folder):
            relative = shown_path(self.root, path)
            if not is_cache_key(path.name) or is_link(path) or not path.is_dir():
                problems.append(Problem("orphan-file", relative, "not a build's checkpoint folder"))
            else:
                key, info = path.name, self._checkpoint_info(path)
                document_id = info.get("document_id")
                cache = self.get_cache(key)
                age = time.time() - newest_mtime(path)
                if not info and age < 60:
                    continue  # a build that just made its folder writes build.json next
                if not is_document_id(document_id) or self.get_document(document_id) is None:
                    detail = "checkpoints of a build whose document is gone"
                elif document_id in active or self.locks.holder(f"build:{key}") is not None:
                    continue  # a build under way (a rebuild of a ready cache too), or queued to resume
                elif cache is not None and cache.get("status") == "ready":
                    detail = f"checkpoints of cache {key[:12]}, which is already built"
                elif age > max_age:
                    detail = (
                        f"checkpoints of a stopped build of document {document_id[:12]}, "
                        f"untouched for {age / 3600:.0f} h"
                    )
                else:
                    continue  # a stopped build that a retry may still resume
                problems.append(Problem("stale-checkpoint", relative, detail))
            if repair:
                self._remove(path, problems)
