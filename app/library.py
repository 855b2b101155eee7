"""The library the UI shows: documents with their build state for the model in use, uploads
checked before they are queued, delete — plain functions over the store and the build queue
(the UI never reaches the engine directly). Who may see what is :mod:`app.ownership`; export
and import of bundles :mod:`app.library_bundles` (both re-exported here).

With login on, every function takes the user name as ``owner``: a user sees the documents
they added (uploaded or imported), and those another owner shares with them read-only
(:mod:`app.sharing`). Documents are stored once per content, so two users who upload the
same file share the stored document and its cache, and each sees it as theirs (under their
own names, with their own shares and threads). Owning comes from the content's source file
(an upload, or a bundle carrying it); a document shared with a user never becomes theirs by
exporting and importing it again."""

from __future__ import annotations

import time
from pathlib import Path

from homer.reading.formats import check_sectioned_upload
from homer.reading.sources import SECTIONED_SUFFIXES, SUPPORTED_NAMES, DocumentError, open_pdf
from storage.errors import StoreError

from . import sharing
from .ingest import IngestError, check_text_upload, ingest_limits, is_pdf, zip_limits

# the library's other rooms, re-exported: callers use library.X
from .library_bundles import (  # noqa: F401
    EXPORT_KEEP_SECONDS,
    admission,
    bundle_limits,
    export_document,
    export_message,
    exports_dir,
    import_bundle_file,
    max_request_bytes,
    prune_exports,
    text_from_source,
)
from .ownership import (  # noqa: F401
    add_owner,
    check_access,
    not_found,
    owned_ids,
    read_only,
    share_document,
    share_info,
    unshare_document,
    visible_documents,
)

SUPPORTED_SUFFIXES = (".pdf", ".epub", ".docx", ".html", ".htm", ".xhtml", ".txt", ".md", ".markdown", ".text")
HEADERS = ["document", "state", "size", "pages", "tokens", "model", "deep read", "id"]
TEAM_HEADERS = HEADERS + ["access"]  # with sign-in: yours, shared by you (with whom), shared with you
DEEP_READ_LABELS = {True: "available", False: "—"}  # the "deep read" column: leaf states kept or not
FAILED_UPLOAD_SECONDS = 600.0  # failed uploads (no document row) stay listed this long


# --- ownership ----------------------------------------------------------------------------
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
        entries.append(
            {
                "id": doc["id"],
                "name": doc["file_name"],
                "title": doc["title"],
                "state": state,
                "ready": bool(caches),
                "askable": True,
                "reading": None
                if caches
                else reading_label(active[-1] if active else (doc_jobs[-1] if doc_jobs else None)),
                "deep_read": bool(caches and caches[0].get("leaf_states_file")),
                "size": doc["bytes"],
                "pages": doc["pages"],
                "tokens": doc["token_count"],
                "model": short_model(
                    caches[0]["model_name"] if caches else (doc_jobs[-1]["model"] if doc_jobs else "")
                ),
                "cache_tokens": caches[0]["tokens"] if caches else None,
                "access": doc.get("access") or "owner",
                "shared_with": sharing.shares_of(store, doc["id"], owner)
                if owner and doc.get("access") == "owner"
                else [],
            }
        )
    for document_id, doc_jobs in jobs.items():  # uploads not ingested yet, or refused by the worker
        if document_id in documents or (allowed is not None and document_id not in allowed):
            continue
        job = doc_jobs[-1]
        if job["state"] == "done" or (
            job["state"] == "failed" and now - (job["finished"] or 0) > FAILED_UPLOAD_SECONDS
        ):
            continue
        try:
            upload = store.upload_path(job["upload"]) if job.get("upload") else None
        except StoreError:  # a row naming anything else is not sized
            upload = None
        entries.append(
            {
                "id": document_id,
                "name": job["file_name"] or document_id[:12],
                "title": job["file_name"],
                "state": job_label(job, now),
                "ready": False,
                "askable": False,
                "reading": reading_label(job),
                "deep_read": False,
                "size": upload.stat().st_size if upload is not None and upload.exists() else None,
                "pages": None,
                "tokens": None,
                "model": short_model(job["model"]),
                "cache_tokens": None,
                "access": "owner",
                "shared_with": [],
            }
        )
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
    return [
        [
            e["name"],
            e["state"],
            human_bytes(e["size"]),
            e["pages"] if e["pages"] is not None else "",
            e["tokens"] if e["tokens"] is not None else "",
            e["model"],
            DEEP_READ_LABELS[e["deep_read"]],
            e["id"][:12],
            *([access_label(e)] if team else []),
        ]
        for e in entries
    ]


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
    return [
        (f"{e['name']} · {e['id'][:8]}" + (f" — {e['reading']}" if e["reading"] else ""), e["id"])
        for e in entries
        if e["askable"]
    ]


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
        raise IngestError(
            f"{name}: the file is {len(data) / 2**20:.1f} MB, over the limit of {limits.max_bytes / 2**20:.1f} MB"
        )
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


def submit_upload_file(
    queue,
    path: Path,
    model_name: str,
    settings: dict | None = None,
    owner: str | None = None,
    ids: list[str] | None = None,
) -> list[str]:
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


def submit_uploads(
    queue,
    files: list[tuple[str, bytes]],
    model_name: str,
    settings: dict | None = None,
    owner: str | None = None,
    ids: list[str] | None = None,
) -> list[str]:
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


def submit_existing(
    queue, document_id: str, model_name: str, settings: dict | None = None, owner: str | None = None
) -> str:
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
