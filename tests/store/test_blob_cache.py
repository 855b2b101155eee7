"""The local read-through cache (storage.blob_cache) in front of a folder and of a real S3
server (SeaweedFS on loopback): hits stay local, least recently used files go first."""

from __future__ import annotations

import os
import time

import pytest
from seaweedfs_helpers import s3_location, seaweedfs  # noqa: F401  (fixtures)

from storage.blob_cache import ReadThroughCache
from storage.blobs import BlobCorrupt, BlobMissing, BlobStore


def aged(cache: ReadThroughCache, key: str, seconds_ago: float) -> None:
    """Mark a cached blob as last used ``seconds_ago`` (mtime is the cache's recency)."""
    stamp = time.time() - seconds_ago
    os.utime(cache.local_path(key), (stamp, stamp))


def test_a_hit_is_served_without_the_remote(s3_location, tmp_path):
    remote = BlobStore(s3_location)
    data = os.urandom(200_000)
    key = remote.put(data)
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=10 << 20)
    assert cache.get(key) == data
    assert (cache.stats.misses, cache.stats.hits, cache.stats.fetched_bytes) == (1, 0, len(data))
    remote.delete(key)  # the object store no longer has it: only a local read can answer
    assert not remote.exists(key)
    assert cache.get(key) == data and cache.path(key) == cache.local_path(key)
    assert (cache.stats.misses, cache.stats.hits) == (1, 2)
    cache.discard(key)
    with pytest.raises(BlobMissing):
        cache.path(key)


def test_least_recently_used_blobs_are_evicted_beyond_the_bound(tmp_path):
    remote = BlobStore(tmp_path / "remote")
    a, b, c = (remote.put(bytes([n]) * 1000) for n in (1, 2, 3))
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=2500)
    cache.path(a)
    aged(cache, a, 30)
    cache.path(b)
    aged(cache, b, 20)
    cache.path(a)  # a is used again: b is now the least recently used
    cache.path(c)  # 3000 bytes > 2500: one must go
    assert cache.cached(a) and cache.cached(c) and not cache.cached(b)
    assert cache.total_bytes() == 2000 and cache.stats.evicted == 1
    cache.path(b)  # fetched again; now a is the oldest
    assert not cache.cached(a) and cache.cached(b) and cache.cached(c)


def test_a_blob_larger_than_the_bound_is_still_served(tmp_path):
    remote = BlobStore(tmp_path / "remote")
    small, big = remote.put(b"s" * 100), remote.put(b"b" * 5000)
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1000)
    cache.path(small)
    assert cache.path(big).read_bytes() == b"b" * 5000
    assert cache.cached(big) and not cache.cached(small)


def test_the_writer_keeps_a_local_copy(s3_location, tmp_path):
    remote = BlobStore(s3_location)
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20)
    key = cache.put(b"built here")
    assert remote.get(key) == b"built here" and cache.cached(key)
    source = tmp_path / "file.bin"
    source.write_bytes(b"from a file")
    assert cache.get(cache.put(source)) == b"from a file"
    assert cache.stats.misses == 0


def test_a_corrupted_remote_object_never_enters_the_cache(s3_location, tmp_path):
    remote = BlobStore(s3_location)
    key = remote.put(b"sound" * 1000)
    remote.fs.pipe_file(remote.object_path(key), b"tampered" * 1000)
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20)
    with pytest.raises(BlobCorrupt):
        cache.path(key)
    assert not cache.cached(key) and cache.entries() == []
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_verify_hits_fetches_a_damaged_local_copy_again(tmp_path):
    remote = BlobStore(tmp_path / "remote")
    key = remote.put(b"good bytes")
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20, verify_hits=True)
    cache.path(key).write_bytes(b"bad bytes!")
    assert cache.get(key) == b"good bytes" and cache.stats.misses == 2


def test_the_cache_folder_survives_a_restart(tmp_path):
    remote = BlobStore(tmp_path / "remote")
    key = remote.put(b"kept")
    ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20).path(key)
    again = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20)
    assert again.get(key) == b"kept" and (again.stats.hits, again.stats.misses) == (1, 0)


def test_a_stale_partial_download_is_cleaned_up(tmp_path):
    remote = BlobStore(tmp_path / "remote")
    key = remote.put(b"x")
    cache = ReadThroughCache(remote, tmp_path / "cache", max_bytes=1 << 20)
    leftover = cache.local_path(key).with_name(f".{key}.dead.tmp")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    cache.path(key)
    assert not leftover.exists()
