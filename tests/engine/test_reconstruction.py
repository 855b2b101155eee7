"""The "reconstruction" significance strategy (KVzip, arXiv 2505.23416): a teacher-forced
copy of each leaf chunk scores its tokens in the leaf stage, the tree carries the scores."""

import pytest
import torch
from conftest import random_ids, tiny_model, tiny_tokenizer

from homer import HomerCache, HomerConfig, build_cache
from homer.config import SIGNIFICANCE_CHOICES
from homer.fingerprint import model_fingerprint
from homer.layers import DecoderStack
from homer.plan import ChunkPlan
from homer.reconstruction import Reconstruction, model_repeat_prompt_ids, repeat_prompt_ids
from homer.tree import _Builder, build_level_order, significance_for

P, S = 3, 2
REC = HomerConfig(significance="reconstruction", span="token", cache_dtype="float32")  # M = 32, T = 32, W = 2
UNCAL = HomerConfig(significance="uncalibrated", span="token", cache_dtype="float32")


def affixes():
    return random_ids(P, 1), random_ids(S, 2)


def make_builder(model, context, config=REC, cls=_Builder):
    prefix, suffix = affixes()
    stack = DecoderStack(model)
    cfg = config.resolve(model.config)
    plan = ChunkPlan(P, len(context), S, cfg.max_chunk_len, cfg.target_len, stack.num_layers, cfg.warmup_layers)
    scorer = significance_for(cfg, model, model_fingerprint(model))
    return cls(stack, plan, scorer, prefix, context, suffix, 0, None), plan


