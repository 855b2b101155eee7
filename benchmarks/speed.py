"""Speed and size of HOMER on this machine, every figure a ratio measured in one run.

1. HOMER build ÷ plain prefill of the same prompt, next to the FLOP ratio the method predicts.
2. Follow-up: time to first token on a stored cache (load from disk + first token) ÷ the
   time to build that cache again; decode tokens/s from the cache.
3. Cache file size ÷ the method's bound T · layers · 2 · kv_heads · head_dim · bytes, and
   load time ÷ raw file read time.

    python -m benchmarks.speed --lengths 8000 16000 32000 --follow-up 100000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.evaluation.flops import homer_flops, plain_prefill_flops
from benchmarks.evaluation.haystack import needle_document
from homer import Conversation, HomerCache, HomerConfig, build_document_cache
from homer.document import document_prompt_ids, tokenize_document
from homer.models import load_model
from homer.plan import ChunkPlan
from homer.prompting import default_prompt

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def plain_prefill_seconds(model, ids: list[int]) -> float:
    started = time.perf_counter()
    model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - started


def timed_document(model, tokenizer, tokens: int):
    """The needle document of ``tokens`` tokens that the timing benchmarks build, laid out
    like the app does: (item, prefix ids, context ids, suffix ids, resolved config, plan)."""
    item = needle_document(tokenizer, tokens, 0.5, seed=tokens)
    prefix, suffix = document_prompt_ids(tokenizer, default_prompt(tokenizer))
    context = tokenize_document(tokenizer, item.document)[0]
    config = HomerConfig().resolve(model.config)
    plan = ChunkPlan(
        len(prefix),
        len(context),
        len(suffix),
        config.max_chunk_len,
        config.target_len,
        model.config.num_hidden_layers,
        config.warmup_layers,
    )
    return item, prefix, context, suffix, config, plan


def build_vs_prefill(model, tokenizer, tokens: int) -> dict:
    item, prefix, context, suffix, config, plan = timed_document(model, tokenizer, tokens)
    started = time.perf_counter()
    build_document_cache(model, tokenizer, item.document, config)
    homer_seconds = time.perf_counter() - started
    plain_seconds = plain_prefill_seconds(model, prefix + context + suffix)
    predicted = homer_flops(model.config, plan) / plain_prefill_flops(
        model.config, len(prefix) + len(context) + len(suffix)
    )
    measured = homer_seconds / plain_seconds
    return {
        "tokens": tokens,
        "leaves": plan.num_leaves,
        "homer_build_s": round(homer_seconds, 2),
        "plain_prefill_s": round(plain_seconds, 2),
        "measured_ratio": round(measured, 3),
        "predicted_flop_ratio": round(predicted, 3),
        "measured_over_predicted": round(measured / predicted, 3),
        "homer_gflop_per_s": round(homer_flops(model.config, plan) / homer_seconds / 1e9, 1),
    }


def follow_up(model, tokenizer, tokens: int) -> dict:
    item = needle_document(tokenizer, tokens, 0.5, seed=7)
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, item.document, HomerConfig())
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = cache.save(Path(tmp) / "book.homer.safetensors")
        size = path.stat().st_size
        started = time.perf_counter()
        raw = Path(path).read_bytes()
        read_seconds = time.perf_counter() - started
        del raw
        started = time.perf_counter()
        loaded = HomerCache.load(path, model=model)
        load_seconds = time.perf_counter() - started
        conversation = Conversation(loaded, model, tokenizer)
        pieces = conversation.ask(item.question, max_new_tokens=64)
        next(pieces)
        first_token = time.perf_counter() - started  # load + fingerprint check + question + first token
        for _ in pieces:
            pass
        stats = dict(conversation.stats)
    cfg = model.config
    kv_heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    bound = len(cache) * cfg.num_hidden_layers * 2 * kv_heads * head_dim * cache.keys.element_size()
    return {
        "tokens": tokens,
        "cache_tokens": len(cache),
        "build_s": round(build_seconds, 2),
        "time_to_first_token_s": round(first_token, 3),
        "rebuild_over_first_token": round(build_seconds / first_token, 1),
        "decode_tokens_per_s": round(stats.get("tokens_per_second", 0), 2),
        "decoded_tokens": stats.get("new_tokens"),
        "file_bytes": size,
        "kv_bound_bytes": bound,
        "file_over_bound": round(size / bound, 4),
        "load_s": round(load_seconds, 4),
        "raw_read_s": round(read_seconds, 4),
        "load_over_raw_read": round(load_seconds / max(read_seconds, 1e-9), 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--lengths", type=int, nargs="*", default=[8_000, 16_000, 32_000])
    parser.add_argument("--follow-up", type=int, default=100_000, help="book length for the follow-up test (0 = skip)")
    parser.add_argument("--name", default="speed")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, device=args.device)
    result = {
        "model": getattr(model, "homer_name", args.model),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "build_vs_prefill": [],
    }
    for tokens in args.lengths:
        row = build_vs_prefill(model, tokenizer, tokens)
        result["build_vs_prefill"].append(row)
        print(json.dumps(row), flush=True)
    if args.follow_up:
        result["follow_up"] = follow_up(model, tokenizer, args.follow_up)
        print(json.dumps(result["follow_up"]), flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
