"""FLOP counts the method predicts (method §6: compute linear in C, attention within M).

Counts multiply-adds ×2 of the decoder layers only (q/k/v/o projections, MLP, causal
attention); embeddings and the single-row LM head are left out on both sides."""

from __future__ import annotations

from homer.plan import ChunkPlan


def layer_flops(config, tokens: int) -> float:
    """One decoder layer over ``tokens`` tokens attending causally to each other."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = config.intermediate_size
    linear = 2 * tokens * (hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter)
    attention = 2 * heads * head_dim * tokens * tokens  # QKᵀ and AV, causal half each
    return float(linear + attention)


def plain_prefill_flops(config, tokens: int) -> float:
    return config.num_hidden_layers * layer_flops(config, tokens)


def homer_flops(config, plan: ChunkPlan) -> float:
    """A HOMER build: every leaf through the leaf layers, every merged node through its block
    (node length = the sum of its children's targets, affixes shared)."""
    total = 0.0
    for leaf in range(plan.num_leaves):
        start, end = plan.slice_bounds(leaf)
        total += len(plan.layers_at(0)) * layer_flops(config, plan.prefix_len + end - start + plan.suffix_len)

    def subtree(first: int, height: int, target: int) -> int:
        """Returns the node's length after pruning; adds the merged nodes' FLOPs."""
        nonlocal total
        if height == 0:
            return min(target, plan.raw_len(first, 0))
        lt, rt = plan.child_targets(first, height)
        left = subtree(first, height - 1, lt)
        right = subtree(first + 2 ** (height - 1), height - 1, rt)
        merged = left + right - plan.prefix_len - plan.suffix_len
        total += len(plan.layers_at(height)) * layer_flops(config, merged)
        return min(target, merged)

    subtree(0, plan.height, plan.root_target)
    return total
