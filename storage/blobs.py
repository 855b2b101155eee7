"""Content-addressed, immutable blobs in a folder or an object store.

A blob location is a local folder (the default, as today) or an object-store URL opened
through fsspec:

    /var/lib/homer/blobs                  a folder (``file://`` accepted)
    s3://bucket/prefix                    AWS S3, R2, MinIO, SeaweedFS … (s3fs); the endpoint
                                          and credentials come from the usual AWS variables
                                          (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``,
                                          ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
                                          ``AWS_PROFILE`` …), read by botocore itself
    hf://buckets/<owner>/<name>/prefix    a Hugging Face Storage Bucket (huggingface_hub's
                                          filesystem; the token from ``HF_TOKEN`` or the login)

Layout under the location::

    blobs/ab/<sha256>        one object per blob, named by the sha256 of its bytes
    pointers/<name>          small mutable objects (e.g. the newest index snapshot), each
                             overwritten whole by one write
    tmp/                     a folder location's temp files (an object store needs none)

A blob is written once and sequentially — to a temp file renamed into place in a folder, by
a single PUT (or one multipart upload, which an object store also publishes whole) in an
object store — and never rewritten: putting bytes whose key exists is a no-op. On S3 the
object also carries its key in its user metadata (``x-amz-meta-sha256``), so a sound object
can be re-indexed from the object alone; elsewhere the name is the key. Every read checks
the sha256 of what came back: a damaged object raises :class:`BlobCorrupt`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import StoreError
from .files import fsync_dir, owner_token

KEY_METADATA = "sha256"
CHUNK = 8 << 20
SPOOL_IN_MEMORY = 64 << 20
_KEY = re.compile(r"[0-9a-f]{64}")
_POINTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class BlobError(StoreError):
    """A blob location or a blob cannot be used (bad URL, unreachable store, …)."""


class BlobMissing(BlobError):
    """No blob of that key in the location."""


class BlobCorrupt(BlobError):
    """A blob's bytes do not hash to its key: it was damaged or altered and is never used."""


def blob_key(data: bytes) -> str:
    """The key of ``data``: its sha256, 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> str:
    """``key`` if it is a well-formed blob key, else :class:`BlobError` (no other string ever
    becomes part of an object name)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise BlobError(f"not a blob key (64 lowercase hex digits): {str(key)[:80]!r}")
    return key


@dataclass(frozen=True)
class BlobLocation:
    """A parsed location: ``protocol`` is ``file``, ``s3`` or ``hf``; ``root`` is the path
    fsspec takes (an absolute folder, ``bucket/prefix`` or ``buckets/owner/name/prefix``)."""

    url: str
    protocol: str
    root: str

    @property
    def remote(self) -> bool:
        return self.protocol != "file"

    def filesystem(self):
        """A fresh fsspec filesystem for this location (no instance shared with other callers)."""
        if self.protocol == "file":
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem(auto_mkdir=True)
        if self.protocol == "s3":
            try:
                import s3fs
            except ImportError as exc:  # a runtime requirement; this message names the fix
                raise BlobError("an s3:// location needs the s3fs package (pip install -r requirements.txt)") from exc
            # endpoint, region and credentials: botocore reads the AWS variables and profiles itself
            return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        from huggingface_hub import HfFileSystem

        return HfFileSystem(skip_instance_cache=True)


