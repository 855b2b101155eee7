"""Content-addressed blobs (storage.blobs) in a folder and in a real S3 server (SeaweedFS on
loopback, started by the session): round trips, write-once, corruption refused, URL parsing."""

from __future__ import annotations

import io
import os
import re

import pytest
from seaweedfs_helpers import s3_location, seaweedfs  # noqa: F401  (fixtures)

from storage.blobs import (
    BlobCorrupt,
    BlobError,
    BlobMissing,
    BlobStore,
    blob_key,
    check_key,
    parse_location,
)


@pytest.fixture(params=["folder", "s3"])
def blobs(request, tmp_path):
    """A blob store in a fresh folder, then in a fresh bucket of the session's SeaweedFS."""
    if request.param == "folder":
        return BlobStore(tmp_path / "blobs")
    return BlobStore(request.getfixturevalue("s3_location"))


def damage(store: BlobStore, key: str) -> None:
    """Replace the stored object of ``key`` with other bytes, behind the store's back."""
    path = store.object_path(key)
    data = bytearray(store.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    store.fs.pipe_file(path, bytes(data))


def test_round_trip_of_bytes_files_and_streams(blobs, tmp_path):
    data = os.urandom(300_000)
    key = blobs.put(data)
    assert key == blob_key(data) and blobs.exists(key) and blobs.size(key) == len(data)
    assert blobs.get(key) == data
    with blobs.open(key) as fh:
        assert fh.read() == data
    source = tmp_path / "source.bin"
    source.write_bytes(b"a file's bytes" * 1000)
    assert blobs.put(source) == blob_key(source.read_bytes())
    assert blobs.put(io.BytesIO(b"a stream")) == blob_key(b"a stream")
    assert blobs.get(blob_key(b"a stream")) == b"a stream"
    target = blobs.download(key, tmp_path / "out" / "copy.bin")
    assert target.read_bytes() == data and [p.name for p in target.parent.iterdir()] == ["copy.bin"]
    assert sorted(blobs.keys()) == sorted({key, blob_key(source.read_bytes()), blob_key(b"a stream")})
    blobs.delete(key)
    assert not blobs.exists(key)
    blobs.delete(key)  # deleting twice is fine
    with pytest.raises(BlobMissing):
        blobs.get(key)


def test_an_existing_key_is_never_rewritten(blobs):
    key = blobs.put(b"written once")
    before = blobs.fs.info(blobs.object_path(key))
    damage(blobs, key)  # the stored copy differs now; a second put must not repair it silently
    assert blobs.put(b"written once") == key
    with pytest.raises(BlobCorrupt):
        blobs.get(key)
    assert blobs.fs.info(blobs.object_path(key))["size"] == before["size"]


def test_a_corrupted_object_is_refused_by_every_read(blobs, tmp_path):
    key = blobs.put(b"sound bytes " * 5000)
    damage(blobs, key)
    with pytest.raises(BlobCorrupt, match=f"blob {key[:12]} .* is corrupt"):
        blobs.get(key)
    with pytest.raises(BlobCorrupt):
        blobs.open(key)
    target = tmp_path / "never.bin"
    with pytest.raises(BlobCorrupt):
        blobs.download(key, target)
    assert not target.exists() and list(tmp_path.glob(".never.bin*")) == []


def test_a_folder_writes_through_a_temp_file_and_leaves_none(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    key = store.put(b"x" * 1000)
    path = tmp_path / "blobs" / "blobs" / key[:2] / key
    assert path.read_bytes() == b"x" * 1000
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    inode = path.stat().st_ino
    store.put(b"x" * 1000)
    assert path.stat().st_ino == inode  # not replaced


def test_s3_objects_carry_their_key_in_their_metadata(s3_location):
    store = BlobStore(s3_location)
    key = store.put(b"metadata")
    assert store.recorded_key(key) == key
    assert store.fs.metadata(store.object_path(key)) == {"sha256": key}


def test_pointers_are_replaced_whole(blobs):
    assert blobs.read_pointer("index") is None
    blobs.write_pointer("index", {"key": "a" * 64})
    blobs.write_pointer("index", {"key": "b" * 64, "history": ["a" * 64]})
    assert blobs.read_pointer("index") == {"key": "b" * 64, "history": ["a" * 64]}
    with pytest.raises(BlobError):
        blobs.write_pointer("../escape", {})


def test_keys_are_checked_before_they_name_anything(tmp_path):
    store = BlobStore(tmp_path)
    for bad in ["../" + "a" * 61, "A" * 64, "a" * 63, "", None]:
        with pytest.raises(BlobError):
            store.object_path(bad)
    assert check_key("0" * 64) == "0" * 64


def test_an_unreachable_endpoint_is_one_clear_line(tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = BlobStore("s3://nobody-home/homer")
    store.fs.retries = 1
    with pytest.raises(BlobError) as caught:
        store.put(b"nowhere")
    message = str(caught.value)
    assert "s3://nobody-home/homer" in message and "\n" not in message and not isinstance(caught.value, BlobMissing)


@pytest.mark.parametrize(
    "url, protocol, root",
    [
        ("s3://my-bucket/homer/store", "s3", "my-bucket/homer/store"),
        ("s3://my-bucket", "s3", "my-bucket"),
        ("hf://buckets/alice/library/homer", "hf", "buckets/alice/library/homer"),
        ("hf://buckets/alice/library", "hf", "buckets/alice/library"),
        ("file:///var/lib/homer", "file", "/var/lib/homer"),
    ],
)
def test_locations_parse(url, protocol, root):
    location = parse_location(url)
    assert (location.protocol, location.root, location.url) == (protocol, root, url)
    assert location.remote == (protocol != "file")


def test_a_folder_location_is_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_location("blobs").root == str(tmp_path.resolve() / "blobs")


@pytest.mark.parametrize(
    "url, words",
    [
        ("hf://alice/model/weights", "hf://buckets/<owner>/<name>"),
        ("hf://datasets/alice/data", "hf://buckets/<owner>/<name>"),
        ("hf://buckets/alice", "hf://buckets/<owner>/<name>"),
        ("s3://A_Bad_Bucket/x", "s3://bucket/prefix"),
        ("s3://", "s3://bucket/prefix"),
        ("s3://bucket/../other", "'..'"),
        ("gs://bucket/x", "unsupported blob location"),
        ("", "empty"),
    ],
)
def test_bad_locations_say_what_is_accepted(url, words):
    with pytest.raises(BlobError, match=re.escape(words)) as caught:
        parse_location(url)
    assert "\n" not in str(caught.value)


def test_a_bucket_url_opens_huggingface_hub_filesystem_offline(monkeypatch):
    """The Hub cannot be reached here: the filesystem is only constructed, and names resolve."""
    from huggingface_hub import HfFileSystem

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = BlobStore("hf://buckets/alice/library/homer")
    assert isinstance(store.fs, HfFileSystem)
    key = "c" * 64
    assert store.object_path(key) == f"buckets/alice/library/homer/blobs/cc/{key}"
    assert store.pointer_path("index") == "buckets/alice/library/homer/pointers/index"
    assert store.recorded_key(key) is None  # the name is the key there
