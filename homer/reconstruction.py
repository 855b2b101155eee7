"""Reconstruction significance (KVzip, Kim et al., arXiv 2505.23416): a token matters as
much as the model needs it to repeat its chunk. An extension of method §4, question-agnostic.

After a chunk's tokens the model is fed a repeat prompt ("Repeat the previous context
exactly.", in the model's chat format when it has one) and then the chunk's tokens again,
teacher-forced. A token's score is the largest softmax attention weight it receives from
that copy: max over the copy's query positions and all query heads (GQA: every query head
of every kv head), the softmax taken over the original and copy keys, causally. Chunks
hold at most :data:`COPY_CHUNK_LEN` context tokens and a token is scored only by the copy
of its own chunk.

In HOMER the copy runs in the leaf stage: through the leaf layers, attending to the
leaf's stored K/V of the prefix and the chunk, its own K/V never stored (the cache and
positions are exactly as with any other strategy). The score is read at the last
``HomerConfig.reconstruction_layers`` leaf layers — the block that ends with the first
prune, lower and middle layers where the copy attention is sharp — max over them. The tree
carries each token's score up with the token (:class:`homer.tree.Node`), and every later
prune, at the merge nodes, uses the carried score instead of the suffix queries'.
"""

from __future__ import annotations

import functools
import math

import torch

from .layers import DecoderStack
from .significance import Significance, Uncalibrated

REPEAT_TEXT = "Repeat the previous context exactly."
COPY_CHUNK_LEN = 2048  # KVzip scores in chunks of at most 2k tokens
_QUERY_BLOCK = 512  # copy query rows per explicit softmax (bounds memory)
_MARK = "\u2063<<HOMER-CHUNK>>\u2063"


