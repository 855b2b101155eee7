"""Resumable builds (homer.checkpoints): a build stopped part-way — by an exception raised
from its progress callback, or a worker killed with SIGKILL — resumes from the checkpoints
of its finished subtrees, computes only the leaves that were missing, and gives the cache
a one-shot build gives, bit for bit (torch.equal on every tensor); checkpoints of other
builds and damaged ones are ignored; the store removes them once the cache is indexed and
``store check`` finds the stale ones."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import pytest
import torch
from conftest import random_ids, tiny_model, tiny_tokenizer
from store_helpers import start_worker, stop, story, wait_until

from homer import HomerConfig, build_cache, build_document_cache
from homer.checkpoints import DirectoryCheckpointer
from homer.prompting import default_prompt
from storage import Store

P, S = 4, 3
CONTEXT = 32 * 20  # 32 leaves of 20 tokens at M = 32 (E = 25)
STEPS = 2 * 32 - 1


class Interrupted(Exception):
    """Raised from the progress callback: the build stops there, as a killed one would."""


def stop_at(step: int, seen: list | None = None):
    def progress(done: int, total: int, message: str) -> None:
        if seen is not None:
            seen.append(message)
        if done >= step and not message.startswith("resumed"):
            raise Interrupted(step)

    return progress


@pytest.fixture(scope="module")
def deep():
    """A tiny Llama deep enough for a 32-leaf tree (height 5 needs 6 layers after warm-up)."""
    return tiny_model("llama", layers=8, window=64)


@pytest.fixture(scope="module")
def one_shot_build(deep):
    """The one-shot cache of :func:`inputs` under :func:`config` (built once for the module)."""
    return build_cache(deep, *inputs(), config())


def inputs(seed: int = 2):
    return random_ids(P, 1), random_ids(CONTEXT, seed), random_ids(S, 3)


def config(**overrides) -> HomerConfig:
    return HomerConfig(**{"significance": "uncalibrated", "warmup_layers": 1, "span": "token", **overrides})


def assert_same_cache(a, b) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name


def node_keys(checkpointer) -> list[str]:
    return [k for k in checkpointer.keys() if k.startswith("leaves-")]


@pytest.mark.slow
@pytest.mark.parametrize("significance", ["uncalibrated", "random", "reconstruction"])
def test_an_interrupted_build_resumes_to_the_one_shot_cache(deep, tmp_path, significance):
    prefix, context, suffix = inputs()
    cfg = config(significance=significance)
    one_shot = build_cache(deep, prefix, context, suffix, cfg)
    assert one_shot.metadata["num_leaves"] == "32"
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    for step in (5, 20, 44):  # stopped three times: after leaf 4, in the middle, after a merge
        with pytest.raises(Interrupted):
            build_cache(deep, prefix, context, suffix, cfg, progress=stop_at(step), checkpoints=checkpoints)
        assert len(node_keys(checkpoints)) <= 5 + 1  # O(log N): one finished node per level, and the last one
    seen = []
    resumed = build_cache(deep, prefix, context, suffix, cfg, progress=stop_at(10**6, seen), checkpoints=checkpoints)
    assert_same_cache(one_shot, resumed)
    # step 44 ended the merge of leaves 23 and 24 (1-based): leaves 1-24 are done, 25-32 remain
    assert seen[0] == "resumed at leaf 25/32" and resumed.metadata["resumed"] == "resumed at leaf 25/32"
    assert resumed.metadata["leaves_computed"] == "8"
    assert node_keys(checkpoints) == ["leaves-0-31"]  # the root stays until the caller stores the cache
    again = build_cache(deep, prefix, context, suffix, cfg, checkpoints=checkpoints)  # killed before storing
    assert again.metadata["leaves_computed"] == "0" and again.metadata["resumed"] == "resumed with all 32 leaves done"
    assert_same_cache(one_shot, again)
    checkpoints.clear()
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_without_interruption_a_checkpointed_build_is_the_plain_build(deep, tmp_path):
    prefix, context, suffix = inputs()
    plain = build_cache(deep, prefix, context, suffix, config())
    checked = build_cache(deep, prefix, context, suffix, config(), checkpoints=DirectoryCheckpointer(tmp_path / "c"))
    assert_same_cache(plain, checked)
    assert checked.metadata["leaves_computed"] == "32" and checked.metadata["resumed"] == ""


@pytest.mark.slow
def test_a_recording_build_resumes_to_the_same_leaf_state_file(deep, tmp_path):
    """Deep-read leaf states: each leaf's recorded states are checkpointed with it, so the
    resumed build writes the one-shot build's file byte for byte."""
    prefix, context, suffix = inputs()
    one_shot = build_cache(deep, prefix, context, suffix, config(), leaf_states=tmp_path / "one.leaves")
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(Interrupted):
        build_cache(
            deep,
            prefix,
            context,
            suffix,
            config(),
            progress=stop_at(30),
            checkpoints=checkpoints,
            leaf_states=tmp_path / "two.leaves",
        )
    assert not (tmp_path / "two.leaves").exists()
    resumed = build_cache(
        deep, prefix, context, suffix, config(), checkpoints=checkpoints, leaf_states=tmp_path / "two.leaves"
    )
    assert int(resumed.metadata["leaves_computed"]) < 32
    assert_same_cache(one_shot, resumed)
    assert (tmp_path / "one.leaves").read_bytes() == (tmp_path / "two.leaves").read_bytes()


