"""Sharing bundles: export → import on a second store answers identically without a rebuild;
the refusal matrix (each case named) writes nothing."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import zipfile

import pytest
from bundle_helpers import set_field
from conftest import tiny_model, tiny_tokenizer
from store_helpers import ROOT, story, subprocess_env

from app.library import text_from_source
from homer import Conversation, HomerConfig, build_document_cache
from storage import BundleError, Store
from storage.bundles import export_bundle, import_bundle, text_document_id


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", window=1024)


@pytest.fixture(scope="module")
def source_store(tmp_path_factory, model):
    store = Store(tmp_path_factory.mktemp("first-store"))
    text = story()
    doc = store.add_document(text.encode(), "keeper.txt", text, "text", [0], token_count=len(text))
    cache = build_document_cache(model, tiny_tokenizer(), text, HomerConfig(significance="uncalibrated"))
    store.save_cache(doc["id"], cache)
    return store, doc


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, source_store):
    store, doc = source_store
    return export_bundle(store, doc["id"], tmp_path_factory.mktemp("bundles") / "keeper.homer")


def answer(store, key, model):
    cache = store.load_cache(key, model=model)
    return "".join(Conversation(cache, model, tiny_tokenizer()).ask("Who kept the lamp?", max_new_tokens=12))


def test_export_import_answers_the_same_without_rebuild(tmp_path, model, source_store, good_bundle):
    store, doc = source_store
    first = store.caches(doc["id"])[0]
    second = Store(tmp_path / "second")
    row = import_bundle(
        second,
        good_bundle,
        model_fingerprint=first["model_fingerprint"],
        tokenizer=tiny_tokenizer(),
        text_from_source=text_from_source(tiny_tokenizer()),
    )
    assert row["id"] == first["id"] and row["checksum"] == first["checksum"]
    assert second.document(doc["id"])["file_name"] == "keeper.txt"
    assert second.source_path(doc["id"]).read_bytes() == store.source_path(doc["id"]).read_bytes()
    assert second.jobs.list() == []  # nothing was rebuilt
    assert answer(second, row["id"], model) == answer(store, first["id"], model)
    assert second.check() == []
    again = import_bundle(second, good_bundle, text_from_source=text_from_source())  # importing twice is harmless
    assert again["id"] == row["id"] and again["already_in_store"] and not row["already_in_store"]
    assert len(second.documents()) == 1 and len(second.caches()) == 1


def test_a_bundle_without_its_source(tmp_path, source_store):
    store, doc = source_store
    bundle = export_bundle(store, doc["id"], tmp_path / "nosrc.homer", include_source=False)
    assert "source.txt" not in zipfile.ZipFile(bundle).namelist()
    second = Store(tmp_path / "second")
    row = import_bundle(second, bundle, tokenizer=tiny_tokenizer())
    # without its source the id cannot be proven: the document is known by its text alone
    text_id = text_document_id(store.document_text(doc["id"]))
    assert row["rekeyed"] and row["document_id"] == text_id != doc["id"] and second.get_document(doc["id"]) is None
    assert second.source_path(text_id) is None and second.document_text(text_id) == store.document_text(doc["id"])
    assert second.check() == []


def test_admit_sees_the_proven_id_and_its_refusal_writes_nothing(tmp_path, source_store, good_bundle):
    """The caller's last word (the app's: who may own the content) comes after every check,
    with the id the content proved, and a refusal there leaves the store as it was."""
    store, doc = source_store
    sourceless = export_bundle(store, doc["id"], tmp_path / "nosrc.homer", include_source=False)
    target = Store(tmp_path / "target")
    seen = []

    def admit(document_id, proven_by_source):
        seen.append((document_id, proven_by_source))
        raise BundleError("refused: not for you")

    for bundle in (good_bundle, sourceless):
        with pytest.raises(BundleError, match="^refused: not for you$"):
            import_bundle(target, bundle, tokenizer=tiny_tokenizer(), text_from_source=text_from_source(), admit=admit)
    assert seen == [(doc["id"], True), (text_document_id(store.document_text(doc["id"])), False)]
    assert target.documents() == [] and target.caches(status=None) == []
    assert not [p for p in target.root.rglob("*") if p.is_file() and not p.name.startswith("index.db")]


def _rebuild(good, out, drop=(), replace=None, manifest=None, extra=()):
    """Copy ``good`` to ``out`` with members dropped / replaced, the manifest edited and extra
    ZipInfo members added."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info.filename)
            if info.filename == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            if replace and info.filename in replace:
                data = replace[info.filename](data)
            dst.writestr(info.filename, data)
        for info, data in extra:
            dst.writestr(info, data)
    return out


