"""Page citations: which pages of the source an answer was read from.

A HOMER cache keeps, for every kept token, the character offset of that token in the source
text (method §7: the root's ~T tokens; −1 for prefix and suffix tokens). An answer produced
from the cache attends to those tokens. This module re-runs the turn that followed the cache
(the question and the answer, appended after the cache at ``next_position`` as in §7) through
the model's own layers (:class:`homer.layers.DecoderStack`) and reads the attention weights
of the queries that *produced* the answer tokens (the query at position t predicts token
t + 1) over the cached keys. Each kept document token is scored by the strongest weight any
of those queries put on it, in any head of the layers read (its *peak*); a page is scored by
its best token (character offset → page through the document's ``page_starts``), and the
pages are ranked by that score. Nothing here compares the answer's wording with the text:
the citation is where the model looked while it wrote the answer.

Why the peak and the lower half of the stack: summed attention mass is dominated by a few
sink-like tokens that every query attends to, whatever it asks, so the page holding them wins
every time; a token the answer was read from instead receives one sharp weight from some head.
On the development document (seed 0 of ``benchmarks/citations.py``) the peak over the lower
half found the fact's page for every fact the cache had kept; the summed mass over the upper
half found 1 of 16. The benchmark reports the other choices next to the default.

The stored cache is only read (its K/V are concatenated with the new tokens' K/V into new
tensors per layer); it is never modified. Attention is computed exactly as the model computes
it: post-RoPE q and k, GQA by grouping query heads over their kv head, causal over the new
tokens, softmax over cached + new keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..cache import HomerCache
from ..layers import DecoderStack

DEFAULT_LAYER_FRACTION = (0.0, 0.5)  # the lower half of the stack (see the module docstring)
MIN_PEAK = 0.2  # below this no page is cited (a generic question's best page peaks around 0.18)


@dataclass(frozen=True)
class PageCitation:
    page: int  # 1-based
    score: float  # the strongest attention weight an answer query put on a token of this page


@dataclass
class Citations:
    """Ranked pages (best first, already filtered), every page's score, and what it cost."""

    pages: list[PageCitation] = field(default_factory=list)
    page_scores: dict[int, float] = field(default_factory=dict)  # every page holding a kept token
    seconds: float = 0.0
    layers: list[int] = field(default_factory=list)
    query_tokens: int = 0

    @property
    def top_page(self) -> int | None:
        return self.pages[0].page if self.pages else None

    def label(self, locations=None) -> str:
        """ "p. 12, p. 47" (empty when nothing was found); with a sectioned
        :class:`homer.reading.locations.LocationMap`, the sections' labels."""
        if locations is None:
            return ", ".join(f"p. {c.page}" for c in self.pages)
        return ", ".join(locations.label(c.page) for c in self.pages)

    def to_dict(self) -> dict:
        return {
            "pages": [{"page": c.page, "score": round(c.score, 4)} for c in self.pages],
            "seconds": round(self.seconds, 4),
            "layers": self.layers,
            "query_tokens": self.query_tokens,
        }


def default_layers(num_layers: int, fraction: tuple[float, float] = DEFAULT_LAYER_FRACTION) -> list[int]:
    """The layers read by default: the lower half of the stack."""
    lo = int(num_layers * fraction[0])
    hi = max(lo + 1, int(num_layers * fraction[1]))
    return list(range(lo, min(hi, num_layers)))


def pages_of_offsets(char_offsets: torch.Tensor, page_starts: list[int]) -> torch.Tensor:
    """1-based page of every character offset (0 where the offset is unknown, i.e. < 0)."""
    starts = torch.tensor(sorted(page_starts) or [0], dtype=torch.long)
    offsets = char_offsets.to(torch.long)
    pages = torch.bucketize(offsets, starts, right=True).clamp(min=1)
    return torch.where(offsets >= 0, pages, torch.zeros_like(pages))


