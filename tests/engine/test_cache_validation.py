"""A cache file is used only when its tensors fit together and fit the model: checked when
it is loaded, when the store installs it (never indexed as ready) and by ``store check``; a
bad file already indexed is marked corrupt and rebuilt through the app's task path, never
served. The bad files are real caches of a tiny model, rewritten with safetensors."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from safetensors import safe_open
from safetensors.torch import save_file
from store_helpers import FAST, story

from homer import HomerConfig, build_document_cache
from homer.cache import CacheMismatchError, CacheStructureError, HomerCache
from storage import Store, StoreError
from storage.files import sha256_file


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", window=1024)


@pytest.fixture(scope="module")
def good_file(model, tmp_path_factory):
    cache = build_document_cache(model, tiny_tokenizer(), story(), HomerConfig(significance="uncalibrated"))
    return cache.save(tmp_path_factory.mktemp("good") / "good.safetensors")


def rewrite(source, target, change):
    """Copy a cache file with its tensors and metadata changed by ``change(tensors, meta)``."""
    with safe_open(str(source), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    change(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target), metadata=meta)
    return target


def _set(name, fn):
    def change(tensors, meta):
        tensors[name] = fn(tensors[name])

    return change


def _drop(name):
    def change(tensors, meta):
        tensors.pop(name)

    return change


def _meta(key, value):
    def change(tensors, meta):
        meta[key] = value

    return change


BAD = {
    "permuted shapes": (_set("keys", lambda k: k.permute(0, 2, 1, 3)), "values have shape"),
    "positions shorter than keys": (_set("positions", lambda p: p[:-5]), "positions has"),
    "fewer layers": (lambda t, m: t.update(keys=t["keys"][:-1], values=t["values"][:-1]), "layers"),
    "values shorter than keys": (_set("values", lambda v: v[:, :, :-3]), "values have shape"),
    "int16 keys": (
        lambda t, m: t.update(keys=t["keys"].to(torch.int16), values=t["values"].to(torch.int16)),
        "stored as I16",
    ),
    "missing keys": (_drop("keys"), "missing tensor(s) keys"),
    "missing positions": (_drop("positions"), "missing tensor(s) positions"),
    "missing inv_freq": (_drop("inv_freq"), "missing tensor(s) inv_freq"),
    "token ids shorter": (_set("token_ids", lambda t: t[:10]), "token_ids has"),
    "float positions": (_set("positions", lambda p: p.float()), "positions is stored as F32"),
    "negative positions": (_set("positions", lambda p: p - 1000), "positions run from"),
    "huge positions": (_set("positions", lambda p: p + 2**40), "positions run from"),
    "inv_freq of another head size": (_set("inv_freq", lambda f: torch.cat([f, f])), "inv_freq has"),
    "wrong vocabulary": (_set("last_logits", lambda logits: logits[:-1]), "vocabulary"),
    "2-D logits": (_set("last_logits", lambda logits: logits[None]), "last_logits has 2 dimension"),
    "prefix longer than the cache": (_meta("prefix_len", "100000"), "do not fit"),
    "prefix not a number": (_meta("prefix_len", "lots"), "prefix_len"),
    "token id outside the vocabulary": (_set("token_ids", lambda t: t + 1000), "token ids run from"),
}


@pytest.mark.parametrize("variant", list(BAD))
def test_inconsistent_cache_tensors_are_refused(tmp_path, model, good_file, variant):
    change, words = BAD[variant]
    bad = rewrite(good_file, tmp_path / "bad.safetensors", change)
    with pytest.raises(CacheStructureError) as info:
        HomerCache.load(bad, model=model)
    assert words in str(info.value) and "\n" not in str(info.value), str(info.value)

    store = Store(tmp_path / "store")
    text = story()
    doc = store.add_document(text.encode(), "book.txt", text, "text", [0])
    with pytest.raises(StoreError) as info:  # the model's fingerprint is known in this process
        store.install_cache_file(doc["id"], bad)
    assert "\n" not in str(info.value) and "consistent HOMER cache" in str(info.value)
    assert store.caches(status=None) == []
    assert [p for p in (store.root / "caches").rglob("*") if p.is_file()] == []
    assert list(store.tmp_dir.iterdir()) == []


def test_the_good_file_loads(model, good_file):
    cache = HomerCache.load(good_file, model=model)
    assert cache.keys.dtype == torch.float16 and len(cache) == cache.positions.shape[0]


def test_a_cache_of_another_model_shape_is_refused_by_config(tmp_path, good_file):
    wider = tiny_model("llama", window=1024, layers=7)
    with pytest.raises(CacheMismatchError):
        HomerCache.load(good_file, model=wider)  # another fingerprint
    with pytest.raises(CacheStructureError, match="6 layers, the model has 7"):
        HomerCache.load(good_file, config=wider.config)


def _poison_indexed(store, row, change, tmp_path):
    """Rewrite an indexed cache file to a bad one and update its row as an older version of
    the store (which only checked metadata) would have indexed it."""
    path = store.root / row["file"]
    bad = rewrite(path, tmp_path / "bad.safetensors", change)
    bad.replace(path)
    store.db.execute(
        "UPDATE caches SET checksum = ?, bytes = ? WHERE id = ?", [sha256_file(path), path.stat().st_size, row["id"]]
    )


def test_corrupt_cache_is_marked_and_rebuilt_not_served(tmp_path, model_dir):
    from app.tasks import get_model, open_document_cache, run_build

    store = Store(tmp_path / "store")
    text = story(20, "rebuild")
    doc = store.add_document(text.encode(), "book.txt", text, "text", [0])
    queued = []
    cache, job = open_document_cache(store, queued.append, doc["id"], str(model_dir), FAST)
    assert cache is None and queued == [job["id"]]
    assert run_build(store, job["id"]) == "done"
    cache, _ = open_document_cache(store, queued.append, doc["id"], str(model_dir), FAST)
    assert cache is not None
    row = store.caches(doc["id"])[0]

    _poison_indexed(store, row, BAD["values shorter than keys"][0], tmp_path)
    problems = store.check()  # the check sees structure, not just checksums
    assert [p.kind for p in problems] == ["corrupt-file"] and "values have shape" in problems[0].detail

    served, job = open_document_cache(store, queued.append, doc["id"], str(model_dir), FAST)
    assert served is None and job["state"] == "queued" and queued[-1] == job["id"]  # a rebuild is queued
    assert store.get_cache(row["id"])["status"] == "corrupt"
    assert "values have shape" in store.get_cache(row["id"])["error"]
    assert run_build(store, job["id"]) == "done"
    cache, _ = open_document_cache(store, queued.append, doc["id"], str(model_dir), FAST)
    assert cache is not None and cache.values.shape == cache.keys.shape
    assert store.get_cache(row["id"])["status"] == "ready" and store.check() == []

    # fewer layers are consistent in themselves: the model's shape (known from its
    # fingerprint in this process) catches them on load
    model = get_model(str(model_dir))[0]
    _poison_indexed(store, store.get_cache(row["id"]), BAD["fewer layers"][0], tmp_path)
    served, job = open_document_cache(store, queued.append, doc["id"], str(model_dir), FAST)
    assert served is None and job["state"] == "queued"
    assert f"the model has {model.config.num_hidden_layers}" in store.get_cache(row["id"])["error"]
