"""Checking a bundle from someone else before any of it is trusted (see :mod:`storage.bundles`):
the zip read within bounds (the project's one bounded zip reader,
:class:`homer.reading.formats.zipsafe.BoundedZip`, with a bundle's limits and this module's
words for its refusals) and its members staged as temp files (hashed on the way), the
manifest checked against the schema and against the members, the document's id recomputed
from the content, and the cache tied to the text. Nothing here writes to a store: the
members go to temp files the caller's :class:`Staging` names and removes."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from homer.reading.formats.zipsafe import ZIP_ERRORS, BoundedZip, ZipLimits, ZipRefusal

from . import bundle_schema as schema
from .bundle_schema import (
    CACHE_MEMBER,
    DEFAULT_BUNDLE_MB,
    DEFAULT_TEXT_MB,
    MANIFEST,
    MAX_DIRECTORY_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    TEXT_ID_PERSON,
    TEXT_MEMBER,
    Limits,
    source_member,
)
from .errors import BundleError, StoreError
from .ids import cache_key

TextFromSource = Callable[[Path, str], dict]
"""``(source file, file name) -> {"text", and optionally "kind", "page_starts", "passages",
"token_count", "title", "locations"}``: what the app's ingestion reads from a source file."""


@dataclass
class CheckedBundle:
    """A bundle that passed every check, with its members staged as temp files."""

    manifest: dict
    document_id: str  # verified: sha256 of the source, or text_document_id(text)
    cache_key: str  # of the verified id
    text: str
    fields: dict  # the document row's fields (from the ingestion where there is a source)
    cache_file: Path
    source_file: Path | None

    @property
    def rekeyed(self) -> bool:
        return self.document_id != self.manifest["document"]["id"]


class Staging:
    """Temp files of one import; :meth:`cleanup` removes exactly these and nothing else."""

    def __init__(self, new_path: Callable[[str], Path]):
        self._new_path, self.paths = new_path, []

    def new(self, suffix: str) -> Path:
        path = self._new_path(suffix)
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def zip_limits(limits: Limits) -> ZipLimits:
    """What the zip reader may read of a bundle: at most :data:`MAX_MEMBERS` members in a
    directory of at most :data:`MAX_DIRECTORY_BYTES` (bounded before it is parsed), each
    member and all of them together within ``limits.bundle_bytes`` (inflated), no ratio
    (a cache is stored, not deflated)."""
    return ZipLimits(
        max_members=MAX_MEMBERS,
        max_total_bytes=limits.bundle_bytes,
        max_member_bytes=limits.bundle_bytes,
        max_ratio=None,
        max_directory_bytes=MAX_DIRECTORY_BYTES,
    )


def _reason(name: str, refusal: ZipRefusal) -> str:
    """How the zip reader's refusal of bundle ``name`` reads (one line, "refused: ...")."""
    facts = refusal.facts
    member = facts.get("member")
    shown = repr(str(member)[:60])
    match refusal.kind:
        case "not-zip":
            return f"refused: {name} is not a HOMER bundle (not a zip file)"
        case "damaged":
            return f"refused: {name} is a damaged zip file ({_first_line(facts['detail'])})"
        case "empty":
            return "refused: the bundle has no manifest.json"
        case "members":
            return f"refused: {name} holds {facts['count']} members; a bundle has at most {facts['limit']}"
        case "directory":
            return f"refused: {name} has a zip directory of {facts['size']} bytes, over the limit of {facts['limit']}"
        case "encrypted":
            return f"refused: member {shown} is encrypted"
        case "false-size":
            return (
                f"refused: member {shown} declares {facts['declared']} bytes but holds {facts['compressed']} "
                "compressed (altered or damaged)"
            )
        case "ratio":
            return f"refused: member {shown} expands {facts['ratio']:.0f} times, over the limit of {facts['limit']:.0f}"
        case "member-size":
            return f"refused: member {shown} has {facts['size']} bytes, over the limit of {facts['limit']}"
        case "total-size":
            return f"refused: the bundle's members hold {facts['size']} bytes, over the limit of {facts['limit']}"
        case "missing":
            return f"refused: member {member!r} listed in the manifest is missing"
        case "member-inflates":
            return f"refused: member {member!r} is larger than the limit of {facts['limit']} bytes"
        case _:  # total-inflates
            return f"refused: the bundle inflates to more than the limit of {facts['limit']} bytes"


