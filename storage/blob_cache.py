"""A local, size-bounded read-through cache in front of a remote blob location.

    remote = BlobStore("s3://bucket/homer")
    cache = ReadThroughCache(remote, "/local/disk/blob-cache", max_bytes=20 << 30)
    path = cache.path(key)        # a local file: fetched (and checked) once, then read locally

Every file in the cache folder is a blob named by its key, fetched whole from the remote,
checked against its sha256 on the way in and renamed into place (:meth:`BlobStore.download`),
so a file in the folder is always complete and sound as written. Recency is the file's mtime,
touched on every hit (it survives restarts, and several processes may share one folder);
beyond ``max_bytes`` the least recently used files are removed, never the one just asked for.
A hit does not hash the file again unless ``verify_hits`` is set: the store already checks a
cache's sha256 when it loads it.

Why hand-written: fsspec's own caching filesystems (``filecache``, ``simplecache``) expire
files by age only and have no size bound; this is the part they lack, kept small.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .blobs import BlobCorrupt, BlobStore, check_key


@dataclass
class CacheStats:
    """Counts since the cache was opened (this process only)."""

    hits: int = 0
    misses: int = 0
    evicted: int = 0
    fetched_bytes: int = 0


class ReadThroughCache:
    """Blobs of ``remote`` kept as local files under ``folder`` (see the module docstring)."""

    def __init__(self, remote: BlobStore, folder: str | os.PathLike, max_bytes: int, verify_hits: bool = False):
        if max_bytes <= 0:
            raise ValueError("the read-through cache needs a positive size bound")
        self.remote = remote
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.verify_hits = verify_hits
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReadThroughCache({self.remote.location.url!r}, {str(self.folder)!r}, max_bytes={self.max_bytes})"

    def local_path(self, key: str) -> Path:
        """Where blob ``key`` is kept in the cache folder (present or not)."""
        check_key(key)
        return self.folder / key[:2] / key

    def cached(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def path(self, key: str) -> Path:
        """A local file holding blob ``key``: the cached one (a hit, marked as just used), or
        fetched from the remote now (a miss; :class:`BlobMissing`/:class:`BlobCorrupt`/
        :class:`BlobError` from the remote as they are). Other files may be evicted."""
        local = self.local_path(key)
        if self._hit(key, local):
            return local
        self.remote.download(key, local)
        with self._lock:
            self.stats.misses += 1
            self.stats.fetched_bytes += local.stat().st_size
        _touch(local)
        self.evict(keep=local)
        return local

    def get(self, key: str) -> bytes:
        """The bytes of blob ``key`` (through :meth:`path`)."""
        return self.path(key).read_bytes()

    def put(self, source) -> str:
        """Write ``source`` to the remote (:meth:`BlobStore.put`) and keep a copy here, so
        the writer's next read is local. Returns the key."""
        key = self.remote.put(source)
        local = self.local_path(key)
        if not local.is_file():
            if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
                _copy_in(source, local, key)
            else:  # a stream was consumed by the upload: fetch the stored copy instead
                self.remote.download(key, local)
        _touch(local)
        self.evict(keep=local)
        return key

    def discard(self, key: str) -> None:
        """Drop the local copy of blob ``key`` (the remote keeps it)."""
        self.local_path(key).unlink(missing_ok=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, file) of every cached blob, least recently used first."""
        found = []
        for path in self.folder.glob("??/*"):
            if path.name.startswith("."):
                _remove_if_stale(path)  # a download in flight, or one a crash left behind
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # evicted meanwhile by another process
            found.append((st.st_mtime, st.st_size, path))
        return sorted(found, key=lambda item: (item[0], item[2].name))

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used files until the cache holds at most ``max_bytes``
        (``keep`` stays even when it alone is larger). Returns how many were removed."""
        with self._lock:
            entries = self.entries()
            total, removed = sum(size for _, size, _ in entries), 0
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                if keep is not None and path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
            self.stats.evicted += removed
            return removed

    def _hit(self, key: str, local: Path) -> bool:
        if not local.is_file():
            return False
        if self.verify_hits:
            with open(local, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != key:
                    local.unlink(missing_ok=True)  # a damaged local copy: fetched again below
                    return False
        try:
            _touch(local)
        except FileNotFoundError:
            return False  # evicted meanwhile by another process sharing the folder
        with self._lock:
            self.stats.hits += 1
        return True


STALE_TEMP_SECONDS = 3600.0


def _remove_if_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _touch(path: Path) -> None:
    now = time.time()
    os.utime(path, (now, now))


def _copy_in(source, local: Path, key: str) -> None:
    """Put the writer's own bytes or file in the cache (checked like a download)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    temp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(temp, "wb") as out:
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as src:
                    while chunk := src.read(8 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            else:
                digest.update(source)
                out.write(source)
        if digest.hexdigest() != key:
            raise BlobCorrupt(f"blob {key[:12]} changed while it was written; not cached")
        os.replace(temp, local)
    finally:
        temp.unlink(missing_ok=True)