def repeat_prompt_ids(tokenizer) -> list[int]:
    """The ids that follow a chunk before its copy: with a chat template, the rest of the
    user turn holding the chunk (a blank line, the repeat request, end of turn) and the
    assistant header; otherwise the plain request between blank lines."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{_MARK}\n\n{REPEAT_TEXT}"}], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that refuses this conversation: the plain request
            text = ""
        if text.count(_MARK) == 1:
            return list(tokenizer(text.split(_MARK, 1)[1], add_special_tokens=False).input_ids)
    return list(tokenizer(f"\n\n{REPEAT_TEXT}\n\n", add_special_tokens=False).input_ids)


@functools.lru_cache(maxsize=8)
def _prompt_for_path(path: str) -> tuple[int, ...]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:
        return ()
    return tuple(repeat_prompt_ids(tokenizer))


def model_repeat_prompt_ids(model) -> list[int]:
    """:func:`repeat_prompt_ids` with the tokenizer saved beside the model (its folder or
    local hub cache); none found (e.g. a model built in memory): no prompt, the copy follows
    the chunk directly."""
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return list(_prompt_for_path(str(path))) if path else []


def copy_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int, scale: float, score: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of the copy's queries q [1, H, r, d] over keys/values [1, KV, past + r, d]
    (the ``past`` original tokens, then the copy itself, causal). Returns the output
    [1, H, r, d] and, with ``score``, every original key's largest softmax weight over all
    query rows and heads [past] (computed block by block, never the whole matrix)."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    r = q.shape[2]
    cols = torch.arange(past + r, device=q.device)
    if not score:
        mask = cols[None, :] <= (past + torch.arange(r, device=q.device))[:, None]
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale), None
    out, best = [], torch.zeros(past, device=q.device)
    for start in range(0, r, _QUERY_BLOCK):
        rows = torch.arange(start, min(start + _QUERY_BLOCK, r), device=q.device)
        logits = torch.matmul(q[:, :, rows].float(), keys.float().transpose(-1, -2)) * scale  # [1, H, b, past + r]
        logits = logits.masked_fill(cols[None, :] > (past + rows)[:, None], float("-inf"))
        weights = logits.softmax(-1)
        best = torch.maximum(best, weights[..., :past].amax(dim=(0, 1, 2)))
        out.append(torch.matmul(weights.to(values.dtype), values))
    return torch.cat(out, 2), best


class Reconstruction(Significance):
    """KVzip's reconstruction score (arXiv 2505.23416), computed once per leaf and carried
    up the tree (``carries_scores``); see the module docstring.

    ``prompt_ids``: the repeat prompt (:func:`repeat_prompt_ids`); ``layers``: how many of
    the last leaf layers the score is read at (max over them); ``chunk_len``: context tokens
    per copy. :meth:`score` — the suffix-query score — is only the fallback for a node whose
    tokens carry no score (a deep read from stored leaf states, whose unpruned leaves never
    run the copy): raw last-token logits."""

    name = "reconstruction"
    carries_scores = True

    def __init__(self, prompt_ids=(), layers: int = 4, chunk_len: int = COPY_CHUNK_LEN):
        self.prompt_ids = torch.as_tensor(list(prompt_ids), dtype=torch.long)
        self.layers = max(int(layers), 1)
        self.chunk_len = max(int(chunk_len), 1)
        self._fallback = Uncalibrated()

    def score(self, layer_idx, q_last, keys, positions, scaling, generator):
        return self._fallback.score(layer_idx, q_last, keys, positions, scaling, generator)

    def pieces(self, context_len: int) -> list[tuple[int, int]]:
        """The context cut evenly into chunks of at most ``chunk_len`` tokens: [start, end)."""
        count = max(1, math.ceil(context_len / self.chunk_len))
        size = math.ceil(context_len / count) if context_len else 0
        return [(a, min(a + size, context_len)) for a in range(0, context_len, size)] if size else []

    @torch.no_grad()
    def leaf_scores(
        self,
        stack: DecoderStack,
        keys: list,
        values: list,
        positions: torch.Tensor,
        token_ids: torch.Tensor,
        prefix_len: int,
        suffix_len: int,
    ) -> torch.Tensor:
        """Every token's copy score [n] (float32, CPU; affixes +inf) for a leaf whose stored
        K/V are ``keys``/``values`` (one [KV, n, d] per leaf layer, all of them run)."""
        n, p = int(positions.shape[0]), prefix_len
        context_len = n - p - suffix_len
        num_layers = len(keys)
        band = range(max(0, num_layers - self.layers), num_layers)
        scores = torch.full((n,), float("inf"))
        device, dtype = stack.device, stack.dtype
        for a, b in self.pieces(context_len):
            a, b = a + p, b + p  # node indices of the chunk
            original = torch.cat([torch.arange(p), torch.arange(a, b)]).to(device)
            copy_ids = torch.cat([self.prompt_ids, token_ids[a:b].cpu()])
            last = int(positions[b - 1])
            copy_positions = torch.arange(last + 1, last + 1 + len(copy_ids))
            x = stack.embed(copy_ids)
            rope = stack.rope(x, copy_positions)
            best = torch.zeros(b - a)
            for layer in range(num_layers):
                found = []

                def attend(q, k, v, scale, window=None, softcap=None, layer=layer):
                    # the copy attends to the chunk's stored K/V and to itself (no window: a
                    # score, not the cache; the model's own attention scale)
                    past_k = keys[layer].index_select(1, original).unsqueeze(0).to(device, k.dtype)
                    past_v = values[layer].index_select(1, original).unsqueeze(0).to(device, v.dtype)
                    out, weights = copy_attention(
                        q, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2), len(original), scale, layer in band
                    )
                    found.append(weights)
                    return out.to(dtype)

                # the model's attention module and the family's residual wiring around it
                x, *_ = stack.attention_half(layer, x, rope, attend=attend)
                if found[0] is not None:
                    best = torch.maximum(best, found[0][p:].float().cpu())
                if layer == num_layers - 1:
                    break
                x = stack.mlp_half(layer, x)
            scores[a:b] = best
        return scores
