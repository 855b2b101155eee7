"""Sharing bundles: one zip holding a document's cache, its text and (optionally) its
source file, with a manifest that carries the cache key and a checksum of every member.

A cache's leaf states (the optional companion file for deep reads, about 15 KB per document
token with the embedded model) are never put in a bundle: bundles stay small, and the
importer can read the document again with leaf states if it wants deep reads.

``import_bundle`` validates everything before it writes anything; each refusal is a
:class:`BundleError` with a one-line reason."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zipfile
from pathlib import Path, PurePosixPath

from .errors import BundleError, StoreError
from .files import atomic_output
from .store import Store, cache_key

FORMAT = "homer-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CACHE_MEMBER = "cache.safetensors"
TEXT_MEMBER = "text.txt"
MAX_MANIFEST_BYTES = 16 * 2**20


def max_member_bytes() -> int:
    """Largest member accepted on import: ``HOMER_BUNDLE_MAX_MB`` (default 8 GiB)."""
    value = os.environ.get("HOMER_BUNDLE_MAX_MB")
    return int(float(value) * 2**20) if value else 8 * 2**30


def _source_member(file_name: str) -> str:
    suffix = "".join(ch for ch in Path(file_name).suffix.lower() if ch.isalnum() or ch == ".")[:16]
    return f"source{suffix}"


def export_bundle(store: Store, document: str, out_path: str | os.PathLike, include_source: bool = True,
                  cache_id: str | None = None) -> Path:
    """Write ``document``'s newest ready cache (or ``cache_id``) as a bundle at ``out_path``
    (without the cache's leaf states, if it has any)."""
    doc = store.document(document)
    if cache_id is None:
        caches = store.caches(doc["id"])
        if not caches:
            raise StoreError(f"document {doc['file_name']} has no ready cache to export")
        cache = caches[0]
    else:
        cache = store.get_cache(cache_id)
        if cache is None or cache["document_id"] != doc["id"] or cache["status"] != "ready":
            raise StoreError(f"no ready cache {cache_id} for document {doc['file_name']}")
    files = {CACHE_MEMBER: store.root / cache["file"], TEXT_MEMBER: store.document_dir(doc["id"]) / "text.txt"}
    source = store.source_path(doc["id"]) if include_source else None
    if source is not None:
        files[_source_member(doc["file_name"])] = source
    members = {}
    for name, path in files.items():
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        members[name] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    if members[CACHE_MEMBER]["sha256"] != cache["checksum"]:
        raise StoreError(f"cache {cache['id'][:12]} is corrupt on disk; run `homer store check --repair`")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "document": {k: doc[k] for k in ("id", "title", "file_name", "kind", "pages", "token_count", "chars", "bytes")}
        | {"page_starts": json.loads(doc["page_starts"] or "[0]"),
           "passages": json.loads(doc["passages"]) if doc.get("passages") else None},
        "model": {"fingerprint": cache["model_fingerprint"], "name": cache["model_name"]},
        "settings": json.loads(cache["settings"]),
        "cache": {k: cache[k] for k in ("id", "model_fingerprint", "model_name", "settings", "prompt_version",
                                        "tokens", "build_seconds")},
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


def _check_member_name(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise BundleError(f"refused: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise BundleError(f"refused: member {name!r} points outside the bundle (path traversal)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"refused: member {name!r} is a symbolic link")
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise BundleError(f"refused: member {name!r} is not a regular file")


def _read_member(zf: zipfile.ZipFile, name: str, limit: int) -> tuple[str, int]:
    """sha256 and size of a member, reading at most ``limit`` bytes (a zip bomb stops here)."""
    digest, size = hashlib.sha256(), 0
    with zf.open(name) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            size += len(block)
            if size > limit:
                raise BundleError(f"refused: member {name!r} is larger than the limit of {limit} bytes")
            digest.update(block)
    return digest.hexdigest(), size


def _cache_header_metadata(zf: zipfile.ZipFile) -> dict:
    """The safetensors header metadata of the cache member, read without extracting it."""
    with zf.open(CACHE_MEMBER) as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BundleError("refused: the cache member is not a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > 100 * 2**20:
            raise BundleError("refused: the cache member has an implausible header")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise BundleError("refused: the cache member's header is not valid JSON") from None
    return header.get("__metadata__") or {}


def inspect_bundle(path: str | os.PathLike, model_fingerprint: str | None = None,
                   max_bytes: int | None = None) -> dict:
    """Validate a bundle completely without writing anything; returns its manifest."""
    path = Path(path)
    limit = max_member_bytes() if max_bytes is None else max_bytes
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"refused: {path.name} is not a regular file")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"refused: {path.name} is not a HOMER bundle (not a zip file)")
    try:
        with zipfile.ZipFile(path) as zf:
            return _inspect(zf, model_fingerprint, limit)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"refused: {path.name} is a damaged zip file ({exc})") from None


