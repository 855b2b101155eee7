"""Query-aware deep read: a rebuild from stored leaf states equals a full build with that suffix."""

import pytest
import torch
from conftest import random_ids, tiny_model, tiny_tokenizer

from homer import Conversation, HomerConfig, build_cache, build_document_cache
from homer.answering.deep_read import (
    DeepReadUnavailable,
    build_document_with_leaf_states,
    deep_read,
    deep_read_document,
)
from homer.leaf_states import LeafStateMismatchError, LeafStates
from homer.plan import ChunkPlan

P = 3
UNCAL = HomerConfig(significance="uncalibrated", cache_dtype="float32")  # M = 32, T = 32, W = 2 on tiny models


def assert_same_cache(got, want, atol=1e-5):
    assert torch.equal(got.positions, want.positions)
    assert torch.equal(got.sources, want.sources)
    assert torch.equal(got.token_ids, want.token_ids)
    assert (got.prefix_len, got.suffix_len) == (want.prefix_len, want.suffix_len)
    torch.testing.assert_close(got.keys, want.keys, rtol=0, atol=atol)
    torch.testing.assert_close(got.values, want.values, rtol=0, atol=atol)
    torch.testing.assert_close(got.last_logits, want.last_logits, rtol=0, atol=atol * 10)


def leaves(context_len: int, suffix_len: int) -> int:
    return ChunkPlan(P, context_len, suffix_len, 32, 32, 6, 2).num_leaves


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.slow
@pytest.mark.parametrize("context_len", [20, 60, 150])
@pytest.mark.parametrize(
    "config",
    [
        UNCAL,
        HomerConfig(
            significance="calibrated",
            cache_dtype="float32",
            bias=torch.rand(6, 32, generator=torch.Generator().manual_seed(5)),
        ),
        HomerConfig(significance="random", cache_dtype="float32", seed=3),
        HomerConfig(significance="uncalibrated", cache_dtype="float32", query_rows=3, target_len=24),
        HomerConfig(
            significance="calibrated",
            cache_dtype="float32",
            query_rows=2,
            score_layers=3,
            bias=torch.rand(6, 32, generator=torch.Generator().manual_seed(6)),
        ),
    ],
    ids=["uncalibrated", "calibrated", "random", "rows3-T24", "3-layer-scores"],
)
def test_deep_read_equals_a_full_question_aware_build(llama, tmp_path, context_len, config):
    prefix, context = random_ids(P, 1), random_ids(context_len, 2)
    stored_suffix = random_ids(3, 3)  # the document-first suffix the states are built with
    path = tmp_path / "doc.leaves.safetensors"
    first = build_cache(llama, prefix, context, stored_suffix, config, leaf_states=path)
    # storing states does not change the build
    assert_same_cache(first, build_cache(llama, prefix, context, stored_suffix, config), atol=0)
    states = LeafStates(path)
    assert states.num_leaves == leaves(context_len, 3)
    for suffix_len in (1, 2, 5, 7):
        if leaves(context_len, suffix_len) != states.num_leaves:
            continue
        suffix = random_ids(suffix_len, 10 + suffix_len)
        full = build_cache(llama, prefix, context, suffix, config)
        fast = deep_read(llama, path, suffix, config=config, fallback=False)
        assert fast.metadata["deep_read"] == "leaf-states"
        assert_same_cache(fast, full)
        assert fast.metadata["significance_used"] == full.metadata["significance_used"]


def test_the_tests_cover_one_and_several_leaves():
    assert leaves(20, 7) == 1 and leaves(60, 1) == leaves(60, 7) == 4 and leaves(150, 1) == leaves(150, 5) == 8


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_deep_read_on_other_families(tmp_path, family):
    model = tiny_model(family)
    prefix, context, suffix = random_ids(P, 1), random_ids(100, 2), random_ids(4, 3)
    path = tmp_path / "leaves.safetensors"
    build_cache(model, prefix, context, random_ids(2, 4), UNCAL, leaf_states=path)
    full = build_cache(model, prefix, context, suffix, UNCAL)
    assert_same_cache(deep_read(model, path, suffix, fallback=False), full)


@pytest.mark.slow
def test_a_suffix_that_changes_the_leaf_count_falls_back_to_a_full_rebuild(llama, tmp_path):
    prefix, context = random_ids(P, 1), random_ids(100, 2)
    path = tmp_path / "leaves.safetensors"
    build_cache(llama, prefix, context, random_ids(1, 3), UNCAL, leaf_states=path)
    suffix = random_ids(6, 4)
    assert leaves(100, 1) == 4 and leaves(100, 6) == 8
    with pytest.raises(DeepReadUnavailable, match="leaves"):
        deep_read(llama, path, suffix, fallback=False)
    fast = deep_read(llama, path, suffix)
    assert fast.metadata["deep_read"] == "full-rebuild"
    assert_same_cache(fast, build_cache(llama, prefix, context, suffix, UNCAL), atol=0)


@pytest.mark.slow
def test_float16_states_give_nearly_the_same_cache(llama, tmp_path):
    config = HomerConfig(significance="uncalibrated")  # the default cache dtype, float16
    prefix, context, suffix = random_ids(P, 1), random_ids(120, 2), random_ids(4, 3)
    path = tmp_path / "leaves.safetensors"
    build_cache(llama, prefix, context, random_ids(2, 4), config, leaf_states=path)
    fast, full = deep_read(llama, path, suffix), build_cache(llama, prefix, context, suffix, config)
    assert fast.keys.dtype == torch.float16 and fast.keys.shape == full.keys.shape
    assert (fast.sources == full.sources).float().mean() > 0.9
    layers = len(ChunkPlan(P, 120, 2, 32, 32, 6, 2).layers_at(0))
    per_token = LeafStates(path).bytes_per_token  # Lw · 2 · KV · d · b + H · b, plus the ids and the header
    assert per_token == pytest.approx(layers * 2 * 2 * 16 * 2 + 64 * 2 + 8, rel=0.25)


