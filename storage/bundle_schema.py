"""The shape a sharing bundle must have before any of it is trusted: its member names, the id
of a sourceless document (:func:`text_document_id`), size limits, a bounded JSON reader, and
schema checks of the manifest and of the cache member's safetensors header.

Every check raises :class:`BundleError` with one line that names the field and the rule, so
a malformed bundle is refused with a reason instead of crashing on a raw ``KeyError``,
``RecursionError`` or ``SafetensorError``. Nothing here touches a store."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path, PurePosixPath

from .errors import BundleError
from .ids import is_cache_key, is_document_id

FORMAT = "homer-bundle"
FORMAT_VERSION = 1
CACHE_FORMAT = "homer-cache"
CACHE_FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
CACHE_MEMBER = "cache.safetensors"
TEXT_MEMBER = "text.txt"
SOURCE_MEMBER = re.compile(r"source(\.[a-z0-9]{1,15})?")
TEXT_ID_PERSON = b"homer-text-doc"  # the personalisation of text_document_id's BLAKE2b

DEFAULT_BUNDLE_MB = 512  # a full 4k-token fp16 cache of the embedded model is ~94 MB
DEFAULT_TEXT_MB = 16  # 4 M characters of multi-byte text: the ingestion limit (HOMER_MAX_CHARS) of a document
MAX_MEMBERS = 16  # a bundle has 3 or 4; the zip directory is refused above this
MAX_DIRECTORY_BYTES = 64 * 2**10
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_JSON_DEPTH = 8  # the manifest nests 4 deep (document → passages → [s, e, p, q])
MAX_HEADER_BYTES = 1 * 2**20  # safetensors header of a cache: 8 tensors and a few strings
MAX_CACHE_TOKENS = 2**22
MAX_DOCUMENT_TOKENS = 2**28
MAX_PAGES = 2**20
MAX_NAME_CHARS = 255
MAX_LABEL_CHARS = 1000
MAX_SETTINGS_CHARS = 64 * 2**10
FINGERPRINT = re.compile(r"[0-9a-f]{32}")
KINDS = ("pdf", "text", "markdown", "epub", "docx", "html")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# safetensors dtypes → bytes per element
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
KV_DTYPES = ("F16", "BF16", "F32")
INDEX_TENSORS = ("positions", "token_ids", "sources", "char_offsets")
REQUIRED_TENSORS = ("keys", "values", "positions", "token_ids", "sources", "last_logits", "inv_freq")


@dataclass(frozen=True)
class Limits:
    """What one import may read: ``bundle_bytes`` bounds the zip file, each member and all
    members together (inflated); ``text_bytes`` bounds text.txt, which is held in memory for
    its checks."""

    bundle_bytes: int
    text_bytes: int

    @classmethod
    def of(
        cls,
        bundle_bytes: int | None = None,
        *,
        bundle_max_mb: float = DEFAULT_BUNDLE_MB,
        bundle_max_text_mb: float = DEFAULT_TEXT_MB,
    ) -> Limits:
        """The limits of ``bundle_max_mb`` (the app's ``HOMER_BUNDLE_MAX_MB``, 512) and
        ``bundle_max_text_mb`` (``HOMER_BUNDLE_MAX_TEXT_MB``, 16), in MB; an explicit
        ``bundle_bytes`` wins over ``bundle_max_mb``. The text's limit is at most the bundle's."""
        if bundle_bytes is None:
            bundle_bytes = _mb_bytes(bundle_max_mb, "bundle_max_mb")
        text_bytes = min(_mb_bytes(bundle_max_text_mb, "bundle_max_text_mb"), bundle_bytes)
        return cls(bundle_bytes=int(bundle_bytes), text_bytes=int(text_bytes))


def _mb_bytes(mb: float, name: str) -> int:
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError(f"{name} must be a positive number of MB, not {mb!r}")
    return int(mb * 2**20)


def max_bundle_bytes(bundle_max_mb: float = DEFAULT_BUNDLE_MB) -> int:
    """The largest bundle the app and the command accept: ``bundle_max_mb`` (512 MB) in bytes."""
    return Limits.of(bundle_max_mb=bundle_max_mb).bundle_bytes


def text_document_id(text: str) -> str:
    """The id of a document known only by its text (a bundle without its source file):
    personalised BLAKE2b-256 of the UTF-8 text. It has the form of an upload's id (64
    lowercase hex) but comes from another hash function, so no uploaded file's sha256 can
    ever equal it: a bundle cannot pre-seed the id of a genuine upload."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=32, person=TEXT_ID_PERSON).hexdigest()


