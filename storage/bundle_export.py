"""Writing a sharing bundle: one zip holding a document's cache, its text and (optionally) its
source file, with a manifest that carries the cache key and a checksum of every member
(:mod:`storage.bundle_schema`). A cache's leaf states are never put in a bundle."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from .bundle_schema import CACHE_MEMBER, FORMAT, FORMAT_VERSION, MANIFEST, TEXT_MEMBER, source_member
from .errors import StoreError
from .files import atomic_output
from .store import Store

BLOCK = 1 << 20


def export_bundle(
    store: Store,
    document: str,
    out_path: str | os.PathLike,
    include_source: bool = True,
    cache_id: str | None = None,
    file_name: str | None = None,
    title: str | None = None,
) -> Path:
    """Write ``document``'s newest ready cache (or ``cache_id``) as a bundle at ``out_path``
    (without the cache's leaf states, if it has any). ``file_name`` / ``title``: the names the
    exporting user gave the document (a document is stored once per content; another owner's
    names must not travel in this user's bundle). ``include_source=False``: text and cache
    only — what the app exports for a user the document is shared with read-only (the
    source file is its owner's); it imports under :func:`text_document_id`."""
    doc = dict(store.document(document))
    doc.update({k: v for k, v in (("file_name", file_name), ("title", title)) if v})
    if cache_id is None:
        caches = store.caches(doc["id"])
        if not caches:
            raise StoreError(f"document {doc['file_name']} has no ready cache to export")
        cache = caches[0]
    else:
        cache = store.get_cache(cache_id)
        if cache is None or cache["document_id"] != doc["id"] or cache["status"] != "ready":
            raise StoreError(f"no ready cache {cache_id} for document {doc['file_name']}")
    files = {CACHE_MEMBER: store.cache_file(cache), TEXT_MEMBER: store.document_dir(doc["id"]) / "text.txt"}
    source = store.source_path(doc["id"]) if include_source else None
    if source is not None:
        files[source_member(doc["file_name"])] = source
    members = {}
    for name, path in files.items():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                digest.update(block)
        members[name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    if members[CACHE_MEMBER]["sha256"] != cache["checksum"]:
        raise StoreError(f"cache {cache['id'][:12]} is corrupt on disk; run `homer store check --repair`")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "document": {k: doc[k] for k in ("id", "title", "file_name", "kind", "pages", "token_count", "chars", "bytes")}
        | {
            "page_starts": json.loads(doc["page_starts"] or "[0]"),
            "passages": json.loads(doc["passages"]) if doc.get("passages") else None,
        }
        | ({"locations": json.loads(doc["locations"])} if doc.get("locations") else {}),
        "model": {"fingerprint": cache["model_fingerprint"], "name": cache["model_name"]},
        "settings": json.loads(cache["settings"]),
        "cache": {
            k: cache[k]
            for k in ("id", "model_fingerprint", "model_name", "settings", "prompt_version", "tokens", "build_seconds")
        },
        "members": members,
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_path, out_path.parent, prefix=f".{out_path.name}.") as out:
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
            for name, path in files.items():
                zf.write(path, name, compress_type=zipfile.ZIP_STORED if name == CACHE_MEMBER else zipfile.ZIP_DEFLATED)
    return out_path
