"""Passage retrieval with the model's own queries and keys (REFORM's gather step).

REFORM (Song et al., "Compress, Gather, and Recompute", arXiv 2506.01215, by HOMER's first
author) keeps, while it reads a long input once, a small embedding per token made of the
queries/keys of a few attention heads at middle layers; at question time it scores every token
by the cosine similarity of the question's vectors to them and gathers the best spans to
recompute at full resolution. This module is that retrieval for a document split into passages:

* :func:`encode_keys` reads the document in independent chunks (local context, as HOMER's
  leaves do) through the lower layers only, and keeps each token's un-rotated key at the chosen
  ``layers``, centred on the document's mean key and unit-normalised per kv head
  (``len(layers) * kv_heads * head_dim`` float16 values per token: 384 bytes a layer for
  SmolLM2-135M).
* :func:`question_vectors` runs the question alone through the same layers and keeps its
  un-rotated queries (or keys: REFORM compares like with like and picks the kind on a
  calibration task). RoPE is left out on both sides so the score does not depend on where in
  the document a token sits.
* :func:`rank_passages` scores token j against question token i by the cosine of their vectors,
  averaged over the query heads (each against its kv head) and the layers, and a passage by late
  interaction (ColBERT, Khattab & Zaharia, SIGIR 2020): the sum over question tokens of the best
  match inside the passage. Summing per question token keeps function words, which match
  something in every passage, from deciding the ranking. By default every head of the chosen
  layers votes; REFORM picks its heads on a calibration task, which ``heads`` allows (the
  benchmark ``benchmarks.retrieval_recall --calibrate-heads`` picks them on a calibration slice).

Hand-written because no library offers a decoder's own key states as a retrieval index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers import DecoderStack

DEFAULT_LAYERS = (1, 2, 4, 8)  # where the embedded model's chosen heads were (benchmarks.retrieval_recall)
DEFAULT_CHUNK = 2048
QUESTION_KINDS = ("query", "key")


@dataclass
class KeyIndex:
    """Per-token unit keys ``[tokens, layers, kv_heads, head_dim]`` (float16) and each token's
    character span in the document."""

    keys: torch.Tensor
    starts: list[int]
    ends: list[int]
    layers: tuple[int, ...]
    center: torch.Tensor  # the document's mean key per layer and kv head, subtracted before the cosine

    @property
    def bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size()

    def at(self, layers) -> "KeyIndex":
        """The same index restricted to some of its layers (an ablation without re-reading)."""
        pick = [self.layers.index(layer) for layer in layers]
        return KeyIndex(self.keys[:, pick], self.starts, self.ends, tuple(layers), self.center[pick])


def _run(stack: DecoderStack, ids: torch.Tensor, layers: tuple[int, ...], which: str) -> torch.Tensor:
    """``ids`` through layers ``0..max(layers)``; the un-rotated ``which`` (``"k"`` or ``"q"``)
    projections at ``layers`` (float32): ``[n, len(layers), heads, head_dim]``."""
    hidden = stack.embed(ids)
    n = hidden.shape[1]
    rope = stack.rope(hidden, torch.arange(n))
    kept = []
    for layer in range(max(layers) + 1):
        if layer in layers:
            attn = stack.layers[layer].self_attn
            x = stack.layers[layer].input_layernorm(hidden)
            proj = (attn.k_proj if which == "k" else attn.q_proj)(x).view(n, -1, stack.head_dim)
            norm = getattr(attn, "k_norm" if which == "k" else "q_norm", None)
            if norm is not None:  # Qwen3 normalises q and k per head before RoPE
                proj = norm(proj)
            kept.append(proj.float())
        if layer < max(layers):
            hidden, *_ = stack.attention_half(layer, hidden, rope)
            hidden = stack.mlp_half(layer, hidden)
    return torch.stack(kept, dim=1)


def _check_layers(stack: DecoderStack, layers) -> tuple[int, ...]:
    layers = tuple(sorted({int(layer) for layer in layers}))
    if not layers or layers[0] < 0 or layers[-1] >= stack.num_layers:
        raise ValueError(f"layers must lie in 0..{stack.num_layers - 1}, got {layers}")
    return layers


@torch.no_grad()
def encode_keys(
    model, tokenizer, text: str, layers=DEFAULT_LAYERS, chunk: int = DEFAULT_CHUNK, progress=None
) -> KeyIndex:
    """Read ``text`` once in ``chunk``-token pieces; its :class:`KeyIndex`. ``progress(done, total)``
    is called after each piece."""
    stack = DecoderStack(model)
    layers = _check_layers(stack, layers)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    if not len(ids):
        raise ValueError("nothing to index: the text has no tokens")
    pieces = []
    for at in range(0, len(ids), chunk):
        pieces.append(_run(stack, ids[at : at + chunk], layers, "k").cpu())
        if progress is not None:
            progress(min(at + chunk, len(ids)), len(ids))
    keys = torch.cat(pieces)
    # keys share a large common direction (and a chunk's first tokens, its attention sinks, are
    # outliers): centre them on the document's mean key before the cosine
    center = keys.mean(dim=0)
    return KeyIndex(
        F.normalize(keys - center, dim=-1).half(),
        [a for a, _ in enc["offset_mapping"]],
        [b for _, b in enc["offset_mapping"]],
        layers,
        center,
    )


@torch.no_grad()
def question_vectors(model, tokenizer, question: str, index: KeyIndex, kind: str = "query") -> torch.Tensor:
    """The question's unit vectors at the index's layers, ``[tokens, layers, heads, head_dim]``:
    its queries (``kind="query"``, every query head: what attention would look for) or its keys
    (``kind="key"``, centred like the document's: tokens that resemble the document's tokens)."""
    if kind not in QUESTION_KINDS:
        raise ValueError(f"kind must be one of {QUESTION_KINDS}, got {kind!r}")
    stack = DecoderStack(model)
    ids = torch.tensor(tokenizer(question, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if not len(ids):
        raise ValueError("the question has no tokens")
    vectors = _run(stack, ids, _check_layers(stack, index.layers), kind[0]).cpu()
    if kind == "key":
        vectors = vectors - index.center
    return F.normalize(vectors, dim=-1)


def all_heads(vectors: torch.Tensor, index: KeyIndex) -> list[tuple[int, int]]:
    """Every ``(layer, head)`` of ``vectors`` (query heads for queries, kv heads for keys)."""
    return [(layer, h) for layer in index.layers for h in range(vectors.shape[2])]


def token_similarity(index: KeyIndex, queries: torch.Tensor, heads=None) -> torch.Tensor:
    """Cosine of every question token with every document token, averaged over ``heads``
    (``(layer, head)`` pairs; default: every head of every layer; a query head is compared with
    the kv head it reads): ``[question tokens, document tokens]``."""
    m, num_layers, num_heads, dim = queries.shape  # the query heads, or the kv heads for keys
    kv_heads = index.keys.shape[2]
    if index.keys.shape[1] != num_layers or index.keys.shape[3] != dim or num_heads % kv_heads:
        raise ValueError("the question's vectors do not match the index (other layers or model)")
    heads = list(heads) if heads is not None else all_heads(queries, index)
    if not heads:
        raise ValueError("no heads chosen")
    group = num_heads // kv_heads
    # heads that read the same kv head add up first, and only the kv heads in use are read:
    # one matmul over the chosen heads
    pairs: dict[tuple[int, int], torch.Tensor] = {}
    for layer, h in heads:
        if layer not in index.layers or not 0 <= h < num_heads:
            raise ValueError(f"head {(layer, h)} is not in the index's layers {index.layers} x {num_heads} heads")
        at = (index.layers.index(layer), h // group)
        pairs[at] = pairs.get(at, 0) + queries[:, at[0], h]
    rows, kvs = [a for a, _ in pairs], [b for _, b in pairs]
    flat_q = torch.stack(list(pairs.values()), 1).reshape(m, -1)
    sims = []
    for at in range(0, index.keys.shape[0], 65_536):  # bounded memory on long books
        block = index.keys[at : at + 65_536][:, rows, kvs].float()  # [n, pairs, d]
        sims.append(flat_q @ block.reshape(block.shape[0], -1).T)
    return torch.cat(sims, dim=1) / len(heads)


def rank_passages(
    index: KeyIndex, queries: torch.Tensor, spans: list[tuple[int, int]], heads=None
) -> list[tuple[int, float]]:
    """``spans``: each passage's ``(start, end)`` characters, in document order. Every passage
    holding a token, as ``(passage number, score)``, best first, scored by ``heads`` (see
    :func:`token_similarity`)."""
    if not spans:
        return []
    starts = torch.tensor([a for a, _ in spans], dtype=torch.long)
    owner = (torch.searchsorted(starts, torch.tensor(index.starts, dtype=torch.long), right=True) - 1).clamp_min(0)
    sim = token_similarity(index, queries, heads)
    best = torch.full((sim.shape[0], len(spans)), float("-inf"))
    best.scatter_reduce_(1, owner.expand_as(sim), sim, reduce="amax")
    present = torch.isfinite(best[0])
    scores = torch.where(present, best.clamp_min(-1.0).sum(dim=0), torch.tensor(float("-inf")))
    order = torch.argsort(scores, descending=True, stable=True)
    return [(int(p), float(scores[p])) for p in order if present[p]]
