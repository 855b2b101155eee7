"""Bundles through the app: export a document the user may see into a bundle to download, and
import one as the user — within the bundle limits, admitted only as the sharing rules allow
(:mod:`app.sharing`; a grantee never becomes an owner by exporting and importing again)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from storage.bundles import export_bundle, import_bundle, text_document_id
from storage.errors import StoreError

from . import sharing
from .ingest import IngestError, ingest_limits
from .ownership import _seen, add_owner, check_access
from .settings import load_settings

EXPORT_KEEP_SECONDS = 3600.0  # an exported bundle stays this long for its download, then goes


def exports_dir() -> Path:
    """The one folder exports are written to: ``homer-exports-<uid>`` in the system temp
    folder (the web framework serves files from there), private to this user. Old exports
    in it are pruned by :func:`export_document`, so no bundle stays forever."""
    folder = Path(tempfile.gettempdir()) / f"homer-exports-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            raise OSError("not our own folder")
    except OSError:  # a link or another user's folder of that name: use a fresh private one
        folder = Path(tempfile.mkdtemp(prefix="homer-exports-"))
    return folder


def prune_exports(folder: Path, keep_seconds: float = EXPORT_KEEP_SECONDS, now: float | None = None) -> int:
    """Remove exports older than ``keep_seconds`` from ``folder``; returns how many went."""
    now = now or time.time()
    removed = 0
    for entry in folder.iterdir():
        try:
            if now - os.lstat(entry).st_mtime <= keep_seconds:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    return removed


def export_document(
    store, document_id: str, fingerprint: str, owner: str | None = None, folder: str | Path | None = None
) -> Path:
    """Write the document's cache for this model as a bundle (a zip) and return its path:
    in ``folder``, or in a fresh subfolder of :func:`exports_dir` (older exports there are
    pruned first). An owner's bundle carries the source file; a grantee's (a document shared
    with them read-only) carries only what they can see — text and cache — and is recorded
    (:func:`app.sharing.record_export`), so importing it never gives anyone access the share
    did not."""
    doc = check_access(store, document_id, owner)
    caches = store.caches(doc["id"], model_fingerprint=fingerprint)
    if not caches:
        raise StoreError(f"{doc['file_name']} has no cache of the model in use to export")
    shared = doc.get("access") == "shared"
    if shared:  # before the bundle exists: no grantee's bundle is ever unrecorded
        sharing.record_export(store, text_document_id(store.document_text(doc["id"])), doc["id"])
    if folder:
        folder = Path(folder)
    else:
        exports = exports_dir()
        prune_exports(exports)
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=exports))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(doc["file_name"]).stem)[:80] or doc["id"][:12]
    return export_bundle(
        store,
        doc["id"],
        folder / f"{stem}.homer-bundle.zip",
        cache_id=caches[0]["id"],
        file_name=doc["file_name"],
        title=doc["title"],
        include_source=not shared,
    )


def export_message(path: Path) -> str:
    """The line the UI shows for an export: its name and size, and whether the source file
    is in it (not in a grantee's)."""
    import zipfile

    from storage.bundle_schema import CACHE_MEMBER, MANIFEST, TEXT_MEMBER

    with zipfile.ZipFile(path) as zf:
        sourced = any(name not in (MANIFEST, CACHE_MEMBER, TEXT_MEMBER) for name in zf.namelist())
    size = path.stat().st_size / 2**20
    what = "" if sourced else " — text and cache only, without the source file (shared with you read-only)"
    return f"✓ exported {path.name} ({size:.1f} MiB){what}: download it below and share it."


def text_from_source(tokenizer=None):
    """The check a bundle's source file gets on import: the app's own ingestion (the upload
    limits apply), returning the text and the row fields it derives from the source."""
    from .ingest import ingest_bytes, max_upload_bytes

    def read(path: Path, file_name: str) -> dict:
        limit = max_upload_bytes()
        size = path.stat().st_size
        if size > limit:
            raise IngestError(
                f"{file_name}: the source file is {size / 2**20:.1f} MB, over the upload limit of "
                f"{limit / 2**20:.1f} MB"
            )
        doc = ingest_bytes(path.read_bytes(), file_name, tokenizer)
        return {
            "text": doc.text,
            "kind": doc.kind,
            "page_starts": doc.page_starts,
            "passages": doc.passages,
            "token_count": doc.token_count,
            "title": doc.title,
            "locations": doc.locations,
        }

    return read


def max_request_bytes() -> int:
    """What the web server accepts in one file: the larger of the upload and bundle limits
    (each path then enforces its own: uploads in :func:`check_upload` and the queue, bundles
    in the importer)."""
    from storage.bundles import max_bundle_bytes

    from .ingest import max_upload_bytes

    return max(max_upload_bytes(), max_bundle_bytes(load_settings().bundles.max_mb))


def bundle_limits() -> dict:
    """The importer's size limits, from the settings (``HOMER_BUNDLE_MAX_MB``,
    ``HOMER_BUNDLE_MAX_TEXT_MB``): keywords of :func:`storage.bundles.import_bundle`."""
    bundles = load_settings().bundles
    return {"bundle_max_mb": bundles.max_mb, "bundle_max_text_mb": bundles.max_text_mb}


def import_bundle_file(
    store, path: str | Path, fingerprint: str | None, owner: str | None = None, tokenizer=None
) -> dict:
    """Check and import a bundle (refusing a cache of another model, checking its text
    against its source file with the app's ingestion and its cache's tokens with
    ``tokenizer``); returns the cache row (``already_in_store`` when that cache was there).
    The importer becomes an owner of the document: the bundle proved its content (the
    same as uploading it) — unless the import would launder a share (:func:`admission`),
    which is refused before anything is written."""

    row = import_bundle(
        store,
        path,
        model_fingerprint=fingerprint,
        tokenizer=tokenizer,
        text_from_source=text_from_source(tokenizer),
        max_chars=ingest_limits().max_chars,
        admit=admission(store, owner),
        **bundle_limits(),
    )
    add_owner(store, row["document_id"], owner, row.get("file_name"))
    return row


def admission(store, owner: str | None):
    """The importer's last check (``import_bundle``'s ``admit``, given the verified document
    id and whether a source file proved it), before anything is written:

    * a document the importer reaches read-only stays read-only: the import is refused
      (it would change nothing but their access);
    * a bundle without its source whose text left this app in a grantee's export
      (:func:`app.sharing.exported_from`) is for those who reach the shared document: its
      owners import it, its grantees are told it is already theirs to read, anyone else is
      refused — so an unshare or a delete ends what the share gave, re-imports included.

    The refusals name nothing but what the importer can already see."""

    def admit(document_id: str, proven_by_source: bool) -> None:
        if not owner:
            return
        reached = _seen(store, owner, "d.id = ?", [document_id])
        if not reached and not proven_by_source:  # a bundle without its source: where did its text come from?
            origins = sharing.exported_from(store, document_id)
            if not origins:
                return
            reached = _seen(store, owner, f"d.id IN ({', '.join('?' * len(origins))})", origins)
            if not reached:
                raise StoreError(
                    "refused: this bundle was exported from a document shared read-only with its "
                    "exporter; only that document's owner can share it with you"
                )
        if not reached or any(row["access"] == "owner" for row in reached):
            return
        raise StoreError(
            f"refused: {reached[0]['file_name']} is already in your library, shared with you "
            "read-only: importing it changes nothing"
        )

    return admit