def _inspect(zf: zipfile.ZipFile, model_fingerprint: str | None, limit: int) -> dict:
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise BundleError("refused: the bundle holds the same member name twice")
    for info in infos:
        _check_member_name(info)
        if info.file_size > limit:
            raise BundleError(f"refused: member {info.filename!r} has {info.file_size} bytes, over the limit of {limit}")
    if MANIFEST not in names:
        raise BundleError("refused: the bundle has no manifest.json")
    try:
        manifest = json.loads(zf.read(MANIFEST)[:MAX_MANIFEST_BYTES])
    except ValueError:
        raise BundleError("refused: manifest.json is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError("refused: manifest.json does not describe a HOMER bundle")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"refused: unknown bundle format version {manifest.get('format_version')!r} "
                          f"(this version reads {FORMAT_VERSION})")
    try:
        document, cache, members = manifest["document"], manifest["cache"], manifest["members"]
        fingerprint = cache["model_fingerprint"]
        document_id = document["id"]
    except (KeyError, TypeError):
        raise BundleError("refused: manifest.json lacks the document, cache or members section") from None
    if model_fingerprint is not None and fingerprint != model_fingerprint:
        raise BundleError(f"refused: the cache was built by model {cache.get('model_name') or '?'} "
                          f"(fingerprint {fingerprint[:12]}), not by the model in use ({model_fingerprint[:12]})")
    for required in (CACHE_MEMBER, TEXT_MEMBER):
        if required not in members:
            raise BundleError(f"refused: manifest.json lists no {required}")
    for name in members:
        if name not in names:
            raise BundleError(f"refused: member {name!r} listed in the manifest is missing")
    for name in names:
        if name != MANIFEST and name not in members:
            raise BundleError(f"refused: member {name!r} is not listed in the manifest")
    for name, expected in members.items():
        digest, size = _read_member(zf, name, limit)
        if digest != expected.get("sha256") or size != expected.get("bytes"):
            raise BundleError(f"refused: checksum mismatch for member {name!r} (altered or damaged)")
    meta = _cache_header_metadata(zf)
    if meta.get("format") != "homer-cache":
        raise BundleError("refused: the cache member is not a HOMER cache")
    if meta.get("model_fingerprint") != fingerprint:
        raise BundleError("refused: the cache file's model fingerprint differs from the manifest")
    key = cache_key(document_id, fingerprint, meta.get("settings", "{}"), meta.get("prompt_version", ""))
    if key != cache.get("id"):
        raise BundleError("refused: the cache key does not match the document, model and settings in the manifest")
    sources = [name for name in members if name.startswith("source")]
    for name in sources:
        if hashlib.sha256(zf.read(name)).hexdigest() != document_id:
            raise BundleError("refused: the source file does not match the document's content hash")
    try:
        zf.read(TEXT_MEMBER).decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError("refused: text.txt is not UTF-8") from None
    return manifest


def import_bundle(store: Store, path: str | os.PathLike, model_fingerprint: str | None = None,
                  max_bytes: int | None = None) -> dict:
    """Validate ``path`` completely, then add its document and cache to ``store``. Returns
    the cache row. With ``model_fingerprint`` a cache of another model is refused."""
    manifest = inspect_bundle(path, model_fingerprint, max_bytes)
    document = manifest["document"]
    with zipfile.ZipFile(path) as zf:
        sources = [name for name in manifest["members"] if name.startswith("source")]
        data = zf.read(sources[0]) if sources else None
        existed = store.get_document(document["id"]) is not None
        store.add_document(data, document["file_name"], zf.read(TEXT_MEMBER).decode("utf-8"), document["kind"],
                           document.get("page_starts") or [0], token_count=document.get("token_count"),
                           title=document.get("title"), passages=document.get("passages"),
                           document_id=document["id"], size=document.get("bytes"))
        try:
            with zf.open(CACHE_MEMBER) as fh:
                row = store.install_cache_file(document["id"], fh, build_seconds=manifest["cache"].get("build_seconds"))
        except BaseException:
            if not existed:
                store.delete_document(document["id"])
            raise
    if row["checksum"] != manifest["members"][CACHE_MEMBER]["sha256"]:  # changed on disk while importing
        store.delete_cache(row["id"])
        raise BundleError("refused: the cache changed while it was being imported")
    return row