@pytest.mark.slow
def test_missing_recorded_states_rebuild_only_their_subtree(deep, tmp_path, caplog):
    prefix, context, suffix = inputs()
    one_shot = build_cache(deep, prefix, context, suffix, config(), leaf_states=tmp_path / "one.leaves")
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(Interrupted):
        build_cache(
            deep,
            prefix,
            context,
            suffix,
            config(),
            progress=stop_at(46),
            checkpoints=checkpoints,
            leaf_states=tmp_path / "two.leaves",
        )
    checkpoints.discard("states-20")  # lost: leaves 17-24 (the subtree holding it) are built again
    with caplog.at_level(logging.WARNING):
        resumed = build_cache(
            deep, prefix, context, suffix, config(), checkpoints=checkpoints, leaf_states=tmp_path / "two.leaves"
        )
    assert "leaf 21" in caplog.text
    assert resumed.metadata["leaves_computed"] == str(32 - 16)  # leaves 1-16 came from their checkpoint
    assert_same_cache(one_shot, resumed)
    assert (tmp_path / "one.leaves").read_bytes() == (tmp_path / "two.leaves").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("change", ["text", "settings", "model"])
def test_checkpoints_of_another_build_are_ignored(deep, tmp_path, caplog, change):
    prefix, context, suffix = inputs()
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(Interrupted):
        build_cache(deep, prefix, context, suffix, config(), progress=stop_at(40), checkpoints=checkpoints)
    model, cfg = deep, config()
    if change == "text":
        context = random_ids(CONTEXT, 99)
    elif change == "settings":
        cfg = config(seed=1, significance="random")
    else:
        model = tiny_model("llama", layers=8, window=64, seed=1)
    one_shot = build_cache(model, prefix, context, suffix, cfg)
    with caplog.at_level(logging.INFO, logger="homer.checkpoints"):
        other = build_cache(model, prefix, context, suffix, cfg, checkpoints=checkpoints)
    assert "belongs to another build" in caplog.text
    assert other.metadata["leaves_computed"] == "32" and other.metadata["resumed"] == ""
    assert_same_cache(one_shot, other)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "altered", "not-safetensors"])
def test_a_damaged_checkpoint_is_ignored_and_rebuilt(deep, tmp_path, caplog, damage):
    prefix, context, suffix = inputs()
    one_shot = build_cache(deep, prefix, context, suffix, config())
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(Interrupted):
        build_cache(deep, prefix, context, suffix, config(), progress=stop_at(40), checkpoints=checkpoints)
    path = checkpoints.path("leaves-0-15")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "altered":
        middle = len(data) - 1000
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :])
    else:
        path.write_bytes(b"not a checkpoint at all")
    with caplog.at_level(logging.WARNING):
        resumed = build_cache(deep, prefix, context, suffix, config(), checkpoints=checkpoints)
    assert "checkpoint leaves-0-15" in caplog.text and "built again" in caplog.text
    assert int(resumed.metadata["leaves_computed"]) > 16  # leaves 1-16 again, the rest from checkpoints
    assert_same_cache(one_shot, resumed)


