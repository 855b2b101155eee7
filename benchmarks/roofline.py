"""How close a HOMER build runs to this machine's matmul speed (a roofline for compute).

1. Peak: fp32 matmuls shaped like one decoder layer's projections on a chunk of tokens
   ([n×hidden]·[hidden×q], k, v, o, gate, up, down), timed on the same threads; and causal
   attention (sdpa) at the same length, counted as ``benchmarks.evaluation.flops`` counts it.
2. Achieved: the FLOPs ``homer_flops`` predicts for a build ÷ its measured time.
   roofline ratio = achieved ÷ matmul peak. Also: the build time the op mix would take at the
   two measured rates ÷ the measured time (what is lost outside the big kernels).
3. One profiled build (torch.profiler): the operators that take the time, matmuls apart.

    python -m benchmarks.roofline --tokens 16000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks.evaluation import flops as flop_counts
from homer import HomerConfig, build_document_cache
from homer.models import load_model

from .speed import timed_document

RESULTS = Path(__file__).parent / "results"
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _dims(config):
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.hidden_size, config.intermediate_size, heads, kv_heads, head_dim


@torch.no_grad()
def matmul_peak(config, tokens: int, repeats: int = 3) -> dict:
    """FLOP/s of one layer's projections (F.linear, as the model runs them) on ``tokens`` rows."""
    hidden, inter, heads, kv_heads, head_dim = _dims(config)
    shapes = {
        "q": (hidden, heads * head_dim),
        "k": (hidden, kv_heads * head_dim),
        "v": (hidden, kv_heads * head_dim),
        "o": (heads * head_dim, hidden),
        "gate": (hidden, inter),
        "up": (hidden, inter),
        "down": (inter, hidden),
    }
    inputs = {k: torch.randn(tokens, k) for k in {s[0] for s in shapes.values()}}
    weights = {name: torch.randn(m, k) / k**0.5 for name, (k, m) in shapes.items()}
    per_shape, total_flops, total_seconds = {}, 0.0, 0.0
    for name, (k, m) in shapes.items():
        seconds = _best(lambda: F.linear(inputs[k], weights[name]), repeats)
        flop = 2.0 * tokens * k * m
        per_shape[f"{name} [{tokens}x{k}]·[{k}x{m}]"] = round(flop / seconds / 1e9, 1)
        total_flops += flop
        total_seconds += seconds
    return {
        "tokens": tokens,
        "gflop_per_s": round(total_flops / total_seconds / 1e9, 1),
        "per_shape_gflop_per_s": per_shape,
    }


@torch.no_grad()
def attention_rate(config, tokens: int, repeats: int = 2) -> dict:
    """Causal sdpa as the build runs it (kv heads repeated), FLOPs as ``layer_flops`` counts them."""
    _, _, heads, kv_heads, head_dim = _dims(config)
    q = torch.randn(1, heads, tokens, head_dim)
    k = torch.randn(1, kv_heads, tokens, head_dim)
    v = torch.randn(1, kv_heads, tokens, head_dim)
    groups = heads // kv_heads

    def run():
        F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), is_causal=True
        )

    seconds = _best(run, repeats)
    return {"tokens": tokens, "gflop_per_s": round(2.0 * heads * head_dim * tokens * tokens / seconds / 1e9, 1)}


def _attention_only(config, tokens: int) -> float:
    _, _, heads, _, head_dim = _dims(config)
    return float(2 * heads * head_dim * tokens * tokens)


def build_roofline(model, tokenizer, tokens: int, peak: dict, attention: dict) -> tuple[dict, str]:
    item, _, _, _, config, plan = timed_document(model, tokenizer, tokens)
    total = flop_counts.homer_flops(model.config, plan)
    with mock.patch.object(flop_counts, "layer_flops", _attention_only):
        attention_flops = flop_counts.homer_flops(model.config, plan)
    started = time.perf_counter()
    build_document_cache(model, tokenizer, item.document, config)
    seconds = time.perf_counter() - started
    achieved = total / seconds
    ideal_seconds = (total - attention_flops) / (peak["gflop_per_s"] * 1e9) + attention_flops / (
        attention["gflop_per_s"] * 1e9
    )
    row = {
        "tokens": tokens,
        "leaves": plan.num_leaves,
        "build_s": round(seconds, 2),
        "gflop": round(total / 1e9, 1),
        "attention_share_of_flops": round(attention_flops / total, 3),
        "achieved_gflop_per_s": round(achieved / 1e9, 1),
        "roofline_ratio": round(achieved / (peak["gflop_per_s"] * 1e9), 3),
        "op_mix_ideal_s": round(ideal_seconds, 2),
        "op_mix_ratio": round(ideal_seconds / seconds, 3),
    }
    return row, item.document


def profile_build(model, tokenizer, document: str, top: int = 12) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        build_document_cache(model, tokenizer, document, HomerConfig())
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    share = lambda e: round(e.self_cpu_time_total / total, 4)  # noqa: E731
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total
    attention = (
        sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key or "flash_attention" in e.key)
        / total
    )
    return {
        "profiled_self_cpu_s": round(total / 1e6, 2),
        "matmul_share": round(matmul, 3),
        "attention_share": round(attention, 3),
        "other_share": round(1 - matmul - attention, 3),
        "top_ops": [{"op": e.key, "share": share(e), "calls": e.count} for e in events[:top]],
        "top_other_ops": [
            {"op": e.key, "share": share(e), "calls": e.count}
            for e in events
            if e.key not in MATMUL_OPS and "scaled_dot_product" not in e.key and "flash_attention" not in e.key
        ][:top],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=16_000, help="document length of the timed build")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--name", default="roofline")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device="cpu")
    chunk = HomerConfig().resolve(model.config).max_chunk_len
    load_before = os.getloadavg()
    peak = matmul_peak(model.config, chunk)
    print("matmul peak", json.dumps(peak), flush=True)
    attention = attention_rate(model.config, chunk)
    print("attention", json.dumps(attention), flush=True)
    row, document = build_roofline(model, tokenizer, args.tokens, peak, attention)
    print("build", json.dumps(row), flush=True)
    result = {
        "model": getattr(model, "homer_name", args.model),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "chunk_tokens": chunk,
        "matmul_peak": peak,
        "attention": attention,
        "build": row,
        "bar": 0.5,
        "bar_met": row["roofline_ratio"] >= 0.5,
    }
    if not args.no_profile:
        result["profile"] = profile_build(model, tokenizer, document)
        print("profile", json.dumps(result["profile"], indent=1), flush=True)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
