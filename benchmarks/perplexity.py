"""Perplexity on long prose (method §9): HOMER-compressed context vs only the last window.

For a context length C, the scored span is the ``--span`` tokens after C tokens of essays.
HOMER compresses everything before the span (prefix = the first 100 tokens, suffix = the 100
tokens right before the span) into a cache of ~M tokens; the baseline keeps only the last M
tokens before the span (the same cache size, no compression). Both score the same span.

    python -m benchmarks.perplexity --lengths 16000 32000 64000 --samples 3
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import torch

from benchmarks.evaluation.haystack import essay_text
from homer import HomerConfig, build_cache
from homer.models import load_model

RESULTS = Path(__file__).parent / "results"
AFFIX = 100


@torch.no_grad()
def span_nll(model, kv, position: int, first_logits: torch.Tensor, span: list[int]) -> float:
    """Mean negative log-likelihood of ``span`` continuing from a cache at ``position``."""
    ids = torch.tensor([span[:-1]], device=model.device)
    positions = torch.arange(position, position + len(span) - 1, device=model.device).view(1, -1)
    logits = model(input_ids=ids, past_key_values=kv, position_ids=positions, use_cache=True).logits[0].float()
    logits = torch.cat([first_logits.to(logits.device).view(1, -1).float(), logits])
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(span, device=logits.device)))


@torch.no_grad()
def last_window_nll(model, before: list[int], span: list[int], keep: int) -> float:
    context = before[-keep:]
    out = model(input_ids=torch.tensor([context], device=model.device), use_cache=True, logits_to_keep=1)
    return span_nll(model, out.past_key_values, len(context), out.logits[0, -1], span)


def homer_nll(model, before: list[int], span: list[int], config: HomerConfig) -> tuple[float, int]:
    cache = build_cache(model, before[:AFFIX], before[AFFIX:-AFFIX], before[-AFFIX:], config)
    dtype = next(model.parameters()).dtype
    kv = cache.to_dynamic_cache(dtype=dtype, device=model.device, rerotate=False)
    return span_nll(model, kv, cache.next_position, cache.last_logits, span), len(cache)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16_000, 32_000, 64_000])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--span", type=int, default=1024)
    parser.add_argument("--name", default="perplexity")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, device=args.device)
    config = HomerConfig.paper().resolve(model.config)  # token ids only: the paper's token-level pruning
    text = essay_text()
    rows = []
    for tokens in args.lengths:
        for sample in range(args.samples):
            rng = random.Random(tokens * 100 + sample)
            start = rng.randrange(0, len(text) // 2)
            ids = tokenizer(text[start : start + (tokens + args.span) * 6], add_special_tokens=False).input_ids
            before, span = ids[:tokens], ids[tokens : tokens + args.span]
            h_nll, cache_len = homer_nll(model, before, span, config)
            b_nll = last_window_nll(model, before, span, cache_len)
            row = {
                "tokens": tokens,
                "sample": sample,
                "cache_tokens": cache_len,
                "span": len(span),
                "homer_ppl": round(math.exp(h_nll), 3),
                "last_window_ppl": round(math.exp(b_nll), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"model": getattr(model, "homer_name", args.model), "span": args.span, "rows": rows, "by_length": {}}
    for tokens in args.lengths:
        mine = [r for r in rows if r["tokens"] == tokens]
        summary["by_length"][str(tokens)] = {
            "homer_ppl": round(math.exp(sum(math.log(r["homer_ppl"]) for r in mine) / len(mine)), 3),
            "last_window_ppl": round(math.exp(sum(math.log(r["last_window_ppl"]) for r in mine) / len(mine)), 3),
        }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