@torch.no_grad()
def attention_to_cache(
    model,
    cache: HomerCache,
    new_ids: list[int],
    query_start: int,
    layers: list[int] | None = None,
    stack: DecoderStack | None = None,
    return_hidden: bool = False,
    per_layer: bool = False,
    reduce: str = "peak",
):
    """The attention that the queries ``new_ids[query_start:]`` put on each cached token.

    ``new_ids`` are the tokens that followed the cache (placed at ``cache.next_position`` on,
    as a conversation places them, §7). Returns a float tensor [len(cache)] from the softmax
    weights of those queries on the cached keys at each layer in ``layers``:
    ``reduce="peak"`` the largest weight over heads, queries and layers; ``reduce="mean"``
    the weight averaged over heads, queries and layers (its total over the cache is the
    average share of attention that went to the cache). With ``per_layer`` the result is
    [len(layers), len(cache)] (no reduction over layers). With ``return_hidden`` also the last
    layer's hidden states (for tests: the loop then runs every layer)."""
    if reduce not in ("peak", "mean"):
        raise ValueError("reduce must be 'peak' or 'mean'")
    stack = stack or DecoderStack(model)
    layers = sorted(set(default_layers(stack.num_layers) if layers is None else layers))
    if not layers or layers[0] < 0 or layers[-1] >= stack.num_layers:
        raise ValueError(f"layers must be within 0..{stack.num_layers - 1}")
    mass = torch.zeros(len(layers), len(cache), dtype=torch.float32)
    row_of = {layer: i for i, layer in enumerate(layers)}
    last = stack.num_layers - 1 if return_hidden else layers[-1]
    hidden = None
    for layer_idx, probs, hidden in attention_rows(stack, cache, new_ids, query_start, last):
        if layer_idx in row_of:  # probs: [H, queries, len(cache)]
            if reduce == "peak":
                mass[row_of[layer_idx]] = probs.amax(dim=(0, 1)).cpu()
            else:
                mass[row_of[layer_idx]] = probs.mean(dim=(0, 1)).cpu()
    if not per_layer:
        mass = mass.amax(dim=0) if reduce == "peak" else mass.mean(dim=0)
    return (mass, hidden) if return_hidden else mass