def _symlink_info(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _flip(data: bytes) -> bytes:
    data = bytearray(data)
    data[-3] ^= 0xFF
    return bytes(data)


def _write(path, data):
    path.write_bytes(data)
    return path


REFUSALS = {
    "not-a-zip": (lambda good, out: _write(out, b"just some bytes"), {}, "not a zip"),
    "damaged-zip": (lambda good, out: _write(out, good.read_bytes()[:-200]), {}, "damaged|not a zip"),
    "unknown-format-version": (
        lambda good, out: _rebuild(good, out, manifest=set_field(["format_version"], 99)),
        {},
        "unknown bundle format version 99",
    ),
    "not-a-homer-manifest": (
        lambda good, out: _rebuild(good, out, manifest=set_field(["format"], "other")),
        {},
        "does not describe a HOMER bundle",
    ),
    "missing-manifest": (lambda good, out: _rebuild(good, out, drop=["manifest.json"]), {}, "no manifest"),
    "wrong-model": (lambda good, out: _rebuild(good, out), {"model_fingerprint": "0" * 32}, "not by the model in use"),
    "checksum-mismatch": (
        lambda good, out: _rebuild(good, out, replace={"cache.safetensors": _flip}),
        {},
        "checksum mismatch",
    ),
    "path-traversal": (
        lambda good, out: _rebuild(good, out, extra=[(zipfile.ZipInfo("../../evil.txt"), b"x")]),
        {},
        "path traversal",
    ),
    "absolute-path": (
        lambda good, out: _rebuild(good, out, extra=[(zipfile.ZipInfo("/tmp/evil.txt"), b"x")]),
        {},
        "absolute path",
    ),
    "symlink-member": (
        lambda good, out: _rebuild(good, out, extra=[(_symlink_info("link"), b"/etc/passwd")]),
        {},
        "symbolic link",
    ),
    "oversize-member": (lambda good, out: _rebuild(good, out), {"max_bytes": 1000}, "over the limit"),
    "missing-member": (
        lambda good, out: _rebuild(good, out, drop=["text.txt"]),
        {},
        "'text.txt' listed in the manifest is missing",
    ),
    "unlisted-member": (
        lambda good, out: _rebuild(good, out, extra=[(zipfile.ZipInfo("notes.txt"), b"hi")]),
        {},
        "not listed",
    ),
    "cache-key-mismatch": (
        lambda good, out: _rebuild(good, out, manifest=set_field(["cache", "id"], "f" * 32)),
        {},
        "cache key does not match",
    ),
    "source-not-the-document": (
        lambda good, out: _rebuild(
            good,
            out,
            replace={"source.txt": lambda d: d + b"!"},
            manifest=lambda m: _fix_member(m, "source.txt", good, lambda d: d + b"!"),
        ),
        {},
        "content hash",
    ),
}


def _fix_member(manifest, name, good, change):
    import hashlib

    data = change(zipfile.ZipFile(good).read(name))
    manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return manifest


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bundle_refused_and_nothing_written(tmp_path, good_bundle, case):
    make, kwargs, expected = REFUSALS[case]
    bad = make(good_bundle, tmp_path / f"{case}.homer")
    store = Store(tmp_path / "target")
    with pytest.raises(BundleError, match=expected) as info:
        import_bundle(store, bad, text_from_source=text_from_source(), **kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("refused:")
    assert store.documents() == [] and store.caches(status=None) == []
    assert not [p for p in store.root.rglob("*") if p.is_file() and not p.name.startswith("index.db")]
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.e2e
def test_cli_export_import_list_check(tmp_path, source_store):
    store, doc = source_store
    out = tmp_path / "shared.homer"

    def homer(*args):
        return subprocess.run(
            [sys.executable, "-m", "app", *map(str, args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=subprocess_env(tmp_path / "home"),
            timeout=120,
        )

    r = homer("export", doc["id"][:10], "-o", out, "--store", store.root)
    assert r.returncode == 0, r.stderr
    r = homer("import", out, "--store", tmp_path / "second", "--expect-fingerprint", "1" * 32)
    assert r.returncode == 2 and r.stderr.startswith("error: refused:") and r.stderr.count("\n") == 1
    r = homer("import", out, "--store", tmp_path / "second")
    assert r.returncode == 0, r.stderr
    r = homer("store", "list", "--store", tmp_path / "second")
    assert "keeper.txt" in r.stdout and "ready" in r.stdout
    (tmp_path / "second" / "caches" / "orphan.safetensors").write_bytes(b"x")
    r = homer("store", "check", "--store", tmp_path / "second")
    assert r.returncode == 1 and "orphan-file" in r.stdout
    r = homer("store", "check", "--repair", "--store", tmp_path / "second")
    assert r.returncode == 0 and "repaired" in r.stdout
    assert homer("store", "check", "--store", tmp_path / "second").stdout.strip() == "0 problem(s)"