def _check_member_name(info: zipfile.ZipInfo) -> None:
    """A bundle's member is a plain file at a relative path inside the bundle, stored or
    deflated (the reader has already refused an encrypted one)."""
    name = info.filename
    path = PurePosixPath(name)
    shown = repr(name[:60])
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":") or path.is_absolute():
        raise BundleError(f"refused: member {shown} has an absolute path")
    if ".." in path.parts:
        raise BundleError(f"refused: member {shown} points outside the bundle (path traversal)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise BundleError(f"refused: member {shown} is a symbolic link")
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise BundleError(f"refused: member {shown} is not a regular file")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BundleError(f"refused: member {shown} uses an unsupported compression method")


def _stream(
    archive: BoundedZip, member: str, out_path: Path, limit: int, text_hash: bool = False
) -> tuple[str, int, str | None]:
    """Inflate a member to ``out_path`` in blocks (:meth:`BoundedZip.blocks`: stopped as soon
    as more than ``limit`` bytes come out), hashing on the way. Returns (sha256, size, text
    id digest or None)."""
    digest, size = hashlib.sha256(), 0
    text_digest = hashlib.blake2b(digest_size=32, person=TEXT_ID_PERSON) if text_hash else None
    with open(out_path, "xb") as out:
        for block in archive.blocks(member, limit):
            size += len(block)
            digest.update(block)
            if text_digest is not None:
                text_digest.update(block)
            try:
                out.write(block)
            except OSError as exc:
                raise StoreError(
                    f"cannot write the bundle's members to the store's temp folder ({exc.strerror})"
                ) from None
    return digest.hexdigest(), size, text_digest.hexdigest() if text_digest is not None else None


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_bundle(
    path: str | os.PathLike,
    staging: Staging,
    model_fingerprint: str | None = None,
    limits: Limits | None = None,
    tokenizer=None,
    text_from_source: TextFromSource | None = None,
    max_chars: int | None = None,
) -> CheckedBundle:
    """Check a bundle completely, staging its members through ``staging``; writes nothing else.
    ``max_chars``: the most characters a document may have (the app passes its ingestion
    limit, so an imported text costs no more to check, tokenise and build than an upload)."""
    path = Path(path)
    limits = limits or Limits.of()
    name = path.name[:80]
    try:
        info = os.lstat(path)
    except OSError:
        raise BundleError(f"refused: {name} is not a regular file") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"refused: {name} is not a regular file")
    if info.st_size > limits.bundle_bytes:
        raise BundleError(
            f"refused: {name} is {info.st_size / 2**20:.1f} MB, over the limit of "
            f"{limits.bundle_bytes / 2**20:.1f} MB for bundles (HOMER_BUNDLE_MAX_MB)"
        )
    try:
        with open(path, "rb") as fh, BoundedZip(fh, zip_limits(limits)) as archive:
            return _check_open(archive, staging, model_fingerprint, limits, tokenizer, text_from_source, max_chars)
    except ZipRefusal as refusal:
        raise BundleError(_reason(name, refusal)) from None
    except StoreError:
        raise
    except ZIP_ERRORS as exc:
        raise BundleError(f"refused: {name} is a damaged zip file ({_first_line(exc)})") from None


