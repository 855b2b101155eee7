"""Query-aware deep read: a fast question-aware rebuild from stored leaf-stage states.

In a leaf (prefix ++ slice ++ suffix, method §2) attention is causal, so the prefix and
context tokens never see the suffix: their K/V at every leaf layer (``plan.layers_at(0)``)
and their hidden states are the same whatever the suffix is. A build can therefore store,
per leaf, the context's K/V at the leaf layers and its hidden state after the attention half
of the last leaf layer (where pruning happens, §4), plus the prefix's (identical in every
leaf, stored once). A later question then needs only its own suffix tokens run through the
leaf layers, attending to the stored K/V at the leaf's reused positions; the last suffix
query scores the tokens, pruning, the MLP, the merges and the upper layers run exactly as in
a full build. The result is a normal question-aware :class:`HomerCache`.

Storage per context token (cache dtype of b bytes, ``Lw = len(plan.layers_at(0))`` leaf
layers, KV kv heads of size d, hidden size H): ``Lw · 2 · KV · d · b + H · b`` bytes. For the
embedded SmolLM2-135M (Lw = 18 at 2–3 tree levels, KV = 3, d = 64, H = 576, float16) that is
about 14.6 KiB per token, ~230 MiB for 16k tokens. The file is written to disk leaf by leaf
(one leaf's states in memory at a time) and read leaf by leaf.

A question changes the suffix length S, and with it E = M − P − S, the number of leaves and
the node targets. The stored leaves stay valid while the new plan has the same number of
leaves (then the slicing, the suffix position P + c and the leaf layers are the same; the
targets come from the new plan). Otherwise the deep read falls back to a full rebuild from
the stored token ids (or raises :class:`DeepReadUnavailable` with ``fallback=False``).

    states = "doc.leaves.safetensors"
    cache = build_document_with_leaf_states(model, tokenizer, text, states)  # document-first
    answer_cache = deep_read_document(model, tokenizer, states, question)    # question-aware

This module owns the rebuild from stored states and its document-level entry points; the
leaf-state file itself (format, writing during a build, reading) is :mod:`homer.leaf_states`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cache import HomerCache
from ..config import HomerConfig
from ..document import build_document_cache, document_prompt_ids
from ..layers import DecoderStack
from ..leaf_states import LeafStateMismatchError, LeafStates
from ..prompting import DocumentPrompt
from ..tree import Node, Progress, _Builder, build_cache


class DeepReadUnavailable(ValueError):
    """The question changes the number of leaves, so the stored leaf states do not apply."""


# --- the deep read ---------------------------------------------------------------------
def attention_with_past(
    stack: DecoderStack, layer_idx: int, hidden: torch.Tensor, rope, past_k: torch.Tensor, past_v: torch.Tensor
):
    """``DecoderStack.attention_half`` for new tokens after ``past`` ones: the new tokens see
    every past token and each other causally. hidden [1, n, H]; past_k/v [KV, m, d].

    Returns (hidden after the residual add, post-RoPE q [1, H, n, d], k [1, KV, n, d], v)."""
    attn = stack.layers[layer_idx].self_attn
    n = hidden.shape[1]
    q, k, v = stack.project(layer_idx, hidden, rope)
    m = past_k.shape[1]
    keys = torch.cat([past_k.unsqueeze(0).to(k.device, k.dtype), k], 2)
    values = torch.cat([past_v.unsqueeze(0).to(v.device, v.dtype), v], 2)
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    cols = torch.arange(m + n, device=q.device)
    mask = cols[None, :] <= (m + torch.arange(n, device=q.device))[:, None]  # [n, m + n]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=stack.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
    return hidden + out, q, k, v


class _DeepReader(_Builder):
    """A build whose leaves come from stored states: only the suffix runs the leaf layers."""

    def __init__(self, *args, states: LeafStates):
        super().__init__(*args)
        self.states = states

    def read_leaf(self, index: int, target: int) -> Node:
        stack, plan, s = self.stack, self.plan, self.plan.suffix_len
        node = self.leaf(index)  # ids, sources, reused positions (the embedding is a cheap lookup)
        pk, pv, ph = self.states.prefix()
        ck, cv, ch = self.states.leaf(index)
        device = stack.device
        past_k = torch.cat([pk, ck], 2).to(device)  # [Lw, KV, P + n, d], cache dtype
        past_v = torch.cat([pv, cv], 2).to(device)
        x = node.hidden[:, -s:]
        rope = stack.rope(x, node.positions[-s:])
        layers = plan.layers_at(0)
        self._scores = []
        for j, layer in enumerate(layers):
            x, q, k, v = attention_with_past(stack, layer, x, rope, past_k[j], past_v[j])
            node.keys.append(torch.cat([past_k[j], k[0].to(self.kv_dtype)], 1))
            node.values.append(torch.cat([past_v[j], v[0].to(self.kv_dtype)], 1))
            if len(node) > target and layer in layers[-self.score_layers :]:
                self.note_scores(node, layer, layers, q, torch.cat([past_k[j].unsqueeze(0).to(k.dtype), k], 2), target)
            if layer != layers[-1]:
                x = stack.mlp_half(layer, x)
                continue
            stored = torch.cat([ph, ch], 0).to(device, x.dtype).unsqueeze(0)
            node.hidden = torch.cat([stored, x], 1)
            if len(node) > target:
                self.prune(node, target)
            node.hidden = stack.mlp_half(layer, node.hidden)
        return node


def _as_states(leaf_states) -> LeafStates:
    return leaf_states if isinstance(leaf_states, LeafStates) else LeafStates(leaf_states)


@torch.no_grad()
def deep_read(
    model,
    leaf_states,
    suffix_ids,
    config: HomerConfig | None = None,
    progress: Progress | None = None,
    metadata: dict | None = None,
    fallback: bool = True,
) -> HomerCache:
    """The cache a full build with ``suffix_ids`` would give, from stored leaf states.

    ``leaf_states``: a path or :class:`~homer.leaf_states.LeafStates`. ``config``: default the
    stored settings; pruning settings may differ, the state-shaping ones
    (:data:`~homer.leaf_states.STATE_SETTINGS`) may not. When the new suffix changes the
    number of leaves, a full rebuild from the stored ids runs instead (``fallback=False``:
    :class:`DeepReadUnavailable`). The cache's metadata ``deep_read`` says which
    ("leaf-states" or "full-rebuild")."""
    states = _as_states(leaf_states)
    config = states.config_for(config, model.config)
    meta = states.build_metadata
    meta.update({k: str(v) for k, v in (metadata or {}).items()})

    def make(*args, fingerprint: str, config: HomerConfig) -> _Builder:
        states.check_fingerprint(fingerprint)
        plan = args[1]
        if states.fits(plan):
            meta["deep_read"] = "leaf-states"
            return _DeepReader(*args, states=states)
        if not fallback:
            raise DeepReadUnavailable(
                f"a suffix of {plan.suffix_len} tokens needs {plan.num_leaves} leaves; the stored states have "
                f"{states.num_leaves}: rebuild"
            )
        meta["deep_read"] = "full-rebuild"
        return _Builder(*args)

    return build_cache(
        model,
        states.prefix_ids,
        states.context_ids,
        suffix_ids,
        config,
        progress,
        meta,
        states.context_units,
        _make_builder=make,
    )


def build_document_with_leaf_states(
    model, tokenizer, text: str, leaf_states, config: HomerConfig | None = None, **kwargs
) -> HomerCache:
    """:func:`homer.document.build_document_cache` that also writes the leaf states to
    ``leaf_states`` (a path) for later :func:`deep_read_document` calls."""
    return build_document_cache(model, tokenizer, text, config, leaf_states=leaf_states, **kwargs)


def _set_char_offsets(cache: HomerCache, offsets: torch.Tensor | None) -> None:
    if offsets is not None:
        cache.char_offsets = torch.where(cache.sources >= 0, offsets[cache.sources.clamp(min=0)], -1)


@torch.no_grad()
def deep_read_document(
    model,
    tokenizer,
    leaf_states,
    question: str,
    config: HomerConfig | None = None,
    progress: Progress | None = None,
    metadata: dict | None = None,
    fallback: bool = True,
) -> HomerCache:
    """A question-aware cache of the document whose leaf states are stored in
    ``leaf_states``: the same prompt layout as the stored build, ``question`` in the suffix,
    metadata ``question`` set (so :class:`homer.Conversation` treats it as question-aware)."""
    states = _as_states(leaf_states)
    stored = states.build_metadata
    if "prompt" not in stored:
        raise LeafStateMismatchError(f"{states.path.name} holds no document prompt: use deep_read with suffix ids")
    prompt = DocumentPrompt.from_json(stored["prompt"])
    prefix_ids, suffix_ids = document_prompt_ids(tokenizer, prompt, question)
    if list(prefix_ids) != states.prefix_ids.tolist():
        raise LeafStateMismatchError("the prompt prefix differs from the stored one (another tokenizer?)")
    meta = {"question": question, **(metadata or {})}
    cache = deep_read(model, states, suffix_ids, config=config, progress=progress, metadata=meta, fallback=fallback)
    _set_char_offsets(cache, states.extra("char_offsets"))
    return cache