def source_member(file_name: str) -> str:
    """The bundle member name of a document's source file: ``source`` and the file's suffix."""
    suffix = "".join(ch for ch in Path(file_name).suffix.lower() if ch.isascii() and (ch.isalnum() or ch == "."))[:16]
    return "source" if suffix in ("", ".") else f"source{suffix}"


# --- bounded JSON ---------------------------------------------------------------------------
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (linear; strings are skipped)."""
    brackets = _STRING.sub(b'""', data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(1 if b in (0x5B, 0x7B) else -1 for b in brackets))


def load_json(data: bytes, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
    """Parse ``data`` after bounding its size and nesting depth (a deep document would
    otherwise raise RecursionError); numbers must be finite."""
    if len(data) > max_bytes:
        raise BundleError(f"refused: {what} is larger than {max_bytes} bytes")
    if json_depth(data) > max_depth:
        raise BundleError(f"refused: {what} nests deeper than {max_depth} levels")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BundleError(f"refused: {what} is not valid JSON") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


# --- field checks -----------------------------------------------------------------------------
def _fail(field: str, rule: str):
    raise BundleError(f"refused: manifest.json: {field} {rule}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value, field: str, low: int, high: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value) or not low <= value <= high:
        _fail(field, f"must be a whole number from {low} to {high}")
    return value


def _str(value, field: str, max_chars: int, optional: bool = False, empty: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_chars or (not empty and not value):
        _fail(field, f"must be text of at most {max_chars} characters")
    if CONTROL.search(value):
        _fail(field, "must not hold control characters")
    return value


def _dict(value, field: str, required: tuple, optional: tuple = ()) -> dict:
    if not isinstance(value, dict):
        _fail(field, "must be an object")
    missing = [k for k in required if k not in value]
    if missing:
        _fail(f"{field}.{missing[0]}" if field else missing[0], "is missing")
    extra = [k for k in value if k not in required and k not in optional]
    if extra:
        _fail(f"{field}.{str(extra[0])[:40]}" if field else str(extra[0])[:40], "is not a field of this format")
    return value


def check_file_name(value, field: str = "document.file_name") -> str:
    """A plain file name: no folder, no ``..``, no control characters."""
    _str(value, field, MAX_NAME_CHARS, empty=False)
    if (
        "/" in value
        or "\\" in value
        or value in (".", "..")
        or PurePosixPath(value).name != value
        or value != value.strip()
        or (len(value) > 1 and value[1] == ":")
    ):
        _fail(field, "must be a plain file name (no folders)")
    return value


def check_manifest(manifest) -> dict:
    """Check every field of a parsed manifest; returns it. Consistency with the members'
    contents (text length, source hash, cache header) is checked by the importer."""
    _dict(manifest, "", ("format", "format_version", "document", "model", "settings", "cache", "members"))
    if manifest["format"] != FORMAT:
        raise BundleError("refused: manifest.json does not describe a HOMER bundle")
    if manifest["format_version"] != FORMAT_VERSION or not _is_int(manifest["format_version"]):
        version = manifest["format_version"]
        shown = version if _is_int(version) else repr(str(version)[:20])
        raise BundleError(f"refused: unknown bundle format version {shown} (this version reads {FORMAT_VERSION})")
    doc = _dict(
        manifest["document"],
        "document",
        ("id", "title", "file_name", "kind", "pages", "token_count", "chars", "bytes", "page_starts"),
        ("passages", "locations"),
    )
    if not is_document_id(doc["id"]):
        _fail("document.id", "must be 64 lowercase hex characters")
    _str(doc["title"], "document.title", MAX_LABEL_CHARS, optional=True)
    check_file_name(doc["file_name"])
    if doc["kind"] not in KINDS or not isinstance(doc["kind"], str):
        _fail("document.kind", f"must be one of {', '.join(KINDS)}")
    _int(doc["pages"], "document.pages", 1, MAX_PAGES)
    _int(doc["token_count"], "document.token_count", 0, MAX_DOCUMENT_TOKENS, optional=True)
    _int(doc["chars"], "document.chars", 0, MAX_DOCUMENT_TOKENS * 16)
    _int(doc["bytes"], "document.bytes", 0, 2**50, optional=True)
    starts = doc["page_starts"]
    if (
        not isinstance(starts, list)
        or not starts
        or len(starts) > MAX_PAGES
        or not all(_is_int(s) for s in starts)
        or starts[0] != 0
    ):
        _fail("document.page_starts", "must be a list of character offsets starting at 0")
    if any(b < a for a, b in zip(starts, starts[1:])) or starts[-1] > doc["chars"]:
        _fail("document.page_starts", "must be non-decreasing offsets within the text")
    if len(starts) != doc["pages"]:
        _fail("document.pages", "must equal the number of page starts")
    locations = doc.get("locations")
    if locations is not None:
        if (
            not isinstance(locations, list)
            or len(locations) != len(starts)
            or not all(isinstance(label, str) and len(label) <= MAX_LABEL_CHARS for label in locations)
        ):
            _fail("document.locations", "must be one section label (a string) per page start")
    passages = doc.get("passages")
    if passages is not None:
        if not isinstance(passages, list) or len(passages) > MAX_DOCUMENT_TOKENS:
            _fail("document.passages", "must be a list of [start, end, first page, last page]")
        previous = 0
        for passage in passages:
            if not (isinstance(passage, list) and len(passage) == 4 and all(_is_int(v) for v in passage)):
                _fail("document.passages", "must be a list of [start, end, first page, last page]")
            start, end, first, last = passage
            if not (previous <= start <= end <= doc["chars"] and 1 <= first <= last <= doc["pages"]):
                _fail("document.passages", "must be ordered spans within the text and its pages")
            previous = start
    model = _dict(manifest["model"], "model", ("fingerprint", "name"))
    if not isinstance(model["fingerprint"], str) or not FINGERPRINT.fullmatch(model["fingerprint"]):
        _fail("model.fingerprint", "must be 32 lowercase hex characters")
    _str(model["name"], "model.name", MAX_LABEL_CHARS, optional=True)
    cache = _dict(
        manifest["cache"],
        "cache",
        ("id", "model_fingerprint", "model_name", "settings", "prompt_version", "tokens", "build_seconds"),
    )
    if not is_cache_key(cache["id"]):
        _fail("cache.id", "must be 32 lowercase hex characters")
    if cache["model_fingerprint"] != model["fingerprint"]:
        _fail("cache.model_fingerprint", "must equal model.fingerprint")
    _str(cache["model_name"], "cache.model_name", MAX_LABEL_CHARS, optional=True)
    _str(cache["prompt_version"], "cache.prompt_version", 64)
    _str(cache["settings"], "cache.settings", MAX_SETTINGS_CHARS)
    settings = load_json(cache["settings"].encode("utf-8"), "cache.settings", MAX_SETTINGS_CHARS * 4)
    if not isinstance(settings, dict) or settings != manifest["settings"]:
        _fail("settings", "must be the object in cache.settings")
    _int(cache["tokens"], "cache.tokens", 1, MAX_CACHE_TOKENS)
    seconds = cache["build_seconds"]
    if seconds is not None and (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
        or not 0 <= seconds <= 10**9
    ):
        _fail("cache.build_seconds", "must be a number of seconds")
    members = manifest["members"]
    if not isinstance(members, dict) or not 2 <= len(members) <= 3:
        _fail("members", "must list the cache, the text and at most one source file")
    for required in (CACHE_MEMBER, TEXT_MEMBER):
        if required not in members:
            raise BundleError(f"refused: manifest.json lists no {required}")
    sources = [name for name in members if name not in (CACHE_MEMBER, TEXT_MEMBER)]
    for name in sources:
        if not isinstance(name, str) or not SOURCE_MEMBER.fullmatch(name):
            _fail(f"members.{str(name)[:40]}", "is not a member of this format")
    for name, entry in members.items():
        entry = _dict(entry, f"members.{name}", ("sha256", "bytes"))
        if not is_document_id(entry["sha256"]):
            _fail(f"members.{name}.sha256", "must be 64 lowercase hex characters")
        _int(entry["bytes"], f"members.{name}.bytes", 0, 2**50)
    return manifest


def check_text_fields(manifest: dict, text: str) -> None:
    """The document's character count must be the text's."""
    if manifest["document"]["chars"] != len(text):
        _fail("document.chars", f"is {manifest['document']['chars']}, the text has {len(text)} characters")


# --- safetensors header -----------------------------------------------------------------------
def read_cache_header(fh, file_size: int) -> tuple[dict, dict, int]:
    """(tensors, metadata, data start) of a safetensors cache file, checked: bounded header,
    every tensor's dtype, shape and byte range exact and inside the file, the tensors of a
    HOMER cache present with consistent shapes, string metadata of the right format."""
    head = fh.read(8)
    if len(head) < 8:
        raise BundleError("refused: the cache member is not a safetensors file")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(MAX_HEADER_BYTES, max(file_size - 8, 0)):
        raise BundleError("refused: the cache member has an implausible header")
    raw = fh.read(length)
    header = load_json(raw, "the cache member's header", MAX_HEADER_BYTES, max_depth=3)
    if not isinstance(header, dict):
        raise BundleError("refused: the cache member's header is not an object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise BundleError("refused: the cache member's metadata is not a map of strings")
    if meta.get("format") != CACHE_FORMAT:
        raise BundleError("refused: the cache member is not a HOMER cache")
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise BundleError(
            f"refused: the cache member has cache format version {meta.get('format_version', '?')[:12]!r}, "
            f"this version reads {CACHE_FORMAT_VERSION}"
        )
    start = 8 + length
    data_bytes = file_size - start
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise BundleError(f"refused: the cache member's tensor {name[:40]!r} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if (
            dtype not in DTYPE_BYTES
            or not isinstance(shape, list)
            or len(shape) > 8
            or not all(_is_int(d) and 0 <= d <= 2**40 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
        ):
            raise BundleError(f"refused: the cache member's tensor {name[:40]!r} is malformed")
        count = math.prod(shape)
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != count * DTYPE_BYTES[dtype]:
            raise BundleError(f"refused: the cache member's tensor {name[:40]!r} lies outside its data")
        spans.append((begin, end))
    spans.sort()
    if spans and (
        spans[0][0] != 0 or spans[-1][1] != data_bytes or any(a[1] != b[0] for a, b in zip(spans, spans[1:]))
    ):
        raise BundleError("refused: the cache member's tensors do not tile its data exactly")
    missing = [name for name in REQUIRED_TENSORS if name not in header]
    extra = [name for name in header if name not in REQUIRED_TENSORS and name != "char_offsets"]
    if missing or extra:
        raise BundleError(
            f"refused: the cache member {'lacks' if missing else 'has an unknown'} tensor "
            f"{(missing or extra)[0][:40]!r}"
        )
    keys, values = header["keys"], header["values"]
    if (
        len(keys["shape"]) != 4
        or keys["shape"] != values["shape"]
        or keys["dtype"] not in KV_DTYPES
        or values["dtype"] != keys["dtype"]
        or 0 in keys["shape"]
    ):
        raise BundleError("refused: the cache member's keys and values are not [layers, heads, tokens, dim] alike")
    tokens = keys["shape"][2]
    for name in INDEX_TENSORS:
        if name in header and (header[name]["dtype"] != "I64" or header[name]["shape"] != [tokens]):
            raise BundleError(f"refused: the cache member's {name} is not one int64 per cached token")
    for name in ("last_logits", "inv_freq"):
        if header[name]["dtype"] != "F32" or len(header[name]["shape"]) != 1:
            raise BundleError(f"refused: the cache member's {name} is not a float32 vector")
    for name in ("prefix_len", "suffix_len", "context_len"):
        value = meta.get(name, "0" if name == "context_len" else "")
        if not value.isascii() or not value.isdigit() or len(value) > 12:
            raise BundleError(f"refused: the cache member's {name} is not a whole number")
    if int(meta.get("prefix_len", "0")) + int(meta.get("suffix_len", "0")) > tokens:
        raise BundleError("refused: the cache member's prefix and suffix are longer than the cache")
    return header, meta, start
