"""Decoding speed from a HOMER cache: the DynamicCache baseline next to the preallocated
path, and both next to this machine's memory-bandwidth limit, measured in the same run.

A decoded token has to read every weight once and the whole KV cache once, so
``bound = bandwidth / (weight bytes + KV bytes)`` tokens/s; the bandwidth is a large
tensor's read (sum) on the same threads.

    python -m benchmarks.decode                  # ~8k-token essay document → ~4k-token cache
    python -m benchmarks.decode --threads 1 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.evaluation.haystack import needle_document
from homer import Conversation, HomerConfig, build_document_cache
from homer.generation import GenerationSettings, generate_tokens
from homer.models import load_model

RESULTS = Path(__file__).parent / "results"
BAR_TOKENS_PER_S = 20.0


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> tuple[float, float]:
    """Bytes/s of summing one large float32 tensor (best of ``repeats``), per second of wall
    time and per second of this process's CPU time."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        x.sum()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - cpu_started)
    return x.numel() * 4 / wall, x.numel() * 4 / max(cpu, 1e-9)


def weight_bytes_per_token(model) -> int:
    """Every parameter is read once per token, except an input embedding that is not also the
    output head (one row of it is read)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights count once
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():
        total -= embed.numel() * embed.element_size() - embed.shape[1] * embed.element_size()
    return total


def kv_bytes_per_token(model, cache_tokens: float, element: int | None = None) -> float:
    """KV bytes read per decoded token; ``element``: bytes per KV number (default: the model's)."""
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    element = element or next(model.parameters()).element_size()
    return cfg.num_hidden_layers * 2 * kv_heads * head_dim * cache_tokens * element


def decode_run(cache, model, tokenizer, question: str, new_tokens: int, kv_cache: str) -> dict:
    """The first question of a conversation, then exactly ``new_tokens`` greedy tokens
    (end-of-turn ignored). Rates count the tokens after the first (decode only): per second
    of wall time, and per second of this process's CPU time (with one thread, about what an
    idle core would give when the machine is shared)."""
    conversation = Conversation(cache, model, tokenizer, kv_cache=kv_cache)
    text = conversation.prompt.render(tokenizer, [], question)[len(conversation.text) :]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    tokens = generate_tokens(model, conversation.state, ids, GenerationSettings(max_new_tokens=new_tokens), set())
    first = [next(tokens)]  # the question and the first answer token
    wall, cpu = time.perf_counter(), time.process_time()
    rest = list(tokens)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    keys = conversation.state.kv.layers[0].keys
    return {
        "tokens_per_s": len(rest) / wall,
        "tokens_per_cpu_s": len(rest) / max(cpu, 1e-9),
        "tokens": first + rest,
        "cache_tokens_at_end": conversation.state.kv.get_seq_length(),
        "kv_dtype": str(keys.dtype),
        "kv_element": keys.element_size(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--document-tokens",
        type=int,
        default=8_000,
        help="essay document length; its HOMER cache keeps about half the model window",
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per path; the best counts")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--name", default="decode")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=args.device)
    load_before = os.getloadavg()

    item = needle_document(tokenizer, args.document_tokens, 0.5, seed=11)
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, item.document, HomerConfig())
    build_seconds = time.perf_counter() - started
    print(f"cache: {len(cache)} tokens from {args.document_tokens} ({build_seconds:.1f} s)", flush=True)

    runs = {"dynamic": [], "preallocated": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for kind in runs:  # alternate, so a busy moment on a shared machine hits both
                row = decode_run(cache, model, tokenizer, item.question, args.new_tokens, kind)
                runs[kind].append(row)
                print(
                    f"{kind}: {row['tokens_per_s']:.2f} tokens/s ({row['tokens_per_cpu_s']:.2f} per CPU-s)", flush=True
                )
    bandwidth, cpu_bandwidth = read_bandwidth() if model.device.type == "cpu" else (None, None)
    load_after = os.getloadavg()

    best = {kind: max(rows, key=lambda r: r["tokens_per_s"]) for kind, rows in runs.items()}
    mean_cache = len(cache) + (best["preallocated"]["cache_tokens_at_end"] - len(cache)) / 2
    weights = weight_bytes_per_token(model)
    kv = {kind: kv_bytes_per_token(model, mean_cache, row["kv_element"]) for kind, row in best.items()}
    result = {
        "model": getattr(model, "homer_name", args.model),
        "device": str(model.device),
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "document_tokens": args.document_tokens,
        "cache_tokens": len(cache),
        "cache_build_s": round(build_seconds, 2),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "dynamic_tokens_per_s": round(best["dynamic"]["tokens_per_s"], 2),
        "preallocated_tokens_per_s": round(best["preallocated"]["tokens_per_s"], 2),
        "speedup": round(best["preallocated"]["tokens_per_s"] / best["dynamic"]["tokens_per_s"], 3),
        "same_tokens": all(r["tokens"] == runs["dynamic"][0]["tokens"] for rows in runs.values() for r in rows),
        "all_runs_tokens_per_s": {kind: [round(r["tokens_per_s"], 2) for r in rows] for kind, rows in runs.items()},
        "dynamic_tokens_per_cpu_s": round(max(r["tokens_per_cpu_s"] for r in runs["dynamic"]), 2),
        "preallocated_tokens_per_cpu_s": round(max(r["tokens_per_cpu_s"] for r in runs["preallocated"]), 2),
        "kv_dtype": {kind: row["kv_dtype"] for kind, row in best.items()},
        "weight_bytes_per_token": weights,
        "kv_bytes_per_token": {kind: round(b) for kind, b in kv.items()},
        "bar_tokens_per_s": BAR_TOKENS_PER_S,
        "bar_met": best["preallocated"]["tokens_per_s"] >= BAR_TOKENS_PER_S,
    }
    if bandwidth:  # each path against the bytes it has to read (its own KV dtype)
        bound = {kind: bandwidth / (weights + kv[kind]) for kind in kv}
        result.update(
            {
                "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                "bandwidth_bound_tokens_per_s": {kind: round(b, 2) for kind, b in bound.items()},
                "preallocated_over_bound": round(best["preallocated"]["tokens_per_s"] / bound["preallocated"], 3),
                "dynamic_over_bound": round(best["dynamic"]["tokens_per_s"] / bound["dynamic"], 3),
                # the same per CPU-second: on a shared machine with one thread, what an idle core gives
                "read_bandwidth_gb_per_cpu_s": round(cpu_bandwidth / 1e9, 2),
                "preallocated_per_cpu_s_over_bound": round(
                    result["preallocated_tokens_per_cpu_s"] / (cpu_bandwidth / (weights + kv["preallocated"])), 3
                ),
            }
        )
    print(json.dumps(result, indent=2), flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
