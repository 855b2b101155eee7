"""Bundles from a careless or hostile teammate: each finding of the bundle review as a named
test, with real zips built here, a real store in a temp folder and a victim folder beside
it that must survive byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
import time
import tracemalloc
import zipfile

import pytest
import torch
from bundle_helpers import make_victim, members_of, rebuild, set_field, snapshot, store_rows, stored_document
from conftest import tiny_model, tiny_tokenizer
from store_helpers import story

from app import library
from homer.cache import HomerCache
from storage import BundleError, Store
from storage.bundle_schema import DEFAULT_BUNDLE_MB, max_bundle_bytes
from storage.bundles import export_bundle, import_bundle, text_document_id
from storage.store import cache_key

TEXT_A = story(12, "of the north")
TEXT_B = story(12, "of the south")


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", window=1024)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, model):
    """User b's store: b's own document B, read, exported with and without its source."""
    store = Store(tmp_path_factory.mktemp("origin") / "store")
    doc = stored_document(store, model, TEXT_B, "south.txt")
    folder = tmp_path_factory.mktemp("bundles")
    return {
        "store": store,
        "doc": doc,
        "bundle": export_bundle(store, doc["id"], folder / "south.zip"),
        "sourceless": export_bundle(store, doc["id"], folder / "south-nosrc.zip", include_source=False),
    }


@pytest.fixture
def shared(tmp_path, model):
    """The shared app store holding user a's document A (with its cache), and a victim folder
    beside the store."""
    store = Store(tmp_path / "store")
    doc = stored_document(store, model, TEXT_A, "north.txt", owner="a")
    return store, doc, make_victim(tmp_path / "victim")


def importing(store, bundle, owner="b", **kwargs):
    """Import as the app does (ingestion check of the source, the tokenizer's token check);
    with ``owner`` through the library, with limits in ``kwargs`` through the store API."""
    if owner is None or kwargs:
        return import_bundle(
            store,
            bundle,
            tokenizer=tiny_tokenizer(),
            text_from_source=library.text_from_source(tiny_tokenizer()),
            **kwargs,
        )
    return library.import_bundle_file(store, bundle, None, owner, tokenizer=tiny_tokenizer())


def refused(store, bundle, match: str, **kwargs) -> str:
    with pytest.raises(BundleError, match=match) as info:
        importing(store, bundle, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("refused:"), message
    return message


def state(store, doc, victim):
    return (
        snapshot(victim),
        store_rows(store, doc["id"]),
        snapshot(store.root / "documents"),
        snapshot(store.root / "caches"),
        store.check(),
    )


# --- 1: a bundle's document id used as a path --------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dotdot", "store-root", "absolute", "folder", "upper-case", "prefix"])
def test_document_id_that_is_a_path_is_refused(tmp_path, origin, shared, kind):
    store, doc, victim = shared
    value = {
        "dotdot": "../..",
        "store-root": str(store.root),
        "absolute": str(victim),
        "folder": "documents",
        "upper-case": doc["id"].upper(),
        "prefix": doc["id"][:12],
    }[kind]
    before = state(store, doc, victim)
    bad = rebuild(origin["sourceless"], tmp_path / "bad.zip", manifest=set_field(["document", "id"], value))
    refused(store, bad, "document.id must be 64 lowercase hex")
    assert state(store, doc, victim) == before and before[-1] == []
    assert len(store.documents()) == 1


# --- 2: one user taking over another's document -------------------------------------------------
def _relabel(doc_id):
    def edit(manifest):
        manifest["document"]["id"] = doc_id
        cache = manifest["cache"]
        cache["id"] = cache_key(doc_id, cache["model_fingerprint"], cache["settings"], cache["prompt_version"])
        return manifest

    return edit


def test_relabelled_bundle_cannot_take_over_another_document(tmp_path, origin, shared):
    store, doc, victim = shared
    before = state(store, doc, victim)
    a_cache = store.caches(doc["id"])[0]
    a_bytes = (store.root / a_cache["file"]).read_bytes()
    # b's export relabelled with a's id, with b's source: the source does not hash to the id
    with_source = rebuild(origin["bundle"], tmp_path / "relabelled.zip", manifest=_relabel(doc["id"]))
    refused(store, with_source, "does not match the document's content hash")
    # without a source the id cannot be proven: b's text becomes its own document
    sourceless = rebuild(origin["sourceless"], tmp_path / "relabelled-nosrc.zip", manifest=_relabel(doc["id"]))
    row = importing(store, sourceless, owner="b")
    assert row["rekeyed"] and row["document_id"] == text_document_id(TEXT_B) != doc["id"]
    assert state(store, doc, victim)[:2] == before[:2]  # a's rows, owners and the victim are as they were
    assert (store.root / a_cache["file"]).read_bytes() == a_bytes
    assert store.document_text(doc["id"]) == TEXT_A
    assert doc["id"] not in library.owned_ids(store, "b")
    with pytest.raises(Exception, match="in your library"):
        library.export_document(store, doc["id"], a_cache["model_fingerprint"], owner="b")
    assert store.check() == []


def test_existing_cache_is_never_replaced(tmp_path, model, shared):
    """The same document and key with other cache bytes: the stored cache stays as it was."""
    store, doc, victim = shared
    a_cache = store.caches(doc["id"])[0]
    a_bytes = (store.root / a_cache["file"]).read_bytes()
    bundle = export_bundle(store, doc["id"], tmp_path / "mine.zip")
    cache = HomerCache.load(store.root / a_cache["file"])
    cache.last_logits = cache.last_logits + 1.0  # another build's bytes under the same key
    cache.metadata["build_seconds"] = "9"
    other = tmp_path / "other.safetensors"
    cache.save(other)
    swapped = rebuild(bundle, tmp_path / "swapped.zip", replace={"cache.safetensors": lambda _: other.read_bytes()})
    row = importing(store, swapped, owner="b")
    assert row["already_in_store"] and row["id"] == a_cache["id"] and row["checksum"] == a_cache["checksum"]
    assert (store.root / a_cache["file"]).read_bytes() == a_bytes
    assert store.check() == []


# --- 4: nothing ties a bundle's text or cache to its id --------------------------------------------
def test_swapped_text_with_genuine_source_is_refused(tmp_path, origin, shared):
    store, doc, victim = shared
    before = state(store, doc, victim)
    other = TEXT_B.replace("Ada", "Eve").encode()
    swapped = rebuild(origin["bundle"], tmp_path / "swapped.zip", replace={"text.txt": lambda _: other})
    refused(store, swapped, "not the text of the source file")
    assert state(store, doc, victim) == before


def test_sourceless_bundle_cannot_preseed_an_upload_hash(tmp_path, origin, shared, model):
    store, doc, victim = shared
    genuine = story(12, "of the east").encode()
    upload_id = hashlib.sha256(genuine).hexdigest()
    seeded = rebuild(origin["sourceless"], tmp_path / "seed.zip", manifest=_relabel(upload_id))
    row = importing(store, seeded, owner="b")
    assert row["document_id"] == text_document_id(TEXT_B) and store.get_document(upload_id) is None
    # the genuine upload later is a document of its own, with its own text
    from app.ingest import add_to_store, ingest_bytes

    uploaded = add_to_store(store, ingest_bytes(genuine, "east.txt"))
    assert uploaded["id"] == upload_id and store.document_text(upload_id) == genuine.decode()
    assert text_document_id(genuine.decode()) != hashlib.sha256(genuine).hexdigest()
    assert store.check() == []


def test_cache_tokens_must_be_the_texts_tokens(tmp_path, origin, shared):
    store, doc, victim = shared
    before = state(store, doc, victim)
    same_length = TEXT_B.replace("Ada", "Eve").encode()  # the cache was built from another text
    swapped = rebuild(origin["sourceless"], tmp_path / "swapped.zip", replace={"text.txt": lambda _: same_length})
    refused(store, swapped, "not the tokens of text.txt", owner=None)
    short = b"Ada."  # without a tokenizer the offsets still have to lie inside the text
    shortened = rebuild(
        origin["sourceless"],
        tmp_path / "short.zip",
        replace={"text.txt": lambda _: short},
        manifest=lambda m: _short_document(m, len(short)),
    )
    with pytest.raises(BundleError, match="inside the text"):
        import_bundle(store, shortened)
    assert state(store, doc, victim) == before


def _short_document(manifest, chars):
    manifest["document"].update(chars=chars, pages=1, page_starts=[0], passages=None)
    return manifest


# --- 5: import memory unbounded --------------------------------------------------------------------
def _lie_about_size(path, member: str, claimed: int):
    """Patch the zip's local and central headers so ``member`` claims ``claimed`` bytes."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (pos := data.find(signature, start)) >= 0:
            if data[pos + name_at : pos + name_at + len(name)] == name:
                data[pos + size_at : pos + size_at + 4] = struct.pack("<L", claimed)
            start = pos + 4
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("claimed", [1000, 4 * 2**20])
def test_lying_member_size_stops_at_limit(tmp_path, origin, shared, claimed):
    store, doc, victim = shared
    before = state(store, doc, victim)
    members = members_of(origin["sourceless"])
    bomb = tmp_path / "bomb.zip"
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["text.txt"]["bytes"] = claimed
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("cache.safetensors", members["cache.safetensors"])
        with zf.open("text.txt", "w") as out:  # 256 MB of zeros, a few hundred KB deflated
            block = b"\0" * 2**20
            for _ in range(256):
                out.write(block)
    _lie_about_size(bomb, "text.txt", claimed)
    assert bomb.stat().st_size < 2 * 2**20
    tracemalloc.start()
    started = time.perf_counter()
    try:
        refused(store, bomb, "refused", owner=None, max_bytes=8 * 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(
        f"lying member ({claimed} bytes claimed, 256 MB inside): refused in {time.perf_counter() - started:.2f} s, "
        f"peak {peak / 2**20:.1f} MB traced"
    )
    assert peak < 48 * 2**20  # never inflated whole (256 MB)
    assert state(store, doc, victim) == before
    assert not list(store.tmp_dir.iterdir())


@pytest.mark.slow
def test_whole_bundle_and_text_limits(tmp_path, origin, shared):
    store, doc, victim = shared
    refused(store, origin["bundle"], "over the limit", max_bytes=10_000)
    refused(store, origin["bundle"], "over the limit", bundle_max_mb=0.01)
    refused(store, origin["sourceless"], "text.txt.*over the limit", bundle_max_text_mb=0.0002)  # 209 bytes
    assert store.check() == [] and len(store.documents()) == 1


@pytest.mark.slow
def test_an_imported_text_is_bounded_like_an_upload(origin, shared, configure):
    """A sourceless bundle's text becomes a document without any ingestion: the app still
    refuses one longer than an upload may extract (HOMER_MAX_CHARS), before tokenising it."""
    store, doc, victim = shared
    before = state(store, doc, victim)
    configure(ingest={"max_chars": 100})
    message = refused(store, origin["sourceless"], "characters, over the limit of 100")
    assert "HOMER_MAX_CHARS" in message and state(store, doc, victim) == before


# --- 6: quadratic member check ----------------------------------------------------------------------
@pytest.mark.slow
def test_member_check_is_linear(tmp_path, origin, shared):
    store, doc, victim = shared
    crowded = tmp_path / "crowded.zip"
    with zipfile.ZipFile(crowded, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members_of(origin["sourceless"]).items():
            zf.writestr(name, data)
        for i in range(40_000):
            zf.writestr(f"m{i:05d}", b"")
    started = time.perf_counter()
    refused(store, crowded, "holds 40003 members; a bundle has at most 16", owner=None)
    print(f"40 003 members refused in {time.perf_counter() - started:.3f} s")
    few = rebuild(origin["sourceless"], tmp_path / "dup.zip", extra=[("text.txt", b"again")])
    refused(store, few, "same member name twice", owner=None)
    assert store.check() == [] and len(store.documents()) == 1


# --- 9: malformed manifests and headers ---------------------------------------------------------------
def _header_edit(edit):
    """Replace the cache member's safetensors header with ``edit(header dict)`` (or raw bytes)."""

    def change(data: bytes) -> bytes:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        new = edit(header)
        raw = new if isinstance(new, bytes) else json.dumps(new).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + length :]

    return change


def _drop(path):
    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return manifest

    return edit


MALFORMED = {
    "deep-json": (dict(manifest=lambda m: b"[" * 200_000 + b"]" * 200_000), "nests deeper"),
    "deep-settings": (dict(manifest=set_field(["cache", "settings"], "[" * 50_000 + "]" * 50_000)), "settings"),
    "not-an-object": (dict(manifest=lambda m: b"[1, 2]"), "must be an object"),
    "not-utf8": (dict(manifest=lambda m: b"\xff\xfe{}"), "not valid JSON"),
    "nan": (
        dict(manifest=lambda m: json.dumps(m).replace('"build_seconds": ', '"build_seconds": NaN, "x": ').encode()),
        "not valid JSON|not a field",
    ),
    "pages-as-text": (dict(manifest=set_field(["document", "pages"], "1")), "document.pages"),
    "negative-tokens": (dict(manifest=set_field(["document", "token_count"], -1)), "document.token_count"),
    "huge-cache-tokens": (dict(manifest=set_field(["cache", "tokens"], 10**12)), "cache.tokens"),
    "bool-version": (dict(manifest=set_field(["format_version"], True)), "format version"),
    "passage-shape": (dict(manifest=set_field(["document", "passages"], [[1]])), "document.passages"),
    "passage-outside": (dict(manifest=set_field(["document", "passages"], [[0, 10**9, 1, 1]])), "document.passages"),
    "page-starts": (dict(manifest=set_field(["document", "page_starts"], {"a": 1})), "document.page_starts"),
    "file-name-path": (dict(manifest=set_field(["document", "file_name"], "../../south.txt")), "plain file name"),
    "title-newline": (dict(manifest=set_field(["document", "title"], "a\nb")), "control characters"),
    "kind": (dict(manifest=set_field(["document", "kind"], ["pdf"])), "document.kind"),
    "members-list": (dict(manifest=set_field(["members"], ["text.txt"]), fix=False), "members"),
    "member-entry": (dict(manifest=set_field(["members", "text.txt"], "abc"), fix=False), "members.text.txt"),
    "missing-id": (dict(manifest=_drop(["document", "id"])), "document.id is missing"),
    "missing-cache": (dict(manifest=_drop(["cache"])), "cache is missing"),
    "missing-sha": (dict(manifest=_drop(["members", "text.txt", "sha256"]), fix=False), "sha256 is missing"),
    "unknown-field": (dict(manifest=set_field(["document", "extra"], 1)), "not a field"),
    "settings-differ": (dict(manifest=set_field(["settings"], {"seed": 1})), "settings"),
    "header-huge": (
        dict(replace={"cache.safetensors": lambda d: struct.pack("<Q", 2**62) + d[8:]}),
        "implausible header",
    ),
    "header-not-json": (
        dict(replace={"cache.safetensors": _header_edit(lambda h: b"{not json" + b" " * 40)}),
        "not valid JSON",
    ),
    "header-no-keys": (
        dict(replace={"cache.safetensors": _header_edit(lambda h: {k: v for k, v in h.items() if k != "keys"})}),
        "do not tile|lacks",
    ),
    "header-offsets": (
        dict(
            replace={
                "cache.safetensors": _header_edit(lambda h: h | {"keys": h["keys"] | {"data_offsets": [0, 10**12]}})
            }
        ),
        "outside its data",
    ),
    "header-metadata": (
        dict(
            replace={
                "cache.safetensors": _header_edit(lambda h: h | {"__metadata__": h["__metadata__"] | {"prefix_len": 5}})
            }
        ),
        "map of strings",
    ),
    "header-dtype": (
        dict(replace={"cache.safetensors": _header_edit(lambda h: h | {"keys": h["keys"] | {"dtype": "C64"}})}),
        "malformed",
    ),
    "header-shape": (
        dict(
            replace={
                "cache.safetensors": _header_edit(
                    lambda h: h | {"sources": h["sources"] | {"shape": [1, h["sources"]["shape"][0]]}}
                )
            }
        ),
        "int64",
    ),
    "header-format": (
        dict(
            replace={
                "cache.safetensors": _header_edit(
                    lambda h: h | {"__metadata__": h["__metadata__"] | {"format": "other"}}
                )
            }
        ),
        "not a HOMER cache",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifests_refused_in_one_line(tmp_path, origin, case):
    edits, expected = MALFORMED[case]
    bad = rebuild(origin["sourceless"], tmp_path / f"{case}.zip", **edits)
    store = Store(tmp_path / "store")
    refused(store, bad, expected, owner=None)
    assert store.documents() == [] and store.caches(status=None) == [] and store.check() == []
    assert not [p for p in store.root.rglob("*") if p.is_file() and not p.name.startswith("index.db")]


# --- 10: the app cannot import its own large exports ---------------------------------------------------
def embedded_shaped_cache(tokens: int, text: str) -> HomerCache:
    """A cache with the embedded model's shape (30 layers, 3 kv heads, head dim 64, fp16)
    whose kept tokens are ``text``'s tokens under the tiny tokenizer."""
    encoded = tiny_tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(encoded.input_ids[:tokens])
    g = torch.Generator().manual_seed(0)
    return HomerCache(
        keys=torch.randn(30, 3, tokens, 64, generator=g).half(),
        values=torch.randn(30, 3, tokens, 64, generator=g).half(),
        positions=torch.arange(tokens),
        token_ids=ids,
        sources=torch.arange(tokens),
        prefix_len=0,
        suffix_len=0,
        last_logits=torch.zeros(49152),
        inv_freq=torch.ones(32),
        char_offsets=torch.tensor([s for s, _ in encoded.offset_mapping[:tokens]]),
        metadata={
            "model_fingerprint": "e" * 32,
            "model_name": "SmolLM2-135M-Instruct",
            "context_len": str(len(ids)),
            "settings": json.dumps({"cache_dtype": "float16"}),
            "prompt_version": "p1",
        },
    )


def test_app_imports_its_own_large_export(tmp_path):
    tokens = 4096
    assert max_bundle_bytes() == DEFAULT_BUNDLE_MB * 2**20
    from app.ingest import max_upload_bytes

    assert library.max_request_bytes() == max(max_upload_bytes(), max_bundle_bytes()) > max_upload_bytes()
    text = ("The keeper lit the lamp at dusk. " * 200)[:tokens]
    first = Store(tmp_path / "first")
    doc = first.add_document(text.encode(), "long.txt", text, "text", [0], token_count=tokens)
    first.save_cache(doc["id"], embedded_shaped_cache(tokens, text))
    bundle = library.export_document(first, doc["id"], "e" * 32)
    size = bundle.stat().st_size
    per_token = first.caches(doc["id"])[0]["bytes"] / tokens
    print(
        f"bundle of a full {tokens}-token cache of the embedded model's shape: {size / 2**20:.1f} MiB, "
        f"{per_token / 1024:.2f} KiB per cached token (cache file), {size / tokens / 1024:.2f} KiB per token (bundle)"
    )
    assert size > max_upload_bytes() * 1.5 and size < max_bundle_bytes()
    second = Store(tmp_path / "second")
    row = library.import_bundle_file(second, bundle, "e" * 32, owner="b", tokenizer=tiny_tokenizer())
    assert row["tokens"] == tokens and not row["already_in_store"]
    assert row["checksum"] == first.caches(doc["id"])[0]["checksum"] and second.check() == []
    assert doc["id"] in library.owned_ids(second, "b")


# --- 11: concurrency and temp files ------------------------------------------------------------------
def test_concurrent_imports_of_one_document(tmp_path, origin):
    bad = rebuild(origin["bundle"], tmp_path / "bad.zip", replace={"text.txt": lambda d: d.replace(b"Ada", b"Eve")})
    for round_ in range(4):
        store = Store(tmp_path / f"store-{round_}")
        bundles = [origin["bundle"], bad, origin["bundle"], bad]
        barrier = threading.Barrier(len(bundles))
        results: list = [None] * len(bundles)

        def run(i):
            barrier.wait()
            try:
                results[i] = importing(store, bundles[i], owner=f"user{i}")
            except BundleError as exc:
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bundles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        good = [r for r in results if isinstance(r, dict)]
        assert len(good) == 2 and all(isinstance(results[i], BundleError) for i in (1, 3)), results
        assert sorted(r["already_in_store"] for r in good) == [False, True]
        doc_id = origin["doc"]["id"]
        [cache] = store.caches(doc_id)
        assert store.document_text(doc_id) == TEXT_B and store.check() == []
        assert hashlib.sha256((store.root / cache["file"]).read_bytes()).hexdigest() == cache["checksum"]
        assert sorted(library.owned_ids(store, "user0") | library.owned_ids(store, "user2")) == [doc_id]
        assert not list(store.tmp_dir.iterdir())


def test_export_leaves_no_temp_bundle(tmp_path, origin):
    store, doc = origin["store"], origin["doc"]
    fingerprint = store.caches(doc["id"])[0]["model_fingerprint"]
    temp_before = set(os.listdir(tempfile.gettempdir()))
    first = library.export_document(store, doc["id"], fingerprint)
    assert first.parent.parent == library.exports_dir()
    old = time.time() - library.EXPORT_KEEP_SECONDS - 60
    os.utime(first.parent, (old, old))
    second = library.export_document(store, doc["id"], fingerprint)
    assert second.exists() and not first.exists() and not first.parent.exists()
    new_in_temp = set(os.listdir(tempfile.gettempdir())) - temp_before
    assert new_in_temp <= {library.exports_dir().name}
    parents = {p.parent for p in library.exports_dir().rglob("*.zip")}
    assert second.parent in parents and first.parent not in parents