def forge(path, secret: bytes | None = None, stamped: bool = True) -> None:
    """Alter a checkpoint's K/V and recompute its (unkeyed) sha256, as the probe did: the old
    stamp is kept (``stamped``), dropped (an older, unkeyed checkpoint) or recomputed under
    another ``secret``."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    from homer.checkpoints import payload_digest, stamp

    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
    tensors = load(path.read_bytes())
    tensors["values.0"] = tensors["values.0"] + 0.5
    metadata["payload_sha256"] = payload_digest(tensors)
    if not stamped:
        del metadata["stamp"]
    elif secret is not None:
        metadata["stamp"] = stamp(secret, path.name.removesuffix(".safetensors"), metadata)
    path.write_bytes(save(tensors, metadata=metadata))


@pytest.mark.slow
@pytest.mark.parametrize("forgery", ["recomputed-sha256", "unstamped", "stamped-under-another-key"])
def test_a_forged_checkpoint_is_skipped_and_rebuilt(deep, one_shot_build, tmp_path, caplog, forgery):
    """Finding 8: the store stamps its checkpoints with an HMAC under its own secret; a forged
    entry (altered tensors, sha256 recomputed) passes the plain checksum but not the stamp,
    so it is skipped with a log line and that part is built again."""
    import shutil

    store = Store(tmp_path / "store")
    prefix, context, suffix = inputs()
    one_shot = one_shot_build
    doc = store.add_document(b"forged", "forged.txt", "forged", "text", [0])
    key = "cd" * 16
    checkpoints = store.build_checkpoints(doc["id"], key)
    with pytest.raises(Interrupted):
        build_cache(deep, prefix, context, suffix, config(), progress=stop_at(40), checkpoints=checkpoints)
    path = checkpoints.path("leaves-0-15")
    forge(path, secret=b"another store's secret!!" if forgery.endswith("key") else None, stamped=forgery != "unstamped")

    if forgery == "recomputed-sha256":  # a real forgery: without the key it is resumed from, the cache differs
        shutil.copytree(store.checkpoint_dir(key), tmp_path / "unkeyed")
        unkeyed = build_cache(
            deep, prefix, context, suffix, config(), checkpoints=DirectoryCheckpointer(tmp_path / "unkeyed")
        )
        assert int(unkeyed.metadata["leaves_computed"]) < 16
        forged, real = unkeyed.tensors(), one_shot.tensors()
        assert any(not torch.equal(forged[name], real[name]) for name in real)

    with caplog.at_level(logging.WARNING):
        resumed = build_cache(
            deep, prefix, context, suffix, config(), checkpoints=store.build_checkpoints(doc["id"], key)
        )
    line = next(r.getMessage() for r in caplog.records if "checkpoint leaves-0-15" in r.getMessage())
    reason = "carries no stamp" if forgery == "unstamped" else "does not carry this store's stamp"
    assert reason in line and "built again" in line, line
    assert int(resumed.metadata["leaves_computed"]) >= 16  # leaves 1-16 again, the rest from checkpoints
    assert_same_cache(one_shot, resumed)


def secrets_of_racing_openers(root, count: int = 8) -> list[bytes]:
    """The checkpoint secret each of ``count`` openers of the store at ``root`` gets, all
    asking at once (threads released together)."""
    openers = [Store(root) for _ in range(count)]
    start = threading.Barrier(count)
    found = []

    def make(opener):
        start.wait()
        found.append(opener.checkpoint_secret())

    workers = [threading.Thread(target=make, args=(opener,)) for opener in openers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return found


def test_the_store_s_checkpoint_secret(tmp_path):
    """Made once, mode 0600, in the store root (outside every checkpoint folder), the same for
    every opener; a damaged one is refused, reported by check and replaced after repair."""
    store = Store(tmp_path / "store")
    secret = store.checkpoint_secret()
    path = store.root / "checkpoint.key"
    assert path.read_bytes() == secret and len(secret) == 32
    assert (path.stat().st_mode & 0o777) == 0o600
    assert Store(store.root).checkpoint_secret() == secret  # another opener reads it, never remakes it
    found = secrets_of_racing_openers(tmp_path / "fresh")  # a new store: one key, whoever makes it
    assert len(found) == 8 and len(set(found)) == 1 and (tmp_path / "fresh" / "checkpoint.key").read_bytes() == found[0]
    assert list(store.tmp_dir.iterdir()) == [] and store.check() == []
    path.write_bytes(b"short")
    from storage import StoreError

    with pytest.raises(StoreError, match="checkpoint.key is not a 32-byte file"):
        Store(store.root).build_checkpoints(store.add_document(b"x", "x.txt", "x", "text", [0])["id"], "ef" * 16)
    problems = store.check(repair=True)
    assert [(p.kind, p.path, p.repaired) for p in problems] == [("bad-file", "checkpoint.key", True)]
    assert len(Store(store.root).checkpoint_secret()) == 32 and store.check() == []


def test_the_checkpoint_secret_without_hard_links(tmp_path, monkeypatch):
    """Some mounted buckets refuse hard links: the key is then created exclusively, and
    racing openers still share one (the refusal is simulated: os.link raises as they do)."""
    import errno

    def no_links(*_):
        raise OSError(errno.EPERM, "hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    found = secrets_of_racing_openers(tmp_path / "bucket")
    path = tmp_path / "bucket" / "checkpoint.key"
    assert len(set(found)) == 1 and path.read_bytes() == found[0] and (path.stat().st_mode & 0o777) == 0o600
    assert list((tmp_path / "bucket" / "tmp").iterdir()) == []


@pytest.mark.slow
def test_the_embedded_model_resumes_bit_identically(tmp_path):
    from homer.models import load_model

    model, tokenizer = load_model()
    text = story(40)  # ~1000 tokens; 8 leaves at M = 256
    cfg = HomerConfig(max_chunk_len=256, significance="uncalibrated")
    one_shot = build_document_cache(model, tokenizer, text, cfg)
    leaves = int(one_shot.metadata["num_leaves"])
    assert leaves >= 4
    checkpoints = DirectoryCheckpointer(tmp_path / "checkpoints")
    with pytest.raises(Interrupted):
        build_document_cache(model, tokenizer, text, cfg, progress=stop_at(leaves), checkpoints=checkpoints)
    seen = []
    resumed = build_document_cache(model, tokenizer, text, cfg, checkpoints=checkpoints, progress=stop_at(10**6, seen))
    assert seen[0].startswith("resumed at leaf ") and 0 < int(resumed.metadata["leaves_computed"]) < leaves
    assert_same_cache(one_shot, resumed)


# --- the store and the worker ---------------------------------------------------------
def test_the_store_keeps_checkpoints_per_build_until_the_cache_is_indexed(deep, tmp_path):
    store = Store(tmp_path / "store")
    tokenizer = tiny_tokenizer()
    text = story(30)
    doc = store.add_document(text.encode(), "keeper.txt", text, "text", [0])
    key = "ab" * 16
    checkpoints = store.build_checkpoints(doc["id"], key)
    cfg = config(max_chunk_len=192)
    with pytest.raises(Interrupted):
        build_document_cache(deep, tokenizer, text, cfg, progress=stop_at(20), checkpoints=checkpoints)
    folder = store.checkpoint_dir(key)
    assert folder == store.root / "checkpoints" / key and node_keys(checkpoints)
    assert json.loads((folder / "build.json").read_text())["document_id"] == doc["id"]
    assert store.check() == []  # a build that may still resume: not stale
    cache = build_document_cache(deep, tokenizer, text, cfg, checkpoints=store.build_checkpoints(doc["id"], key))
    assert cache.metadata["resumed"].startswith("resumed at leaf ")
    row = store.save_cache(doc["id"], cache)
    assert not store.checkpoint_dir(row["id"]).exists()  # removed once indexed (key of the real cache)
    assert folder.exists()  # a checkpoint folder under another key is its own build's
    store.drop_checkpoints(key)
    assert not folder.exists() and list(store.tmp_dir.iterdir()) == []
    assert store.check() == []


def test_store_check_finds_stale_checkpoints(deep, tmp_path):
    store = Store(tmp_path / "store", checkpoint_max_age_hours=2)
    texts = {name: story(10, name) for name in ("gone", "built", "old", "queued", "fresh")}
    docs = {name: store.add_document(t.encode(), f"{name}.txt", t, "text", [0]) for name, t in texts.items()}
    keys = {name: f"{i:x}" * 32 for i, name in enumerate(texts, start=1)}
    for name in texts:
        cp = store.build_checkpoints(docs[name]["id"], keys[name])
        cp.save("leaves-0-0", {"x": torch.zeros(3)}, {})
    store.delete_document(docs["gone"]["id"])  # removes its checkpoints with it
    assert not store.checkpoint_dir(keys["gone"]).exists()
    store.build_checkpoints(docs["fresh"]["id"], keys["gone"])  # a folder whose document then goes
    (store.checkpoint_dir(keys["gone"]) / "build.json").write_text(json.dumps({"document_id": "f" * 64}))
    cache = build_document_cache(deep, tiny_tokenizer(), texts["built"], config(max_chunk_len=192))
    row = store.save_cache(docs["built"]["id"], cache)
    store.build_checkpoints(docs["built"]["id"], row["id"])  # left behind by a build after the cache was stored
    store.jobs.create(docs["queued"]["id"], "k" * 32, "embedded")
    (store.root / "checkpoints" / "not-a-key").mkdir()
    old = time.time() - 3 * 3600
    for name in ("old", "queued"):
        for path in [store.checkpoint_dir(keys[name]), *store.checkpoint_dir(keys[name]).iterdir()]:
            os.utime(path, (old, old))
    problems = store.check()
    found = {p.path.split("/")[-1]: p for p in problems}
    assert all(p.kind in ("stale-checkpoint", "orphan-file") for p in problems), problems
    assert set(found) == {keys["gone"], row["id"], keys["old"], "not-a-key"}, problems
    assert "document is gone" in found[keys["gone"]].detail and "already built" in found[row["id"]].detail
    assert "stopped build" in found[keys["old"]].detail
    repaired = store.check(repair=True)
    assert all(p.repaired for p in repaired) and len(repaired) == 4
    kept = [keys["built"], keys["queued"], keys["fresh"]]  # a build of it may still resume
    assert sorted(p.name for p in (store.root / "checkpoints").iterdir()) == sorted(kept)
    assert store.check() == []


@pytest.mark.slow
def test_a_killed_worker_s_build_resumes_from_its_checkpoints(tmp_path, model_dir):
    """The bar: SIGKILL a worker in the middle of a 32-leaf build, start another; the job
    finishes from the checkpoints (fewer leaves computed than from scratch, counted) and the
    stored cache equals a one-shot build's bit for bit."""
    from app.tasks import wait_for
    from app.worker import queue_for
    from homer.models import load_model

    settings = {"significance": "uncalibrated", "warmup_layers": 0, "max_chunk_len": 192}
    text = story(30)
    store = Store(tmp_path / "store")
    home, log = tmp_path / "home", tmp_path / "worker.log"
    threads = {"OMP_NUM_THREADS": 1}
    first = start_worker(store.root, home, log, HOMER_JOB_LEASE_SECONDS=3, HOMER_TEST_STEP_DELAY=0.25, **threads)
    try:
        job = queue_for(store).submit_file(text.encode(), "keeper.txt", str(model_dir), settings)

        def leaves_done():
            folders = list((store.root / "checkpoints").glob("*/leaves-*.safetensors"))
            return store.jobs.get(job["id"])["progress"] > 0.3 and len(folders) >= 2

        wait_until(leaves_done, timeout=180, what="a third of the build to be checkpointed")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        stop(first, signal.SIGKILL)
    killed = store.jobs.get(job["id"])
    assert killed["state"] == "running" and 0.3 < killed["progress"] < 1.0
    assert store.caches(status=None) == []

    second = start_worker(store.root, home, log, HOMER_JOB_LEASE_SECONDS=3, **threads)
    try:
        done = wait_for(store, job["id"], timeout=180)
    finally:
        stop(second)
    assert done["state"] == "done", (done, log.read_text()[-3000:])
    cache = store.load_cache(done["cache_id"])
    computed, leaves = int(cache.metadata["leaves_computed"]), int(cache.metadata["num_leaves"])
    assert leaves == 32 and 0 < computed < leaves, cache.metadata
    resumed_at = 32 - computed + 1
    assert f"resumed at leaf {resumed_at}/32" in done["message"], done["message"]
    assert f"{computed} of 32 leaves computed" in done["message"]
    print(f"killed at progress {killed['progress']:.2f}; the second worker: {done['message']}")
    assert not (store.root / "checkpoints" / done["cache_id"]).exists()  # removed once indexed
    assert store.check() == [] and list(store.tmp_dir.iterdir()) == []

    model, tokenizer = load_model(str(model_dir))
    torch.set_num_threads(1)
    one_shot = build_document_cache(
        model,
        tokenizer,
        store.document_text(done["document_id"]),
        HomerConfig(**settings),
        prompt=default_prompt(tokenizer),
    )
    assert_same_cache(one_shot, cache)  # the stored file, read back