def _check_open(
    archive: BoundedZip,
    staging: Staging,
    model_fingerprint: str | None,
    limits: Limits,
    tokenizer,
    text_from_source: TextFromSource | None,
    max_chars: int | None = None,
) -> CheckedBundle:
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infos:  # the reader has bounded their number, sizes and encryption
        _check_member_name(info)
        if info.filename in by_name:
            raise BundleError("refused: the bundle holds the same member name twice")
        by_name[info.filename] = info
    if MANIFEST not in by_name:
        raise BundleError("refused: the bundle has no manifest.json")
    raw = archive.read(MANIFEST, MAX_MANIFEST_BYTES)
    manifest = schema.check_manifest(schema.load_json(raw, "manifest.json", MAX_MANIFEST_BYTES))
    document, cache, members = manifest["document"], manifest["cache"], manifest["members"]
    fingerprint = cache["model_fingerprint"]
    if model_fingerprint is not None and fingerprint != model_fingerprint:
        raise BundleError(
            f"refused: the cache was built by model {(cache.get('model_name') or '?')[:80]} "
            f"(fingerprint {fingerprint[:12]}), not by the model in use ({model_fingerprint[:12]})"
        )
    for member in members:
        if member not in by_name:
            raise BundleError(f"refused: member {member!r} listed in the manifest is missing")
    for member in by_name:
        if member != MANIFEST and member not in members:
            raise BundleError(f"refused: member {member[:60]!r} is not listed in the manifest")
    source_name = next((m for m in members if m not in (CACHE_MEMBER, TEXT_MEMBER)), None)
    if source_name is not None and source_name != source_member(document["file_name"]):
        raise BundleError(
            f"refused: the source member {source_name!r} does not match the file name {document['file_name'][:80]!r}"
        )
    for member, entry in members.items():  # sizes first: nothing is inflated for a bundle over its limits
        limit = limits.text_bytes if member == TEXT_MEMBER else limits.bundle_bytes
        if entry["bytes"] > limit:
            raise BundleError(f"refused: member {member!r} has {entry['bytes']} bytes, over the limit of {limit}")
        if by_name[member].file_size != entry["bytes"]:
            raise BundleError(f"refused: checksum mismatch for member {member!r} (altered or damaged)")

    staged: dict[str, Path] = {}
    text_id = None
    for member in (TEXT_MEMBER, *([source_name] if source_name else []), CACHE_MEMBER):
        limit = limits.text_bytes if member == TEXT_MEMBER else limits.bundle_bytes
        staged[member] = staging.new(
            ".txt" if member == TEXT_MEMBER else ".safetensors" if member == CACHE_MEMBER else ".source"
        )
        digest, size, text_digest = _stream(archive, member, staged[member], limit, text_hash=member == TEXT_MEMBER)
        if digest != members[member]["sha256"] or size != members[member]["bytes"]:
            raise BundleError(f"refused: checksum mismatch for member {member!r} (altered or damaged)")
        if member == TEXT_MEMBER:
            text_id = text_digest

    try:
        text = staged[TEXT_MEMBER].read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError("refused: text.txt is not UTF-8") from None
    if not text.strip():
        raise BundleError("refused: text.txt is empty")
    if max_chars is not None and len(text) > max_chars:
        raise BundleError(
            f"refused: text.txt has {len(text)} characters, over the limit of {max_chars} for a "
            "document (HOMER_MAX_CHARS)"
        )
    schema.check_text_fields(manifest, text)

    cache_file = staged[CACHE_MEMBER]
    with open(cache_file, "rb") as fh:
        header, meta, _ = schema.read_cache_header(fh, cache_file.stat().st_size)
    for field, value in (
        ("model_fingerprint", fingerprint),
        ("settings", cache["settings"]),
        ("prompt_version", cache["prompt_version"]),
        ("model_name", cache["model_name"] or ""),
    ):
        if meta.get(field, "") != value:
            raise BundleError(f"refused: the cache file's {field.replace('_', ' ')} differs from the manifest")
    tokens = header["keys"]["shape"][2]
    if tokens != cache["tokens"]:
        raise BundleError(f"refused: the cache file holds {tokens} tokens, the manifest says {cache['tokens']}")
    if cache_key(document["id"], fingerprint, meta["settings"], meta["prompt_version"]) != cache["id"]:
        raise BundleError("refused: the cache key does not match the document, model and settings in the manifest")

    if source_name is not None:
        document_id, fields = _verify_source(
            manifest, staged[source_name], members[source_name]["sha256"], text, text_from_source
        )
    else:
        document_id = text_id
        fields = {k: document.get(k) for k in ("kind", "page_starts", "passages", "token_count", "title", "locations")}
    fields.update(file_name=document["file_name"], bytes=document["bytes"])
    _check_cache_against_text(cache_file, header, meta, text, tokenizer)
    return CheckedBundle(
        manifest=manifest,
        document_id=document_id,
        cache_key=cache_key(document_id, fingerprint, meta["settings"], meta["prompt_version"]),
        text=text,
        fields=fields,
        cache_file=cache_file,
        source_file=staged[source_name] if source_name else None,
    )


