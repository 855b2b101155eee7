"""Peak memory of a HOMER build vs input length, each length in a fresh process.

Peak RSS above the loaded weights (sampled every 20 ms during the build; on CUDA,
``torch.cuda.max_memory_allocated`` above the weights). The method predicts
weights + O(L · M · log N): almost flat in the input length.

    python -m benchmarks.memory --lengths 8000 32000 128000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(tokens: int, model_name: str | None, device: str) -> dict:
    import psutil
    import torch

    from benchmarks.evaluation.haystack import needle_document
    from homer import HomerConfig, build_document_cache
    from homer.models import load_model

    model, tokenizer = load_model(model_name, device=device)
    needle = needle_document(tokenizer, tokens, depth=0.5, seed=tokens)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, needle.document, HomerConfig())
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    result = {
        "tokens": tokens,
        "cache_tokens": len(cache),
        "leaves": int(cache.metadata["num_leaves"]),
        "build_seconds": round(seconds, 2),
        "peak_rss_above_weights_mib": round((peak[0] - baseline) / 2**20, 1),
        "rss_after_load_mib": round(baseline / 2**20, 1),
    }
    if device.startswith("cuda"):
        result["peak_gpu_above_weights_mib"] = round((torch.cuda.max_memory_allocated() - gpu_base) / 2**20, 1)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[8_000, 32_000, 128_000])
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.model, args.device)))
        return
    rows = []
    for tokens in args.lengths:  # a fresh process per length: no allocator history
        cmd = [sys.executable, "-m", "benchmarks.memory", "--one", str(tokens), "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0], rows[-1]
    summary = {
        "benchmark": "HOMER build peak memory vs input length",
        "device": args.device,
        "model": args.model or "SmolLM2-135M-Instruct (embedded)",
        "rows": rows,
        "peak_ratio_longest_to_shortest": round(
            last["peak_rss_above_weights_mib"] / max(first["peak_rss_above_weights_mib"], 1e-9), 2
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
