"""The exact forms of the identifiers the store turns into paths, and the checks that keep
every path it writes, reads or deletes inside the store root.

A document id is the sha256 of the document's bytes (64 lowercase hex digits); a cache key
is 32 lowercase hex digits (:func:`cache_key`). Anything else — a folder path,
``..``, an absolute path, upper case, a shorter prefix — is refused before the file system is
touched, so an identifier from a bundle, a request or an old index can never name a path
outside the store (or the store itself)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from .errors import StoreError

DOCUMENT_ID = re.compile(r"[0-9a-f]{64}")
CACHE_KEY = re.compile(r"[0-9a-f]{32}")
UPLOAD = re.compile(r"uploads/[0-9a-f]{64}(\.[a-z0-9]{1,15})?")  # app.tasks.submit_file names them so


def cache_key(document_id: str, model_fingerprint: str, settings_json: str, prompt_version: str) -> str:
    """What identifies a cache: document content hash, model fingerprint, HOMER settings and
    prompt template version."""
    material = json.dumps([document_id, model_fingerprint, settings_json, prompt_version])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_document_id(value) -> bool:
    return isinstance(value, str) and DOCUMENT_ID.fullmatch(value) is not None


def is_cache_key(value) -> bool:
    return isinstance(value, str) and CACHE_KEY.fullmatch(value) is not None


def check_document_id(value) -> str:
    """``value`` if it is a document id (64 lowercase hex digits), else :class:`StoreError`."""
    if not is_document_id(value):
        raise StoreError(f"{_shown(value)} is not a document id (64 lowercase hex digits)")
    return value


def check_cache_key(value) -> str:
    """``value`` if it is a cache key (32 lowercase hex digits), else :class:`StoreError`."""
    if not is_cache_key(value):
        raise StoreError(f"{_shown(value)} is not a cache id (32 lowercase hex digits)")
    return value


def check_upload_name(value) -> str:
    """``value`` if it names an upload the way the queue writes them (``uploads/<document
    id><suffix>``), else :class:`StoreError`: a job row's upload is read and deleted, so it
    must never name anything else."""
    if not isinstance(value, str) or UPLOAD.fullmatch(value) is None:
        raise StoreError(f"{_shown(value)} is not an upload of the store")
    return value


def inside(root: Path, path: Path) -> Path:
    """``path`` (absolute, under ``root``) after proving it stays inside the store: no ``..``,
    and no component below ``root`` is a symbolic link (a link planted in the store could
    otherwise lead a write or a delete anywhere). The last component may be missing, or a
    link only where the caller removes the link itself (see :func:`remove_tree`).
    :class:`StoreError` otherwise."""
    root = Path(os.path.abspath(root))
    path = Path(os.path.abspath(path))
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise StoreError(f"{_shown(str(path))} is outside the store") from None
    if not relative.parts or ".." in relative.parts:
        raise StoreError(f"{_shown(str(path))} is not a path inside the store")
    current = root
    for part in relative.parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return path  # nothing further down exists yet
        if stat.S_ISLNK(mode):
            raise StoreError(f"{current.relative_to(root)} in the store is a symbolic link; refused")
    return path


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def remove_file(root: Path, path: Path) -> None:
    """Unlink one file (or a link — never what it points at) proven inside the store."""
    path = inside(root, path)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise StoreError(f"{path.relative_to(root)} is a folder, not a file; left alone")
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(root: Path, path: Path) -> None:
    """Remove a folder proven inside the store. A symbolic link is unlinked, never followed
    (``shutil.rmtree`` itself does not follow links inside the folder)."""
    path = inside(root, path)
    if Path(os.path.abspath(path)) == Path(os.path.abspath(root)):
        raise StoreError("refusing to remove the store root")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        os.unlink(path)
        return
    shutil.rmtree(path, ignore_errors=True)