def _verify_source(
    manifest: dict, source: Path, digest: str, text: str, text_from_source: TextFromSource | None
) -> tuple[str, dict]:
    """The document id and row fields of a bundle with its source file: the source must hash
    to the id and text.txt must be what the app's ingestion reads from the source."""
    document = manifest["document"]
    if digest != document["id"]:
        raise BundleError("refused: the source file does not match the document's content hash")
    if text_from_source is None:
        raise BundleError(
            "refused: the bundle's text cannot be checked against its source file here "
            "(import it through the app or the homer command)"
        )
    try:
        extracted = text_from_source(source, document["file_name"])
    except BundleError:
        raise
    except Exception as exc:  # the ingestion refuses (or fails on) a hostile source file
        raise BundleError(f"refused: the source file cannot be read: {_first_line(exc)}") from None
    if not isinstance(extracted, dict) or extracted.get("text") != text:
        raise BundleError("refused: text.txt is not the text of the source file (altered)")
    fields = {k: document.get(k) for k in ("kind", "page_starts", "passages", "token_count", "title", "locations")}
    fields.update({k: v for k, v in extracted.items() if k in fields and v is not None})
    if "text" in extracted and "kind" in extracted:  # the source was read: its sections are what it holds
        fields["locations"] = extracted.get("locations")
    return document["id"], fields


def _check_cache_against_text(cache_file: Path, header: dict, meta: dict, text: str, tokenizer) -> None:
    """Every kept document token must be the text's token at that index and offset (with a
    tokenizer: the text is tokenised as a build does); without one, indexes and offsets
    must at least lie inside the text."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(cache_file), framework="pt") as fh:
            sources = fh.get_tensor("sources")
            token_ids = fh.get_tensor("token_ids")
            offsets = fh.get_tensor("char_offsets") if "char_offsets" in header else None
    except Exception as exc:  # the header was checked; this is a damaged file all the same
        raise BundleError(f"refused: the cache member cannot be read ({_first_line(exc)})") from None
    kept = sources >= 0
    if bool((sources < -1).any()):
        raise BundleError("refused: the cache member's token sources are out of range")
    context_len = int(meta.get("context_len", "0")) or None
    if offsets is not None:
        if bool((offsets[~kept] != -1).any()) or bool(((offsets[kept] < 0) | (offsets[kept] >= len(text))).any()):
            raise BundleError("refused: the cache's character offsets do not lie inside the text")
    if tokenizer is None:
        bound = context_len or len(text)
        if bool((sources >= bound).any()):
            raise BundleError("refused: the cache's token sources do not lie inside the text")
        return
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(list(encoded.input_ids), dtype=torch.int64)
    if context_len is not None and context_len != len(ids):
        raise BundleError(f"refused: the cache was built from {context_len} tokens, the text has {len(ids)}")
    if bool((sources >= len(ids)).any()):
        raise BundleError("refused: the cache's token sources do not lie inside the text")
    index = sources[kept]
    if not torch.equal(ids[index], token_ids[kept]):
        raise BundleError("refused: the cache's tokens are not the tokens of text.txt (altered)")
    if offsets is not None:
        starts = torch.tensor([start for start, _ in encoded.offset_mapping], dtype=torch.int64)
        if not torch.equal(starts[index], offsets[kept]):
            raise BundleError("refused: the cache's character offsets are not those of text.txt (altered)")


def inspect_bundle(
    path: str | os.PathLike,
    model_fingerprint: str | None = None,
    max_bytes: int | None = None,
    tokenizer=None,
    text_from_source: TextFromSource | None = None,
    max_chars: int | None = None,
    *,
    bundle_max_mb: float = DEFAULT_BUNDLE_MB,
    bundle_max_text_mb: float = DEFAULT_TEXT_MB,
) -> dict:
    """Check a bundle completely without touching any store (members are staged in a private
    temp folder, removed after); returns its manifest. The arguments are
    :func:`storage.bundle_import.import_bundle`'s."""
    with tempfile.TemporaryDirectory(prefix="homer-bundle-check-") as folder:
        staging = Staging(lambda suffix: Path(folder) / f"{uuid.uuid4().hex}{suffix}")
        try:
            limits = Limits.of(max_bytes, bundle_max_mb=bundle_max_mb, bundle_max_text_mb=bundle_max_text_mb)
            return check_bundle(
                path, staging, model_fingerprint, limits, tokenizer, text_from_source, max_chars
            ).manifest
        finally:
            staging.cleanup()
