"""The library the UI shows: documents with their build state for the model in use, uploads
checked before they are queued, delete, export and import — plain functions over the store
and the build queue (the UI never reaches the engine directly).

With login on, every function takes the user name as ``owner``: a user sees the documents
they added (uploaded or imported), and those another owner shares with them read-only
(:mod:`app.sharing`). Documents are stored once per content, so two users who upload the
same file share the stored document and its cache, and each sees it as theirs (under their
own names, with their own shares and threads). Owning comes from the content's source file
(an upload, or a bundle carrying it); a document shared with a user never becomes theirs by
exporting and importing it again."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from homer.reading.formats import check_sectioned_upload
from homer.reading.sources import SECTIONED_SUFFIXES, SUPPORTED_NAMES, DocumentError, open_pdf
from storage import db as dbmod
from storage.bundles import export_bundle, import_bundle, text_document_id
from storage.errors import StoreError

from . import sharing
from .ingest import IngestError, check_text_upload, ingest_limits, is_pdf, zip_limits
from .settings import load_settings

SUPPORTED_SUFFIXES = (".pdf", ".epub", ".docx", ".html", ".htm", ".xhtml", ".txt", ".md", ".markdown", ".text")
HEADERS = ["document", "state", "size", "pages", "tokens", "model", "deep read", "id"]
TEAM_HEADERS = HEADERS + ["access"]  # with sign-in: yours, shared by you (with whom), shared with you
DEEP_READ_LABELS = {True: "available", False: "—"}  # the "deep read" column: leaf states kept or not
FAILED_UPLOAD_SECONDS = 600.0  # failed uploads (no document row) stay listed this long


# --- ownership ----------------------------------------------------------------------------
def add_owner(store, document_id: str, owner: str | None, file_name: str | None = None) -> None:
    """Put a document in ``owner``'s library under the name they gave it (``file_name``: the
    file they uploaded or imported; the first name an owner gave is kept)."""
    if owner:
        name = Path(file_name).name[:255] if file_name else None
        store.db["document_owners"].insert({"document_id": document_id, "owner": owner, "added": dbmod.now(),
                                            "file_name": name, "title": Path(name).stem if name else None},
                                           ignore=True)


# What a user sees of a document's name: their own (documents_owners) where they gave one that
# differs from the stored row's, else the row's. Another owner's file name or title never shows.
_SEEN_NAMES = ("CASE WHEN o.file_name IS NULL OR o.file_name = d.file_name THEN d.file_name ELSE o.file_name END",
               "CASE WHEN o.file_name IS NULL OR o.file_name = d.file_name THEN d.title ELSE o.title END")


def _seen(store, owner: str | None, where: str = "1", params: list | None = None, shared: bool = True) -> list[dict]:
    """Document rows as ``owner`` sees them (their own names; an ``access`` column says
    ``owner`` or ``shared``), filtered by ``where``: the documents they added and, with
    ``shared``, those shared with them; every document without login."""
    if not owner:
        return list(store.db.query(f"SELECT d.*, 'owner' AS access FROM documents d WHERE {where} ORDER BY d.created",
                                   params or []))
    seen = {"file_name": _SEEN_NAMES[0], "title": _SEEN_NAMES[1]}
    columns = ", ".join(f"{seen[c.name]} AS {c.name}" if c.name in seen else f"d.{c.name}"
                        for c in store.db["documents"].columns)
    rows, binds = sharing.accessible_sql(shared)
    sql = (f"SELECT * FROM (SELECT {columns}, o.access AS access FROM documents d JOIN ({rows}) o "
           f"ON o.document_id = d.id) d WHERE {where} ORDER BY d.created")
    return list(store.db.query(sql, [owner] * binds + list(params or [])))


def owned_ids(store, owner: str | None) -> set[str] | None:
    """Document ids ``owner`` may see (their own and those shared with them); None =
    everything (the app runs without login)."""
    if not owner:
        return None
    rows, binds = sharing.accessible_sql()
    return {row[0] for row in store.db.execute(f"SELECT document_id FROM ({rows})", [owner] * binds)}


def visible_documents(store, owner: str | None) -> list[dict]:
    """The documents ``owner`` may use, under the names they gave them (or their owner's)."""
    return _seen(store, owner)


def not_found(ref: str) -> StoreError:
    """The one refusal for a reference the user cannot use, whether no such document exists
    or it belongs to someone else: the same words either way, so the answer tells nothing
    about other users' libraries."""
    return StoreError(f"no document {str(ref)!r} in your library")


def read_only(doc: dict, doing: str) -> StoreError:
    """The refusal of a change to a document shared with this user (they can see it)."""
    return StoreError(f"{doc['file_name']} is shared with you read-only: only its owner can {doing} it")


def check_access(store, document_id: str, owner: str | None, shared: bool = True) -> dict:
    """The document row that ``document_id`` names in ``owner``'s library (else
    :func:`not_found`): a full id, a unique id prefix, a file name or a title, looked up among
    that owner's documents only (all documents when the app runs without login). Another
    user's document is never matched, counted or named — a prefix, file name or title of it
    gets the same answer as a reference nobody uses. Documents shared with the owner count as
    theirs unless ``shared`` is False (what only an owner may do: share, unshare)."""
    ref = str(document_id or "").strip()
    if not ref:
        raise not_found(ref)
    rows = _seen(store, owner, "d.id = ?", [ref], shared)
    if not rows:  # a prefix compared as a string (not LIKE: '%' or '_' in a reference match nothing)
        rows = _seen(store, owner, "(substr(d.id, 1, ?) = ? OR d.file_name = ? OR d.title = ?)",
                     [len(ref), ref, ref, ref], shared)
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise not_found(ref)
    raise StoreError(f"{ref!r} matches {len(rows)} documents in your library; use more of the id")


def _own(store, document_id: str, owner: str | None) -> dict:
    """A document this user added (not one shared with them): what sharing acts on."""
    if not owner:
        raise StoreError("sharing needs sign-in: without it every document is already everyone's")
    return check_access(store, document_id, owner, shared=False)


def share_document(store, document_id: str, owner: str | None, grantees: str | list[str] | None = None,
                   users: set[str] | None = None) -> str:
    """Share a document of this user's read-only with ``grantees`` (names; default everyone).
    ``users``: the names that can log in (``--auth``; None with Hugging Face sign-in)."""
    return sharing.share(store, _own(store, document_id, owner), owner, grantees, users)


def share_info(hugging_face: bool) -> str:
    """The Share box's note: what a read-only share allows, and (with sign-in with Hugging
    Face, where the app cannot know its users) whom a name reaches."""
    info = "read-only: they can ask, inspect and export it (text and cache, not the source file); Unshare ends it"
    if hugging_face:
        info += (". A name is a Hugging Face username: the share goes to whoever holds that name on Hugging Face, "
                 "now or later")
    return info


def unshare_document(store, document_id: str, owner: str | None, grantees: str | list[str] | None = None) -> str:
    """Stop sharing a document of this user's with ``grantees`` (default: with anyone)."""
    return sharing.unshare(store, _own(store, document_id, owner), owner, grantees)


# --- labels -----------------------------------------------------------------------------
def human_bytes(size: int | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def human_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def job_label(job: dict, now: float | None = None) -> str:
    """queued / reading 43 % · ETA 1 min / failed: reason / ready."""
    now = now or time.time()
    if job["state"] == "queued":
        return "queued" + (f" · {job['message']}" if job.get("message") not in (None, "", "queued") else "")
    if job["state"] == "running":
        progress = float(job.get("progress") or 0.0)
        label = f"reading {progress * 100:.0f} %"
        if progress >= 0.02 and job.get("started"):
            elapsed = now - float(job["started"])
            label += f" · ETA {human_seconds(elapsed * (1 - progress) / progress)}"
        elif job.get("message"):
            label += f" · {job['message']}"
        return label
    if job["state"] == "failed":
        return f"failed: {job.get('error') or 'unknown reason'}"
    return "ready"


def reading_label(job: dict | None) -> str:
    """How far a document without a cache has got, short enough for a picker's label:
    ``queued for reading``, ``reading 43 %``, ``reading failed``, ``not read yet``."""
    if job is None or job["state"] == "done":
        return "not read yet"
    if job["state"] == "queued":
        return "queued for reading"
    if job["state"] == "running":
        return f"reading {float(job.get('progress') or 0.0) * 100:.0f} %"
    return "reading failed"


def short_model(name: str | None) -> str:
    """A model's name for display: a local folder by its last part, a hub id as it is."""
    if not name:
        return ""
    return Path(name).name if Path(name).is_absolute() else name


def library(store, model_name: str, fingerprint: str, owner: str | None = None, now: float | None = None) -> list[dict]:
    """One entry per document the user sees (and per upload still being read or recently
    refused): id, name, state for this model, ready (a cache of this model exists), askable
    (its text is stored: specific questions are answered from its passages while it is read,
    seconds after the upload), reading (how far its reading has got while it has no cache of
    this model: ``reading 43 %``, ``queued for reading``, ``reading failed``, ``not read
    yet``; None once ready), deep_read (its newest ready cache keeps leaf states, so
    questions can be deep-read), size, pages, tokens, model, access ("owner" or "shared":
    read-only) and shared_with (whom the user shares their document with; "*": everyone)."""
    now = now or time.time()
    allowed = owned_ids(store, owner)
    jobs: dict[str, list[dict]] = {}
    for job in store.db["jobs"].rows_where("model = ?", [model_name], order_by="created"):
        jobs.setdefault(job["document_id"], []).append(job)
    entries = []
    documents = {doc["id"]: doc for doc in store.documents()}
    for doc in visible_documents(store, owner):
        caches = store.caches(doc["id"], model_fingerprint=fingerprint)
        doc_jobs = jobs.get(doc["id"], [])
        active = [j for j in doc_jobs if j["state"] in ("queued", "running")]
        if active:
            state = job_label(active[-1], now)
            if caches:
                state = f"ready · re-reading: {state}"
        elif caches:
            state = "ready"
        elif doc_jobs and doc_jobs[-1]["state"] == "failed":
            state = job_label(doc_jobs[-1], now)
        else:
            state = "not read by this model yet"
        entries.append({
            "id": doc["id"], "name": doc["file_name"], "title": doc["title"], "state": state, "ready": bool(caches),
            "askable": True, "reading": None if caches else reading_label(active[-1] if active else
                                                                          (doc_jobs[-1] if doc_jobs else None)),
            "deep_read": bool(caches and caches[0].get("leaf_states_file")),
            "size": doc["bytes"], "pages": doc["pages"], "tokens": doc["token_count"],
            "model": short_model(caches[0]["model_name"] if caches else (doc_jobs[-1]["model"] if doc_jobs else "")),
            "cache_tokens": caches[0]["tokens"] if caches else None,
            "access": doc.get("access") or "owner",
            "shared_with": sharing.shares_of(store, doc["id"], owner) if owner and doc.get("access") == "owner" else [],
        })
    for document_id, doc_jobs in jobs.items():  # uploads not ingested yet, or refused by the worker
        if document_id in documents or (allowed is not None and document_id not in allowed):
            continue
        job = doc_jobs[-1]
        if job["state"] == "done" or (job["state"] == "failed" and now - (job["finished"] or 0) > FAILED_UPLOAD_SECONDS):
            continue
        try:
            upload = store.upload_path(job["upload"]) if job.get("upload") else None
        except StoreError:  # a row naming anything else is not sized
            upload = None
        entries.append({
            "id": document_id, "name": job["file_name"] or document_id[:12], "title": job["file_name"],
            "state": job_label(job, now), "ready": False, "askable": False, "reading": reading_label(job),
            "deep_read": False,
            "size": upload.stat().st_size if upload is not None and upload.exists() else None,
            "pages": None, "tokens": None, "model": short_model(job["model"]), "cache_tokens": None,
            "access": "owner", "shared_with": [],
        })
    return entries


def access_label(entry: dict) -> str:
    """Whose a library row is: ``yours``, ``yours · shared with bob, cy`` (or everyone), or
    ``shared with you (read-only)``."""
    if entry.get("access") == "shared":
        return "shared with you (read-only)"
    shared = entry.get("shared_with") or []
    return f"yours · shared with {sharing.describe(shared)}" if shared else "yours"


def table_rows(entries: list[dict], team: bool = False) -> list[list]:
    """The library table's rows (:data:`HEADERS`; with ``team``, :data:`TEAM_HEADERS`)."""
    return [[e["name"], e["state"], human_bytes(e["size"]), e["pages"] if e["pages"] is not None else "",
             e["tokens"] if e["tokens"] is not None else "", e["model"], DEEP_READ_LABELS[e["deep_read"]],
             e["id"][:12], *([access_label(e)] if team else [])] for e in entries]


def choices(entries: list[dict], ready_only: bool = False) -> list[tuple[str, str]]:
    """(label, document id) pairs for a dropdown."""
    out = []
    for e in entries:
        if e["pages"] is None or (ready_only and not e["ready"]):
            continue  # not ingested yet / no cache for this model
        out.append((f"{e['name']} · {e['id'][:8]}", e["id"]))
    return out


def askable_choices(entries: list[dict]) -> list[tuple[str, str]]:
    """(label, document id) pairs for the chat's picker: every document whose text is stored
    (askable from its passages while it is read), a document still being read labelled with
    its progress (``book.pdf · 3f2a9c1d — reading 43 %``)."""
    return [(f"{e['name']} · {e['id'][:8]}" + (f" — {e['reading']}" if e["reading"] else ""), e["id"])
            for e in entries if e["askable"]]


# --- uploads --------------------------------------------------------------------------------
def check_upload(data: bytes, file_name: str) -> None:
    """Refuse what would fail in the worker anyway, at once and with a reason:
    :class:`IngestError`. Only cheap checks run here, in the upload request — type, size,
    emptiness; a PDF's structure, password and page count; an EPUB's or DOCX's zip directory
    (zip-bomb limits, nothing decompressed), container or main part, DRM, password or macros,
    and what a file named .epub, .docx or .html really is; a text file's encoding and binary
    sniff on its first bytes and its character count from the bytes. The worker reads the
    whole text, counts its tokens and splits it, within the ingest limits."""
    name = Path(file_name).name
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(f"{name}: unsupported file type {suffix or '(none)'}: use {SUPPORTED_NAMES}")
    if not data.strip():
        raise IngestError(f"{name}: the file is empty")
    limits = ingest_limits()
    if len(data) > limits.max_bytes:
        raise IngestError(f"{name}: the file is {len(data) / 2**20:.1f} MB, over the limit of "
                          f"{limits.max_bytes / 2**20:.1f} MB")
    if suffix in SECTIONED_SUFFIXES:  # before the PDF check: a PDF named .docx is refused, not read
        try:
            check_sectioned_upload(SECTIONED_SUFFIXES[suffix], data, zip_limits())
        except DocumentError as exc:
            raise IngestError(f"{name}: {exc}") from None
        return
    if is_pdf(data, name):
        try:
            reader = open_pdf(data)  # an empty user password is opened, a real one refused
            pages = len(reader.pages)
        except DocumentError as exc:
            raise IngestError(f"{name}: {exc}") from None
        except Exception as exc:  # pypdf raises several types on broken files
            raise IngestError(f"{name}: the PDF is corrupt or unreadable ({type(exc).__name__})") from None
        if pages == 0:
            raise IngestError(f"{name}: the PDF has no pages")
        if pages > limits.max_pages:
            raise IngestError(f"{name}: the PDF has {pages} pages, over the limit of {limits.max_pages}")
        return
    check_text_upload(data, name, limits)


def submit_upload_file(queue, path: Path, model_name: str, settings: dict | None = None,
                       owner: str | None = None, ids: list[str] | None = None) -> list[str]:
    """Check and queue one uploaded file the web server wrote to ``path``: its size is
    checked before it is read (the server accepts files up to the larger bundle limit).
    ``ids``: as :func:`submit_uploads`'s."""
    from .ingest import max_upload_bytes

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return [f"✗ {path.name}: cannot read the upload ({exc.strerror})"]
    limit = max_upload_bytes()
    if size > limit:
        return [f"✗ {path.name}: the file is {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB"]
    return submit_uploads(queue, [(path.name, path.read_bytes())], model_name, settings, owner, ids)


def submit_uploads(queue, files: list[tuple[str, bytes]], model_name: str, settings: dict | None = None,
                   owner: str | None = None, ids: list[str] | None = None) -> list[str]:
    """Check and queue uploaded files ``(name, bytes)``; one line per file saying what happened.
    ``ids``, when given, gets the document id of each file accepted (the chat selects it
    once its text is stored)."""
    lines = []
    for name, data in files:
        name = Path(name).name
        try:
            check_upload(data, name)
            job = queue.submit_file(data, name, model_name, settings or None)
        except (IngestError, StoreError, OSError) as exc:
            lines.append(f"✗ {exc}")
            continue
        add_owner(queue.store, job["document_id"], owner, name)
        if ids is not None and job["state"] != "failed":
            ids.append(job["document_id"])
        if job["state"] == "done":
            lines.append(f"✓ {name}: already read — ready")
        elif job["state"] == "failed":
            lines.append(f"✗ {name}: {job['error']}")
        else:
            lines.append(f"✓ {name}: queued for reading")
    return lines


def submit_existing(queue, document_id: str, model_name: str, settings: dict | None = None,
                    owner: str | None = None) -> str:
    """Queue a stored document for a build with this model and settings (its owner only: a
    document shared with this user is read with the caches its owner made)."""
    doc = check_access(queue.store, document_id, owner)
    if doc.get("access") == "shared":
        raise read_only(doc, "read")
    job = queue.submit_document(doc["id"], model_name, settings or None)
    return f"{doc['file_name']}: {'ready' if job['state'] == 'done' else job_label(job)}"


def delete_document(store, document_id: str, owner: str | None = None) -> str:
    """Delete a document (with login: take it out of this user's library; the stored copy
    goes when nobody owns it any more). With login the answer is the same whether others
    still own the content or not: it tells nothing about other users' libraries."""
    doc = check_access(store, document_id, owner)
    if doc.get("access") == "shared":
        raise read_only(doc, "delete")
    if owner:
        store.db.execute("DELETE FROM document_owners WHERE document_id = ? AND owner = ?", [doc["id"], owner])
        sharing.drop_owner(store, doc["id"], owner)
        left = store.db.execute("SELECT COUNT(*) FROM document_owners WHERE document_id = ?", [doc["id"]]).fetchone()[0]
        if not left:
            store.delete_document(doc["id"])
        return f"removed {doc['file_name']} from your library"
    store.delete_document(doc["id"])
    return f"deleted {doc['file_name']}"


# --- sharing ------------------------------------------------------------------------------
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


def export_document(store, document_id: str, fingerprint: str, owner: str | None = None,
                    folder: str | Path | None = None) -> Path:
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
    return export_bundle(store, doc["id"], folder / f"{stem}.homer-bundle.zip", cache_id=caches[0]["id"],
                         file_name=doc["file_name"], title=doc["title"], include_source=not shared)


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
            raise IngestError(f"{file_name}: the source file is {size / 2**20:.1f} MB, over the upload limit of "
                              f"{limit / 2**20:.1f} MB")
        doc = ingest_bytes(path.read_bytes(), file_name, tokenizer)
        return {"text": doc.text, "kind": doc.kind, "page_starts": doc.page_starts, "passages": doc.passages,
                "token_count": doc.token_count, "title": doc.title, "locations": doc.locations}

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


def import_bundle_file(store, path: str | Path, fingerprint: str | None, owner: str | None = None,
                       tokenizer=None) -> dict:
    """Check and import a bundle (refusing a cache of another model, checking its text
    against its source file with the app's ingestion and its cache's tokens with
    ``tokenizer``); returns the cache row (``already_in_store`` when that cache was there).
    The importer becomes an owner of the document: the bundle proved its content (the
    same as uploading it) — unless the import would launder a share (:func:`admission`),
    which is refused before anything is written."""
    from .ingest import ingest_limits

    row = import_bundle(store, path, model_fingerprint=fingerprint, tokenizer=tokenizer,
                        text_from_source=text_from_source(tokenizer), max_chars=ingest_limits().max_chars,
                        admit=admission(store, owner), **bundle_limits())
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
                raise StoreError("refused: this bundle was exported from a document shared read-only with its "
                                 "exporter; only that document's owner can share it with you")
        if not reached or any(row["access"] == "owner" for row in reached):
            return
        raise StoreError(f"refused: {reached[0]['file_name']} is already in your library, shared with you "
                         "read-only: importing it changes nothing")

    return admit
