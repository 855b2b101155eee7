"""Token significance for pruning (method §4): the last token's attention logit, max over
query heads, minus a calibration bias indexed by relative position. Each strategy is one
small class with a ``score`` method, chosen by name in :class:`homer.HomerConfig`; the
question-agnostic "reconstruction" strategy (KVzip, arXiv 2505.23416) scores once in the
leaf stage and lives in :mod:`homer.reconstruction`."""

from __future__ import annotations

import torch


def query_logits(q_rows: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """max_h <q_r^h, k_j^h> · scaling for every query row r and token j — no full matrix.

    q_rows: [H, r, d]; keys: [KV, n, d] → [r, n]. GQA: query heads are grouped onto their kv
    head (equivalent to repeating the kv heads, without the copy)."""
    kv_heads, _, d = keys.shape
    grouped = q_rows.reshape(kv_heads, -1, q_rows.shape[-2], d).float()  # [KV, H/KV, r, d]
    logits = torch.einsum("kgrd,knd->kgrn", grouped, keys.float()) * scaling
    return logits.amax(dim=(0, 1))


def last_query_logits(q_last: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """The paper's statistic, one query row: q_last [H, d]; keys [KV, n, d] → [n]."""
    return query_logits(q_last.unsqueeze(-2), keys, scaling)[0]


def _rows(q: torch.Tensor) -> torch.Tensor:
    """[H, d] (the last token's query) or [H, r, d] → [H, r, d]."""
    return q.unsqueeze(-2) if q.dim() == 2 else q


class Significance:
    """Interface: a score per token (higher = keep). ``q_last`` is the last token's query
    [H, d] (the paper's), or the last r tokens' queries [H, r, d]: then a token's score is
    its best over those rows (a question-agnostic variant, see ``HomerConfig.query_rows``)."""

    name = "base"
    # True: the strategy scores every token once, in the leaf stage, and the tree carries
    # the score up with the token (``leaf_scores``, see :mod:`homer.reconstruction`)
    carries_scores = False

    def score(
        self,
        layer_idx: int,
        q_last: torch.Tensor,
        keys: torch.Tensor,
        positions: torch.Tensor,
        scaling: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        raise NotImplementedError


class Uncalibrated(Significance):
    """Raw last-token logits (the ablation "uncalibrated")."""

    name = "uncalibrated"

    def score(self, layer_idx, q_last, keys, positions, scaling, generator):
        return query_logits(_rows(q_last), keys, scaling).amax(0)


class Calibrated(Significance):
    """The paper's score: raw logit minus bias[layer][pos_last − pos_j] (§4)."""

    name = "calibrated"

    def __init__(self, bias: torch.Tensor):
        self.bias = bias.float()  # [L, M]

    def score(self, layer_idx, q_last, keys, positions, scaling, generator):
        raw = query_logits(_rows(q_last), keys, scaling)  # [r, n]: row r is the query at positions[-r:]
        rows = positions[-raw.shape[0] :]
        distance = (rows[:, None] - positions[None, :]).clamp(0, self.bias.shape[1] - 1).to(self.bias.device)
        return (raw - self.bias[layer_idx][distance].to(raw.device)).amax(0)


def smooth_bias(bias: torch.Tensor, width: float) -> torch.Tensor:
    """Average each layer's bias over distances within a factor ``1 + width`` of d (a window
    that grows with d, so the first distances stay as measured). The recency trend the bias
    removes is smooth in log-distance; what a table of a few dozen calibration chunks adds on
    top at large d is estimation noise of about a logit per distance (README, "bias curves"),
    which would otherwise be subtracted from the scores as if it were signal. ``width`` 0:
    the table as calibrated (the paper's)."""
    if width <= 0:
        return bias
    m = bias.shape[-1]
    d = torch.arange(m, dtype=torch.float64)
    lo = torch.ceil(d / (1 + width) - 1e-9).long().clamp(0, m - 1)
    hi = torch.floor(d * (1 + width) + 1e-9).long().clamp(0, m - 1)
    total = torch.cat([torch.zeros(*bias.shape[:-1], 1, dtype=torch.float64), bias.double().cumsum(-1)], -1)
    return ((total[..., hi + 1] - total[..., lo]) / (hi - lo + 1).double()).to(bias.dtype)


class RandomScore(Significance):
    """Uniform random scores (the ablation "random"), seeded per build."""

    name = "random"

    def score(self, layer_idx, q_last, keys, positions, scaling, generator):
        return torch.rand(keys.shape[1], generator=generator)


def pool_scores(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Max-pool scores over ``width`` neighbouring tokens (odd; ≤ 1 = off), so a token is
    kept when any close neighbour matters: numbers and words survive whole instead of as
    loose digits (an extension of §4, off by default)."""
    if width <= 1:
        return scores
    pad = width // 2
    pooled = torch.nn.functional.max_pool1d(scores.float().view(1, 1, -1), 2 * pad + 1, stride=1, padding=pad)
    return pooled.view(-1)


def unit_scores(scores: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Every token gets the best score of its unit (``units``: an id per token)."""
    _, inverse = torch.unique(units, return_inverse=True)
    best = torch.full((int(inverse.max()) + 1,), float("-inf")).scatter_reduce(
        0, inverse, scores.float(), reduce="amax"
    )
    return best[inverse]


def keep_indices(
    scores: torch.Tensor,
    prefix_len: int,
    suffix_len: int,
    target: int,
    pool_width: int = 0,
    units: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices (sorted, order kept) of the ``target`` tokens to keep: every affix token plus
    the highest-scoring context tokens (scores optionally max-pooled within the context).

    ``units`` (one id per context token, see :mod:`homer.spans`): choose whole units, each
    scored by its best token, best units first; only the last unit taken may be cut."""
    n = scores.shape[0]
    n_context_keep = target - prefix_len - suffix_len
    context_scores = pool_scores(scores[prefix_len : n - suffix_len].float().cpu(), pool_width)
    if units is None:
        top = torch.topk(context_scores, n_context_keep, sorted=False).indices
    else:
        units = units.cpu()
        by_unit = unit_scores(context_scores, units)
        # rank by (unit score desc, unit id, token score desc): units are taken whole, in order
        order = torch.argsort(context_scores, descending=True, stable=True)
        order = order[torch.argsort(units[order], stable=True)]
        order = order[torch.argsort(by_unit[order], descending=True, stable=True)]
        top = order[:n_context_keep]
    keep = torch.cat([torch.arange(prefix_len), top + prefix_len, torch.arange(n - suffix_len, n)])
    return keep.sort().values