@torch.no_grad()
def attention_rows(
    stack: DecoderStack,
    cache: HomerCache | None,
    new_ids: list[int],
    query_start: int,
    last_layer: int,
    own_keys: bool = False,
):
    """Run ``new_ids`` after the cache through layers 0..``last_layer`` and yield, per layer,
    ``(layer, probs, hidden)``: the softmax weights of the queries ``new_ids[query_start:]``
    on the cached keys only, [H, queries, len(cache)] in float32, and the layer's output
    hidden states. The stored tensors are only read.

    ``cache=None`` reads a plain prompt: nothing is cached, ``new_ids`` are the whole sequence
    from position 0. With ``own_keys`` the weights over the new tokens' keys come too:
    [H, queries, len(cache) + len(new_ids)] (the cached keys first). Only the rows of the
    queries read are materialised; the rows before ``query_start`` (a long prompt) are
    computed by the fused kernel, so memory grows with the queries read, not the prompt²."""
    n, t = len(new_ids), (len(cache) if cache is not None else 0)
    if n == 0 or not 0 <= query_start < n:
        raise ValueError("need at least one query token after query_start")
    device, dtype = stack.device, stack.dtype
    ids = torch.tensor(new_ids, dtype=torch.long)
    start = cache.next_position if cache is not None else 0
    positions = torch.arange(start, start + n)
    hidden = stack.embed(ids)
    cos, sin = stack.rope(hidden, positions)
    heads, kv_heads, d = stack.num_heads, stack.num_kv_heads, stack.head_dim
    groups = heads // kv_heads
    rows = n - query_start
    # causal over the new tokens, everything cached visible
    visible = torch.ones(n, t + n, dtype=torch.bool, device=device)
    visible[:, t:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    mask = torch.zeros(rows, t + n, dtype=torch.float32, device=device).masked_fill(
        ~visible[query_start:], float("-inf")
    )
    for layer_idx in range(last_layer + 1):
        attn = stack.layers[layer_idx].self_attn
        q, k, v = stack.project(layer_idx, hidden, (cos, sin))  # q [1, H, n, d], k and v [1, KV, n, d]
        if cache is not None:
            keys = torch.cat([cache.keys[layer_idx].to(device=device, dtype=dtype).unsqueeze(0), k], dim=2)
            values = torch.cat([cache.values[layer_idx].to(device=device, dtype=dtype).unsqueeze(0), v], dim=2)
        else:
            keys, values = k, v
        # the rows read: explicit softmax weights (query head h uses kv head h // groups, GQA)
        qg = q[:, :, query_start:].reshape(kv_heads, groups, rows, d).float()
        scores = torch.einsum("kgnd,ksd->kgns", qg, keys[0].float()) * stack.scaling + mask
        probs = torch.softmax(scores, dim=-1)  # [KV, G, rows, t + n]
        out = torch.einsum("kgns,ksd->kgnd", probs.to(values.dtype), values[0]).reshape(1, heads, rows, d)
        if query_start:  # the rows before: the same attention, without keeping the weights
            seen = t + query_start  # the keys those rows can see
            early = F.scaled_dot_product_attention(
                q[:, :, :query_start],
                keys[:, :, :seen].repeat_interleave(groups, dim=1),
                values[:, :, :seen].repeat_interleave(groups, dim=1),
                attn_mask=None if t == 0 else visible[:query_start, :seen],
                is_causal=t == 0,
                scale=stack.scaling,
            )
            out = torch.cat([early, out], dim=2)
        out = attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
        hidden = stack.mlp_half(layer_idx, hidden + out)
        weights = probs.reshape(heads, rows, t + n)
        yield layer_idx, (weights if own_keys else weights[:, :, :t]), hidden


@torch.no_grad()
def attention_to_prompt(
    model, ids: list[int], query_start: int, layers: list[int] | None = None, stack: DecoderStack | None = None
) -> torch.Tensor:
    """:func:`attention_to_cache` for a plain prompt (nothing cached, ``ids`` from position
    0): the peak weight — over heads, the queries ``ids[query_start:]`` and ``layers``
    (default: the lower half) — that each token of ``ids`` receives, [len(ids)]. A token
    after a query is masked for it (weight 0)."""
    stack = stack or DecoderStack(model)
    layers = sorted(set(default_layers(stack.num_layers) if layers is None else layers))
    if not layers or layers[0] < 0 or layers[-1] >= stack.num_layers:
        raise ValueError(f"layers must be within 0..{stack.num_layers - 1}")
    peak = torch.zeros(len(ids), dtype=torch.float32)
    for layer_idx, probs, _ in attention_rows(stack, None, ids, query_start, layers[-1], own_keys=True):
        if layer_idx in layers:
            peak = torch.maximum(peak, probs.amax(dim=(0, 1)).cpu())
    return peak


def rank_pages(
    scores: torch.Tensor,
    cache: HomerCache,
    page_starts: list[int],
    top: int = 3,
    relative: float = 0.75,
    min_score: float = 0.0,
) -> tuple[list[PageCitation], dict[int, float]]:
    """Score each page by its best kept *document* token (prompt tokens, whose source is −1,
    never count) and rank the pages.

    Kept: at most ``top`` pages, each scoring at least ``relative`` × the best page and at
    least ``min_score``. Returns (pages, every page's score)."""
    if cache.char_offsets is None:
        return [], {}
    document = (cache.sources >= 0) & (cache.char_offsets >= 0)
    if not bool(document.any()):
        return [], {}
    pages = pages_of_offsets(cache.char_offsets, page_starts)[document]
    values = scores.float().cpu()[document]
    per_page = torch.full((int(pages.max()) + 1,), float("-inf")).scatter_reduce_(0, pages, values, "amax")
    found = {int(p): float(per_page[p]) for p in pages.unique().tolist()}
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))
    best = ranked[0][1]
    chosen = [
        PageCitation(page, score)
        for page, score in ranked[:top]
        if score >= relative * best and score >= min_score and score > 0
    ]
    return chosen, found


