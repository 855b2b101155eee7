"""The invariants of method §11 on tiny random-weight models of every supported family."""

import threading

import pytest
import torch
from conftest import random_ids

from homer import HomerConfig, build_cache
from homer.fingerprint import model_fingerprint
from homer.layers import DecoderStack
from homer.plan import ChunkPlan
from homer.tree import _Builder, build_level_order, significance_for

P, S = 3, 2
CFG = HomerConfig(significance="uncalibrated", cache_dtype="float32")  # M = 32, T = 32, W = 2


def affixes():
    return random_ids(P, 1), random_ids(S, 2)


def test_single_chunk_equals_a_plain_forward(family_model):
    """N = 1, T ≥ length: the cache is a plain forward's cache, the logits identical."""
    prefix, suffix = affixes()
    context = random_ids(20, 3)
    cache = build_cache(family_model, prefix, context, suffix, HomerConfig(cache_dtype="float32"))
    ids = torch.cat([prefix, context, suffix]).view(1, -1)
    with torch.no_grad():
        out = family_model(ids, use_cache=True)
    for layer, stored in enumerate(out.past_key_values.layers):
        torch.testing.assert_close(cache.keys[layer], stored.keys[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(cache.values[layer], stored.values[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(cache.last_logits, out.logits[0, -1], rtol=0, atol=1e-5)
    assert cache.positions.tolist() == list(range(ids.shape[1]))


@pytest.mark.parametrize("context_len", [40, 200, 215])
def test_tree_build_shape(family_model, context_len):
    prefix, suffix = affixes()
    context = random_ids(context_len, 4)
    cache = build_cache(family_model, prefix, context, suffix, CFG)
    plan = ChunkPlan(P, context_len, S, 32, 32, 6, 2)
    assert plan.num_leaves > 1
    # final length = P + 2·floor(E/2) + S when T = M and N > 1
    assert len(cache) == P + 2 * (plan.usable_len // 2) + S
    assert cache.keys.shape == (6, 2, len(cache), 16) and cache.values.shape == cache.keys.shape
    # affixes survive, in place
    assert cache.token_ids[:P].tolist() == prefix.tolist()
    assert cache.token_ids[-S:].tolist() == suffix.tolist()
    assert (cache.sources[:P] == -1).all() and (cache.sources[-S:] == -1).all()
    kept = cache.sources[P:-S]
    assert (kept >= 0).all() and (kept.diff() > 0).all()  # order kept
    assert torch.equal(cache.token_ids[P:-S], context[kept])
    # positions: reused, below M, last = P + c + S − 1
    assert int(cache.positions.max()) < 32
    assert cache.last_position == plan.last_position


class CheckingBuilder(_Builder):
    """Asserts after every block that all stored layers hold the same tokens."""

    checks = 0

    def run_block(self, node, layers, target):
        super().run_block(node, layers, target)
        n = len(node)
        assert node.hidden.shape[1] == n and len(node.token_ids) == n and len(node.sources) == n
        assert all(k.shape[1] == n for k in node.keys) and all(v.shape[1] == n for v in node.values)
        assert len(node.keys) == layers[-1] + 1
        assert n <= target
        CheckingBuilder.checks += 1


def make_builder(model, prefix, context, suffix, cls=_Builder):
    stack = DecoderStack(model)
    cfg = CFG.resolve(model.config)
    plan = ChunkPlan(
        len(prefix), len(context), len(suffix), cfg.max_chunk_len, cfg.target_len, stack.num_layers, cfg.warmup_layers
    )
    scorer = significance_for(cfg, model, model_fingerprint(model))
    return cls(stack, plan, scorer, prefix, context, suffix, 0, None), plan


def test_every_layer_holds_the_same_tokens_at_all_times(llama):
    prefix, suffix = affixes()
    context = random_ids(205, 5)
    builder, plan = make_builder(llama, prefix, context, suffix, CheckingBuilder)
    with torch.no_grad():
        builder.subtree(0, plan.height, plan.root_target)
    assert CheckingBuilder.checks == 2 * plan.num_leaves - 1


def test_depth_first_equals_level_by_level(llama):
    prefix, suffix = affixes()
    context = random_ids(210, 6)
    with torch.no_grad():
        builder, plan = make_builder(llama, prefix, context, suffix)
        depth_first = builder.subtree(0, plan.height, plan.root_target)

        builder, plan = make_builder(llama, prefix, context, suffix)
        level_by_level = build_level_order(builder, plan, P, S)
    assert torch.equal(depth_first.positions, level_by_level.positions)
    assert torch.equal(depth_first.sources, level_by_level.sources)
    for a, b in zip(depth_first.keys + depth_first.values, level_by_level.keys + level_by_level.values):
        assert torch.equal(a, b)


def test_prefix_states_survive_merges_unchanged(llama):
    """Causal prefix states are the same in every chunk, so merging keeps them."""
    prefix, suffix = affixes()
    cache = build_cache(llama, prefix, random_ids(200, 7), suffix, CFG)
    with torch.no_grad():
        out = llama(prefix.view(1, -1), use_cache=True)
    for layer, stored in enumerate(out.past_key_values.layers):
        torch.testing.assert_close(cache.keys[layer, :, :P], stored.keys[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(cache.values[layer, :, :P], stored.values[0], rtol=0, atol=1e-5)


def test_pruning_is_steered_by_the_score(llama):
    """Different significance strategies keep different tokens; random is seeded."""
    prefix, suffix = affixes()
    context = random_ids(200, 8)
    kept = {}
    for name in ("uncalibrated", "random"):
        cfg = HomerConfig(significance=name, cache_dtype="float32", seed=1)
        kept[name] = build_cache(llama, prefix, context, suffix, cfg).sources
    assert not torch.equal(kept["uncalibrated"], kept["random"])
    again = build_cache(llama, prefix, context, suffix, HomerConfig(significance="random", seed=1)).sources
    assert torch.equal(kept["random"], again)


def test_two_builds_in_two_threads_match_sequential_builds(llama):
    prefix, suffix = affixes()
    contexts = [random_ids(180, 9), random_ids(216, 10)]
    expected = [build_cache(llama, prefix, c, suffix, CFG) for c in contexts]
    results = [None, None]

    def work(i):
        results[i] = build_cache(llama, prefix, contexts[i], suffix, CFG)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert torch.equal(got.keys, want.keys) and torch.equal(got.sources, want.sources)


def test_progress_is_reported_for_every_leaf_and_merge(llama):
    prefix, suffix = affixes()
    seen = []
    build_cache(llama, prefix, random_ids(200, 11), suffix, CFG, progress=lambda d, t, m: seen.append((d, t)))
    total = seen[-1][1]
    assert [d for d, _ in seen] == list(range(1, total + 1)) and total == 2 * 8 - 1


def test_unsupported_model_is_refused_clearly():
    with pytest.raises(TypeError, match="supports decoder-only"):
        DecoderStack(torch.nn.Linear(2, 2))


def test_bad_inputs_are_refused_clearly(llama):
    prefix, _ = affixes()
    with pytest.raises(ValueError, match="suffix"):
        build_cache(llama, prefix, random_ids(50, 1), [], CFG)
    with pytest.raises(ValueError, match="significance"):
        HomerConfig(significance="magic")


def test_several_score_layers_average_standardised_scores_of_the_block_end(llama):
    """score_layers=k: each pruning block scores at its last k layers; the kept tokens are
    the best by the mean of those layers' z-scores over the context (k=1: the raw last-layer
    scores, the paper's)."""
    from homer.significance import keep_indices

    prefix, suffix = affixes()
    context = random_ids(200, 9)
    calls, checked = [], []

    class Recording(_Builder):
        def note_scores(self, node, layer, layers, q, k, target):
            before = len(self._scores)
            super().note_scores(node, layer, layers, q, k, target)
            if len(self._scores) > before:
                calls.append((layers, layer))

        def prune(self, node, target):
            p, s = P, S
            z = torch.stack(self._scores)
            expected_scores = z.mean(0)
            context_z = z[:, p : len(node) - s]
            assert torch.allclose(context_z.mean(1), torch.zeros(len(z)), atol=1e-5)
            expected = node.sources[keep_indices(expected_scores, p, s, target)]
            super().prune(node, target)
            checked.append(torch.equal(node.sources, expected))

    stack = DecoderStack(llama)
    cfg = HomerConfig(significance="uncalibrated", cache_dtype="float32", score_layers=3).resolve(llama.config)
    plan = ChunkPlan(P, len(context), S, cfg.max_chunk_len, cfg.target_len, stack.num_layers, cfg.warmup_layers)
    builder = Recording(
        stack,
        plan,
        significance_for(cfg, llama, model_fingerprint(llama)),
        prefix,
        context,
        suffix,
        0,
        None,
        0,
        torch.float32,
        None,
        1,
        3,
    )
    with torch.no_grad():
        builder.subtree(0, plan.height, plan.root_target)
    assert checked and all(checked)
    blocks = {}
    for layers, layer in calls:
        blocks.setdefault((layers.start, layers.stop), []).append(layer)
    for (start, stop), scored in blocks.items():  # every pruning block scored its last (up to) 3 layers
        expected = list(range(max(start, stop - 3), stop))
        assert scored == expected * (len(scored) // len(expected))
    one = build_cache(
        llama, prefix, context, suffix, HomerConfig(significance="uncalibrated", cache_dtype="float32", score_layers=1)
    )
    three = build_cache(
        llama, prefix, context, suffix, HomerConfig(significance="uncalibrated", cache_dtype="float32", score_layers=3)
    )
    assert not torch.equal(one.sources, three.sources)