def test_leaf_states_refuse_another_model_or_other_settings(llama, tmp_path):
    prefix, context, suffix = random_ids(P, 1), random_ids(100, 2), random_ids(2, 3)
    path = tmp_path / "leaves.safetensors"
    build_cache(llama, prefix, context, suffix, UNCAL, leaf_states=path)
    other = tiny_model("llama", seed=1)
    with pytest.raises(LeafStateMismatchError, match="fingerprint"):
        deep_read(other, path, suffix)
    with pytest.raises(LeafStateMismatchError, match="fingerprint"):
        LeafStates.open(path, model=other)
    with pytest.raises(LeafStateMismatchError, match="warmup_layers"):
        deep_read(
            llama, path, suffix, config=HomerConfig(significance="uncalibrated", cache_dtype="float32", warmup_layers=1)
        )
    with pytest.raises(LeafStateMismatchError, match="cache_dtype"):
        LeafStates.open(path, model=llama, config=HomerConfig(cache_dtype="float16"))
    # pruning settings may differ: they act after the stored states
    LeafStates.open(path, model=llama, config=HomerConfig(cache_dtype="float32", significance="random"))
    cache_file = build_cache(llama, prefix, context, suffix, UNCAL).save(tmp_path / "doc.homer.safetensors")
    with pytest.raises(LeafStateMismatchError, match="not a HOMER leaf-state file"):
        LeafStates(cache_file)
    (tmp_path / "broken.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LeafStateMismatchError):
        deep_read(llama, tmp_path / "broken.safetensors", suffix)


def test_leaf_states_are_written_atomically(llama, tmp_path):
    prefix, context, suffix = random_ids(P, 1), random_ids(150, 2), random_ids(2, 3)
    path = tmp_path / "leaves.safetensors"

    def stop(done, total, message):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(llama, prefix, context, suffix, UNCAL, progress=stop, leaf_states=path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temp file
    build_cache(llama, prefix, context, suffix, UNCAL, leaf_states=path)
    assert [p.name for p in tmp_path.iterdir()] == ["leaves.safetensors"]
    states = LeafStates(path)
    assert torch.equal(states.context_ids, context) and torch.equal(states.prefix_ids, prefix)
    keys, values, hidden = states.leaf(7)
    start, end = ChunkPlan(P, 150, 2, 32, 32, 6, 2).slice_bounds(7)
    assert keys.shape == values.shape == (len(ChunkPlan(P, 150, 2, 32, 32, 6, 2).layers_at(0)), 2, end - start, 16)
    assert hidden.shape == (end - start, 64)


def test_document_deep_read_answers_like_a_question_aware_build(tmp_path):
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    config = HomerConfig(significance="uncalibrated", cache_dtype="float32")
    text = " ".join(f"Line {i} says the value {i * 7 % 100} for item {i}." for i in range(30))
    question = "What is the value for item 5?"
    path = tmp_path / "doc.leaves.safetensors"
    doc = build_document_with_leaf_states(model, tokenizer, text, path, config, metadata={"source": "doc.txt"})
    plain = build_document_cache(model, tokenizer, text, config, metadata={"source": "doc.txt"})
    assert_same_cache(doc, plain, atol=0)
    assert torch.equal(doc.char_offsets, plain.char_offsets) and doc.metadata["question"] == ""
    full = build_document_cache(model, tokenizer, text, config, question=question, metadata={"source": "doc.txt"})
    fast = deep_read_document(model, tokenizer, path, question)
    assert int(fast.metadata["num_leaves"]) > 1
    assert fast.metadata["deep_read"] == "leaf-states"
    assert_same_cache(fast, full)
    assert torch.equal(fast.char_offsets, full.char_offsets)
    for key in ("question", "prompt", "prompt_version", "source", "settings", "model_fingerprint"):
        assert fast.metadata[key] == full.metadata[key]
    answers = ["".join(Conversation(c, model, tokenizer).ask(question, max_new_tokens=5)) for c in (fast, full)]
    assert answers[0] == answers[1]


@pytest.mark.e2e
def test_cli_build_with_leaf_states_then_deep_read(model_dir, tmp_path):
    import subprocess
    import sys

    def homer(*args):
        return subprocess.run(
            [sys.executable, "-m", "homer", *map(str, args)],
            capture_output=True,
            text=True,
            env={"HOMER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
            timeout=300,
        )

    doc = tmp_path / "book.txt"
    doc.write_text("The lighthouse keeper was named Ada. " * 60)
    out = tmp_path / "book.homer.safetensors"
    r = homer("build", doc, "-o", out, "--model", model_dir, "--significance", "uncalibrated", "--leaf-states")
    assert r.returncode == 0, r.stderr
    leaves = tmp_path / "book.leaves.safetensors"
    assert leaves.exists() and "leaf states" in r.stdout
    answer = tmp_path / "q.homer.safetensors"
    r = homer(
        "deep-read", leaves, "Who kept the lighthouse?", "-o", answer, "--model", model_dir, "--max-new-tokens", "4"
    )
    assert r.returncode == 0, r.stderr
    assert "from leaf states" in r.stderr and r.stdout.startswith("> Who kept the lighthouse?")
    from homer import HomerCache

    assert HomerCache.load(answer).metadata["question"] == "Who kept the lighthouse?"
    other = tmp_path / "other-model"
    tiny_model("llama", window=1024, seed=5).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    r = homer("deep-read", leaves, "Who?", "--model", other)
    assert r.returncode == 2 and "fingerprint" in r.stderr