def test_selectable_by_name_and_unknown_names_still_fail(llama):
    assert "reconstruction" in SIGNIFICANCE_CHOICES
    scorer = significance_for(REC.resolve(llama.config), llama, model_fingerprint(llama))
    assert isinstance(scorer, Reconstruction) and scorer.carries_scores and scorer.layers == 4
    with pytest.raises(ValueError, match="significance"):
        HomerConfig(significance="kvzip")
    with pytest.raises(ValueError, match="reconstruction_layers"):
        HomerConfig(significance="reconstruction", reconstruction_layers=0)
    # the setting is part of a cache's settings only when the strategy reads it
    assert "reconstruction_layers" not in HomerConfig().settings()
    assert HomerConfig(significance="reconstruction", reconstruction_layers=2).settings()["reconstruction_layers"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("target", [None, 20])
def test_cache_builds_and_keeps_the_configured_number_of_tokens(family_model, target):
    prefix, suffix = affixes()
    context = random_ids(200, 4)
    config = HomerConfig(significance="reconstruction", span="token", cache_dtype="float32", target_len=target)
    cache = build_cache(family_model, prefix, context, suffix, config)
    plan = ChunkPlan(P, len(context), S, 32, target or 32, 6, 2)
    assert len(cache) == (target or P + 2 * (plan.usable_len // 2) + S)
    assert cache.metadata["significance_used"] == "reconstruction"
    assert cache.token_ids[:P].tolist() == prefix.tolist() and cache.token_ids[-S:].tolist() == suffix.tolist()
    kept = cache.sources[P:-S]
    assert (kept >= 0).all() and (kept.diff() > 0).all()
    assert torch.equal(cache.token_ids[P:-S], context[kept])


@pytest.mark.slow
def test_the_copy_leaves_no_kv_in_the_cache(llama):
    """Same length, shapes, affix positions and last position as the default strategy; every
    kept token sits at its leaf's reused position; no copy or prompt token is stored."""
    prefix, suffix = affixes()
    context = random_ids(210, 5)
    rec = build_cache(llama, prefix, context, suffix, REC)
    ref = build_cache(llama, prefix, context, suffix, UNCAL)
    assert len(rec) == len(ref) and rec.keys.shape == ref.keys.shape and rec.values.shape == ref.values.shape
    assert rec.last_position == ref.last_position
    assert torch.equal(rec.positions[:P], ref.positions[:P]) and torch.equal(rec.positions[-S:], ref.positions[-S:])
    plan = ChunkPlan(P, len(context), S, 32, 32, 6, 2)
    kept = rec.sources[P:-S]
    assert rec.positions[P:-S].tolist() == [P + int(j) % plan.slice_len for j in kept]
    assert int(rec.positions.max()) < 32
    assert not torch.equal(rec.sources, ref.sources)  # the score steers the pruning


class Recording(_Builder):
    """Remembers every context token's leaf-stage score, by source index."""

    def carry_scores(self, node):
        fresh = node.carried is None
        super().carry_scores(node)
        if fresh and node.carried is not None:
            p, s = self.plan.prefix_len, self.plan.suffix_len
            self.leaf_scores = getattr(self, "leaf_scores", {})
            for j, score in zip(node.sources[p : len(node) - s].tolist(), node.carried[p : len(node) - s].tolist()):
                self.leaf_scores[j] = score


def test_kept_tokens_carry_their_leaf_stage_scores(llama):
    context = random_ids(215, 6)
    builder, plan = make_builder(llama, context, cls=Recording)
    with torch.no_grad():
        root = builder.subtree(0, plan.height, plan.root_target)
    assert plan.height >= 2 and len(builder.leaf_scores) == len(context)  # every leaf was scored
    assert root.carried is not None and len(root.carried) == len(root)
    context_part = slice(P, len(root) - S)
    expected = [builder.leaf_scores[j] for j in root.sources[context_part].tolist()]
    assert root.carried[context_part].tolist() == expected
    assert torch.isinf(root.carried[:P]).all() and torch.isinf(root.carried[-S:]).all()
    assert 0 < min(expected) and max(expected) <= 1  # softmax weights


def test_merge_prunes_by_carried_scores_not_suffix_queries(llama):
    """Give every leaf token a known carried score: the root keeps exactly the best."""

    class Planted(_Builder):
        def carry_scores(self, node):
            if node.carried is None and len(node.keys) == len(self.plan.layers_at(0)):
                node.carried = torch.full((len(node),), float("inf"))
                node.carried[P : len(node) - S] = node.sources[P : len(node) - S].float().remainder(7)

    context = random_ids(215, 7)
    builder, plan = make_builder(
        llama,
        context,
        config=HomerConfig(significance="reconstruction", span="token", cache_dtype="float32"),
        cls=Planted,
    )
    with torch.no_grad():
        root = builder.subtree(0, plan.height, plan.root_target)
    kept = root.sources[P:-S]
    assert (kept.remainder(7) >= 5).float().mean() > 0.9  # the highest planted scores survive


def test_save_load_is_exact(llama, tmp_path):
    prefix, suffix = affixes()
    cache = build_cache(
        llama,
        prefix,
        random_ids(200, 8),
        suffix,
        HomerConfig(significance="reconstruction", span="token", cache_dtype="float16"),
    )
    loaded = HomerCache.load(cache.save(tmp_path / "doc.homer.safetensors"), model=llama)
    for name, tensor in cache.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.metadata == cache.metadata


def test_deterministic(llama):
    prefix, suffix = affixes()
    context = random_ids(200, 9)
    a, b = (build_cache(llama, prefix, context, suffix, REC) for _ in range(2))
    assert torch.equal(a.sources, b.sources) and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_depth_first_equals_level_by_level(llama):
    context = random_ids(210, 10)
    with torch.no_grad():
        builder, plan = make_builder(llama, context)
        depth_first = builder.subtree(0, plan.height, plan.root_target)
        builder, plan = make_builder(llama, context)
        level_by_level = build_level_order(builder, plan, P, S)
    assert torch.equal(depth_first.sources, level_by_level.sources)
    assert torch.equal(depth_first.positions, level_by_level.positions)
    assert torch.equal(depth_first.carried, level_by_level.carried)
    for a, b in zip(depth_first.keys + depth_first.values, level_by_level.keys + level_by_level.values):
        assert torch.equal(a, b)


def test_score_is_the_max_softmax_attention_from_the_copy(llama):
    """The leaf score equals a reference read off a plain forward (eager attention, its
    weights returned) over prefix ++ chunk ++ prompt ++ chunk, contiguous positions."""
    prefix, suffix = affixes()
    context = random_ids(12, 11)
    prompt = random_ids(4, 12)
    layers = 3
    rec = Reconstruction(prompt, layers=layers)
    ids = torch.cat([prefix, context, suffix]).view(1, -1)
    with torch.no_grad():
        cache = llama(ids, use_cache=True).past_key_values
        keys = [layer.keys[0] for layer in cache.layers[:5]]
        values = [layer.values[0] for layer in cache.layers[:5]]
        got = rec.leaf_scores(DecoderStack(llama), keys, values, torch.arange(ids.shape[1]), ids[0], P, S)
        llama.set_attn_implementation("eager")
        full = torch.cat([prefix, context, prompt, context]).view(1, -1)
        attentions = llama(full, output_attentions=True).attentions
    n = P + len(context)
    want = torch.stack([a[0, :, n:, P:n].amax(dim=(0, 1)) for a in attentions[5 - layers : 5]]).amax(0)
    torch.testing.assert_close(got[P:n], want, rtol=1e-4, atol=1e-6)
    assert torch.isinf(got[:P]).all() and torch.isinf(got[n:]).all()


def test_long_chunks_are_scored_in_pieces_of_at_most_the_chunk_length():
    rec = Reconstruction(chunk_len=2048)
    assert rec.pieces(4000) == [(0, 2000), (2000, 4000)]
    assert rec.pieces(2048) == [(0, 2048)] and rec.pieces(0) == []
    assert all(b - a <= 2048 for a, b in rec.pieces(10_001))


def test_repeat_prompt_in_the_chat_format_or_plainly(model_dir):
    chat = tiny_tokenizer()
    assert chat.decode(repeat_prompt_ids(chat)) == (
        "\n\nRepeat the previous context exactly.<|im_end|>\n<|im_start|>assistant\n"
    )
    chat.chat_template = None
    assert chat.decode(repeat_prompt_ids(chat)) == "\n\nRepeat the previous context exactly.\n\n"
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(model_dir)  # its tokenizer lies beside it
    assert model_repeat_prompt_ids(saved) == repeat_prompt_ids(tiny_tokenizer())
    assert model_repeat_prompt_ids(tiny_model()) == []  # built in memory: no prompt