def parse_location(location: str | os.PathLike) -> BlobLocation:
    """Parse a folder or an object-store URL; :class:`BlobError` with the accepted forms for
    anything else."""
    text = os.fspath(location)
    if "://" not in text:
        if not text:
            raise BlobError("an empty blob location")
        return BlobLocation(text, "file", str(Path(text).expanduser().resolve()))
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    parts = [p for p in rest.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise BlobError(f"a blob location may not contain '.' or '..': {text!r}")
    if scheme == "file":
        return BlobLocation(text, "file", str(Path("/" + "/".join(parts)).resolve()))
    if scheme in ("s3", "s3a"):
        if not parts or not _S3_BUCKET.fullmatch(parts[0]):
            raise BlobError(
                f"not an S3 location (s3://bucket/prefix, bucket of 3-63 lowercase letters, digits, "
                f"'.' or '-'): {text!r}"
            )
        return BlobLocation(text, "s3", "/".join(parts))
    if scheme == "hf":
        if len(parts) < 3 or parts[0] != "buckets" or not all(_HF_PART.fullmatch(p) for p in parts[1:3]):
            raise BlobError(
                f"only Hugging Face Storage Buckets hold blobs (hf://buckets/<owner>/<name>/prefix): {text!r}"
            )
        return BlobLocation(text, "hf", "/".join(parts))
    raise BlobError(
        f"unsupported blob location {text!r}: use a folder, s3://bucket/prefix or hf://buckets/<owner>/<name>/prefix"
    )


class BlobStore:
    """Immutable blobs keyed by sha256 at one location (see the module docstring)."""

    def __init__(self, location: str | os.PathLike | BlobLocation, filesystem=None):
        self.location = location if isinstance(location, BlobLocation) else parse_location(location)
        self.fs = filesystem if filesystem is not None else self.location.filesystem()

    def __repr__(self) -> str:
        return f"BlobStore({self.location.url!r})"

    # --- names ---------------------------------------------------------------------------
    def object_path(self, key: str) -> str:
        """The object (or file) name of blob ``key`` inside the location."""
        check_key(key)
        return f"{self.location.root}/blobs/{key[:2]}/{key}"

    def pointer_path(self, name: str) -> str:
        if not _POINTER.fullmatch(name or ""):
            raise BlobError(f"not a pointer name: {str(name)[:80]!r}")
        return f"{self.location.root}/pointers/{name}"

    def _local_temp(self) -> Path:
        folder = Path(self.location.root) / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.{owner_token().replace(':', '-')}.tmp"

    def _put_options(self, key: str) -> dict:
        return {"Metadata": {KEY_METADATA: key}} if self.location.protocol == "s3" else {}

    # --- writing -------------------------------------------------------------------------
    def put(self, source: bytes | str | os.PathLike | BinaryIO) -> str:
        """Store ``source`` (bytes, a file path or a readable binary file) and return its key.
        A key already present is left as it is (same key, same bytes)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            key = blob_key(data)
            if not self.exists(key):
                self._write_bytes(self.object_path(key), data, self._put_options(key))
            return key
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                key = hashlib.file_digest(fh, "sha256").hexdigest()
            if not self.exists(key):
                self._write_file(self.object_path(key), Path(source), self._put_options(key), key)
            return key
        with tempfile.TemporaryDirectory(prefix="homer-blob-") as folder:  # a stream: hashed while spooled
            spooled = Path(folder) / "blob"
            with open(spooled, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            return self.put(spooled)

    def _write_bytes(self, path: str, data: bytes, options: dict) -> None:
        if self.location.remote:
            self._remote(lambda: self.fs.pipe_file(path, data, **options), f"writing {path}")
        else:
            self._install_local(path, lambda out: out.write(data))

    def _write_file(self, path: str, source: Path, options: dict, key: str) -> None:
        """Upload (one PUT, or a multipart upload published whole) or copy ``source``; a
        folder's copy is hashed on the way and refused if the file changed since it was
        hashed (an upload is not read back: the file must not change while it is put)."""
        if self.location.remote:
            self._remote(lambda: self.fs.put_file(str(source), path, **options), f"writing {path}")
            return

        def copy(out):
            digest = hashlib.sha256()
            with open(source, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != key:
                raise BlobCorrupt(f"{source} changed while it was stored as blob {key[:12]}; not stored")

        self._install_local(path, copy)

    def _install_local(self, path: str, write) -> None:
        """Temp file in the location's tmp/, fsync, rename into place, fsync the folder."""
        target, temp = Path(path), self._local_temp()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "xb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
            fsync_dir(target.parent)
        finally:
            temp.unlink(missing_ok=True)

    def write_pointer(self, name: str, value: dict) -> None:
        """Write the small JSON object ``pointers/<name>``, replacing it whole in one write."""
        self._write_bytes(self.pointer_path(name), json.dumps(value, sort_keys=True).encode("utf-8"), {})

    def read_pointer(self, name: str) -> dict | None:
        """The JSON object ``pointers/<name>``, or None when there is none."""
        path = self.pointer_path(name)
        try:
            data = self._remote(lambda: self.fs.cat_file(path), f"reading {path}")
        except BlobMissing:
            return None
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise BlobCorrupt(f"pointer {name!r} at {self.location.url} is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise BlobCorrupt(f"pointer {name!r} at {self.location.url} is not a JSON object")
        return value

    # --- reading -------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        path = self.object_path(key)
        return bool(self._remote(lambda: self.fs.exists(path), f"looking up {path}"))

    def size(self, key: str) -> int:
        path = self.object_path(key)
        return int(self._remote(lambda: self.fs.size(path), f"looking up {path}"))

    def get(self, key: str) -> bytes:
        """The bytes of blob ``key``, checked against the key (:class:`BlobCorrupt`)."""
        path = self.object_path(key)
        data = self._remote(lambda: self.fs.cat_file(path), f"reading {path}")
        self._check(key, hashlib.sha256(data).hexdigest())
        return data

    def open(self, key: str) -> BinaryIO:
        """A readable binary file of blob ``key``, positioned at its start, whose whole
        content was checked against the key before it is returned (a remote blob is spooled
        to memory, or to a temp file beyond :data:`SPOOL_IN_MEMORY` bytes)."""
        if not self.location.remote:
            path = self.object_path(key)
            try:
                fh = open(path, "rb")
            except FileNotFoundError:
                raise BlobMissing(f"no blob {key[:12]} at {self.location.url}") from None
            try:
                self._check(key, hashlib.file_digest(fh, "sha256").hexdigest())
                fh.seek(0)
                return fh
            except BaseException:
                fh.close()
                raise
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            self._copy_checked(key, spool)
            spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise

    def download(self, key: str, target: str | os.PathLike) -> Path:
        """Copy blob ``key`` to the local file ``target`` (temp name beside it, checked, then
        renamed into place): ``target`` only ever holds sound bytes."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "xb") as out:
                self._copy_checked(key, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return target

    def _copy_checked(self, key: str, out: BinaryIO) -> None:
        """Stream blob ``key`` into ``out`` in one pass, hashing as it goes."""
        path, digest = self.object_path(key), hashlib.sha256()

        def copy():
            with self.fs.open(path, "rb", block_size=CHUNK) as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

        self._remote(copy, f"reading {path}")
        self._check(key, digest.hexdigest())

    def recorded_key(self, key: str) -> str | None:
        """The key the object carries in its own metadata (S3 only; None elsewhere, where
        its name is its key) — what a repair re-indexes a sound object by."""
        if self.location.protocol != "s3":
            return None
        path = self.object_path(key)
        meta = self._remote(lambda: self.fs.metadata(path), f"looking up {path}")
        return meta.get(KEY_METADATA)

    def keys(self) -> Iterator[str]:
        """Every blob key at the location (listing order)."""
        base = f"{self.location.root}/blobs"
        try:
            names = self._remote(lambda: self.fs.find(base), f"listing {base}")
        except BlobMissing:
            return
        for name in names:
            key = name.rstrip("/").rsplit("/", 1)[-1]
            if _KEY.fullmatch(key):
                yield key

    def _check(self, key: str, digest: str) -> None:
        if digest != key:
            raise BlobCorrupt(
                f"blob {key[:12]} at {self.location.url} is corrupt: its bytes hash to {digest[:12]}; it is not used"
            )

    # --- deleting ------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Remove blob ``key`` (nothing happens when there is none)."""
        path = self.object_path(key)
        try:
            self._remote(lambda: self.fs.rm_file(path), f"deleting {path}")
        except BlobMissing:
            pass

    def _remote(self, action, what: str):
        """Run one filesystem call; a missing object is :class:`BlobMissing`, any other
        failure (unreachable endpoint, refused credentials …) one line of :class:`BlobError`."""
        try:
            return action()
        except BlobError:
            raise
        except FileNotFoundError as exc:
            raise BlobMissing(f"nothing at {what.split(' ', 1)[-1]} ({self.location.url})") from exc
        except Exception as exc:
            detail = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise BlobError(f"the blob location {self.location.url} failed {what}: {detail}") from exc
