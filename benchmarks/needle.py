"""Needle in a haystack with real prose (essays), the embedded model, greedy decoding.

For each sample and length: HOMER question-aware (question in the suffix, the paper's
protocol), HOMER document-first (question-agnostic cache saved, loaded, question asked
afterwards — the app's protocol), and optionally the plain model fed the whole prompt.
Results are appended sample by sample to a JSON-lines file, so a stopped run still counts;
``--summarize`` writes the summary JSON.

    python -m benchmarks.needle --lengths 16000 32000 --samples 50
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from homer import Conversation, HomerCache, HomerConfig, build_document_cache
from homer.document import document_prompt_ids, tokenize_document
from homer.evaluation.haystack import first_number, needle_document
from homer.generation import DecodeState, GenerationSettings, eos_token_ids, generate_tokens
from homer.models import load_model
from homer.prompting import default_prompt

RESULTS = Path(__file__).parent / "results"


def plain_answer(model, tokenizer, needle, max_new_tokens=16) -> str:
    """The plain model fed the whole prompt (no HOMER), same chat layout."""
    from transformers import DynamicCache

    prompt = default_prompt(tokenizer)
    prefix, suffix = document_prompt_ids(tokenizer, prompt, needle.question)
    ids = prefix + tokenize_document(tokenizer, needle.document)[0] + suffix
    state = DecodeState(kv=DynamicCache(), position=0)
    tokens = list(generate_tokens(model, state, ids, GenerationSettings(max_new_tokens=max_new_tokens),
                                  eos_token_ids(model, tokenizer)))
    return tokenizer.decode(tokens, skip_special_tokens=True)


def homer_answer(model, tokenizer, needle, question_aware: bool, config: HomerConfig, max_new_tokens=16):
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, needle.document, config,
                                 question=needle.question if question_aware else None)
    build = time.perf_counter() - started
    if not question_aware:  # the app's path: store, load, then ask
        with tempfile.TemporaryDirectory() as tmp:
            path = cache.save(Path(tmp) / "doc.homer.safetensors")
            cache = HomerCache.load(path, model=model)
    conversation = Conversation(cache, model, tokenizer)
    answer = "".join(conversation.ask(needle.question, max_new_tokens=max_new_tokens))
    return answer, build, cache.metadata.get("significance_used")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(centre - half, 3), round(centre + half, 3))


def summarize(lines: Path, out: Path) -> dict:
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    cells: dict = {}
    for row in rows:
        key = f"{row['method']}@{row['tokens']}"
        cell = cells.setdefault(key, {"method": row["method"], "tokens": row["tokens"], "n": 0, "correct": 0,
                                      "build_seconds": []})
        cell["n"] += 1
        cell["correct"] += int(row["correct"])
        if row.get("build_seconds") is not None:
            cell["build_seconds"].append(row["build_seconds"])
    for cell in cells.values():
        cell["accuracy"] = round(cell["correct"] / cell["n"], 3)
        cell["ci95"] = wilson(cell["correct"], cell["n"])
        times = cell.pop("build_seconds")
        cell["mean_build_seconds"] = round(sum(times) / len(times), 2) if times else None
    summary = {"task": "needle in essays", "model": rows[0]["model"] if rows else None,
               "prompt_format": "chat template (ChatML), document in the user turn",
               "decoding": "greedy, 16 new tokens, correct if the first integer equals the needle",
               "machine": f"{torch.get_num_threads()} CPU threads", "cells": sorted(cells.values(), key=lambda c: (c["method"], c["tokens"]))}
    out.write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16_000, 32_000])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--start", type=int, default=0, help="first sample index (to resume)")
    parser.add_argument("--plain-samples", type=int, default=0, help="also run the plain model on this many")
    parser.add_argument("--variants", nargs="+", default=["paper:calibrated:0"],
                        help="NAME:SIGNIFICANCE:POOL_WIDTH, e.g. paper:calibrated:0 pooled7:calibrated:7")
    parser.add_argument("--name", default="needle")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = RESULTS / f"{args.name}.jsonl"
    if args.summarize:
        print(json.dumps(summarize(lines, RESULTS / f"{args.name}.json"), indent=2))
        return
    model, tokenizer = load_model(args.model)
    variants = []
    for spec in args.variants:
        name, significance, pool = spec.split(":")
        variants.append((name, HomerConfig(significance=significance, pool_width=int(pool))))
    with lines.open("a") as fh:
        for i in range(args.start, args.start + args.samples):
            depth = (i % 10) / 10 + 0.05  # depths spread evenly
            for tokens in args.lengths:
                needle = needle_document(tokenizer, tokens, depth, seed=1000 + i)
                runs = [(f"homer[{name}]-{protocol}", config, qa) for name, config in variants
                        for protocol, qa in (("question-aware", True), ("document-first", False))]
                if i - args.start < args.plain_samples:
                    runs.append(("plain", None, None))
                for method, config, question_aware in runs:
                    if question_aware is None:
                        started = time.perf_counter()
                        answer, build, used = plain_answer(model, tokenizer, needle), time.perf_counter() - started, None
                    else:
                        answer, build, used = homer_answer(model, tokenizer, needle, question_aware, config)
                    row = {"model": getattr(model, "homer_name", ""), "method": method, "tokens": tokens,
                           "sample": i, "depth": depth, "answer": answer.strip()[:80], "expected": needle.answer,
                           "correct": first_number(answer) == needle.answer, "build_seconds": round(build, 2),
                           "significance": used, "settings": config.settings() if config else None}
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    print(json.dumps(row), flush=True)
    summarize(lines, RESULTS / f"{args.name}.json")


if __name__ == "__main__":
    main()