def cite(
    model,
    cache: HomerCache,
    page_starts: list[int],
    new_ids: list[int],
    answer_start: int,
    layers: list[int] | None = None,
    top: int = 3,
    relative: float = 0.75,
    min_score: float | None = None,
) -> Citations:
    """Pages an answer was read from.

    ``new_ids``: the tokens that followed the cache in the conversation (earlier turns, the
    question turn, then the answer); ``answer_start``: index of the first answer token in
    ``new_ids``. The queries read are those that produced the answer tokens: rows
    ``answer_start − 1 …`` (when the answer starts right after the cache — a question-aware
    build — the first answer token was produced inside the cache and is not re-read).
    Pages are listed best first: at most ``top``, each within ``relative`` of the best page's
    score and at least ``min_score`` (default :data:`MIN_PEAK`: an answer that looked nowhere
    in particular cites nothing)."""
    started = time.perf_counter()
    if cache.char_offsets is None or not new_ids:
        return Citations(seconds=time.perf_counter() - started)
    query_start = max(answer_start - 1, 0)
    # the last answer token's query predicts what comes after the answer: not read
    ids = list(new_ids[:-1]) if len(new_ids) - 1 > query_start else list(new_ids)
    stack = DecoderStack(model)
    chosen_layers = default_layers(stack.num_layers) if layers is None else sorted(set(layers))
    peaks = attention_to_cache(model, cache, ids, query_start, chosen_layers, stack=stack)
    min_score = MIN_PEAK if min_score is None else min_score
    pages, scores = rank_pages(peaks, cache, page_starts, top=top, relative=relative, min_score=min_score)
    return Citations(pages, scores, time.perf_counter() - started, chosen_layers, len(ids) - query_start)


def turn_ids(
    tokenizer, prompt, turns: list[tuple[str, str]], question: str, answer: str, cached_question: str | None = None
) -> tuple[list[int], int]:
    """The tokens that follow a question-agnostic cache in a conversation whose earlier
    ``turns`` are followed by ``question`` and ``answer`` — re-tokenised from the text the
    conversation renders (:class:`homer.prompting.DocumentPrompt`), so no decode state is
    needed. Returns (ids, index of the first answer token)."""
    from ..prompting import DOC
    from ..text_encoding import encode_text, render_marked, turn_tail, unmark

    prefix, suffix, _ = prompt.split(tokenizer)
    cached = prefix + DOC + suffix
    if cached_question:  # question-aware build: the first question is inside the cache
        cached = unmark(render_marked(prompt, tokenizer, [], cached_question))
    tail = turn_tail(prompt, tokenizer, cached, turns, question)  # as the conversation encodes it
    if tail is None:
        raise ValueError("the chat template does not render the conversation after the cached prompt")
    ids = tail[1]
    answer_ids = encode_text(tokenizer, answer)  # the model's text: control-token strings stay text
    return list(ids) + list(answer_ids), len(ids)


def cite_answer(
    model,
    tokenizer,
    cache: HomerCache,
    page_starts: list[int],
    question: str,
    answer: str,
    turns: list[tuple[str, str]] | None = None,
    prompt=None,
    **options,
) -> Citations:
    """:func:`cite` for a conversation given as text (its earlier ``turns``, the question and
    the answer), on the cache's own prompt layout."""
    from ..prompting import DocumentPrompt, default_prompt

    if prompt is None:
        stored = cache.metadata.get("prompt")
        prompt = DocumentPrompt.from_json(stored) if stored else default_prompt(tokenizer)
    ids, answer_start = turn_ids(
        tokenizer, prompt, list(turns or []), question, answer, cache.metadata.get("question") or None
    )
    if answer_start >= len(ids):
        return Citations()
    return cite(model, cache, page_starts, ids, answer_start, **options)
