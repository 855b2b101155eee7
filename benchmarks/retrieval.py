"""Retrieval evaluation (method §9): needle in essays or passkey, every method side by side.

Methods (each row of the JSON-lines file is one answer):
  plain            the model fed the whole prompt
  clipped          the model fed only the end of the document that fits its window
  linear / dynamic / yarn   RoPE scaling (factor = length / window, rounded up to a power of 2)
  homer[NAME]      HOMER with a variant NAME:SIGNIFICANCE:POOL_WIDTH[:SPAN[:QUERY_ROWS]], under both protocols:
                   question-aware (question in the suffix, the paper's) and document-first
                   (question-agnostic cache saved, loaded, then asked — the app's)
  homer+yarn[NAME] the same on the YaRN-scaled model (M = factor · window / 2)

Rows are appended sample by sample, so a stopped run still counts; ``--summarize`` rewrites
the summary JSON (accuracy with Wilson 95 % intervals, by method × length and by depth).

    python -m benchmarks.retrieval --task needle --lengths 16000 32000 --samples 50
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.evaluation.haystack import answer_kept, first_number, needle_document
from benchmarks.evaluation.passkey import passkey_document
from homer import Conversation, DocumentPrompt, HomerCache, HomerConfig, build_document_cache
from homer.document import document_prompt_ids, tokenize_document
from homer.generation import DecodeState, GenerationSettings, eos_token_ids, generate_tokens
from homer.models import load_model

RESULTS = Path(__file__).parent / "results"
TASKS = {"needle": needle_document, "passkey": passkey_document}


def plain_answer(model, tokenizer, item, prompt: DocumentPrompt, window: int | None, max_new_tokens=16) -> str:
    """No HOMER: the whole prompt, or (``window``) only the end of the document that fits."""
    from transformers import DynamicCache

    prefix, suffix = document_prompt_ids(tokenizer, prompt, item.question)
    context = tokenize_document(tokenizer, item.document)[0]
    if window is not None:
        context = context[max(0, len(context) - (window - len(prefix) - len(suffix) - max_new_tokens)) :]
    state = DecodeState(kv=DynamicCache(), position=0)
    tokens = generate_tokens(
        model,
        state,
        prefix + context + suffix,
        GenerationSettings(max_new_tokens=max_new_tokens),
        eos_token_ids(model, tokenizer),
    )
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


def homer_answer(
    model, tokenizer, item, prompt: DocumentPrompt, config: HomerConfig, question_aware: bool, max_new_tokens=16
):
    started = time.perf_counter()
    cache = build_document_cache(
        model, tokenizer, item.document, config, prompt=prompt, question=item.question if question_aware else None
    )
    build = time.perf_counter() - started
    if not question_aware:  # the app's path: store, load, then ask
        with tempfile.TemporaryDirectory() as tmp:
            cache = HomerCache.load(cache.save(Path(tmp) / "doc.homer.safetensors"), model=model)
    answer = "".join(Conversation(cache, model, tokenizer).ask(item.question, max_new_tokens=max_new_tokens))
    kept = answer_kept(cache, tokenizer, item.document, item.answer)
    return answer, build, {"significance": cache.metadata.get("significance_used"), "answer_kept": kept}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3))


def summarize(lines: Path, out: Path, task: str, prompt_style: str) -> dict:
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    cells: dict = {}
    depths: dict = {}
    for row in rows:
        cell = cells.setdefault(
            (row["method"], row["tokens"]),
            {"method": row["method"], "tokens": row["tokens"], "n": 0, "correct": 0, "seconds": [], "kept": [0, 0, 0]},
        )
        cell["n"] += 1
        if row.get("answer_kept") is not None:  # measured, spared whole, correct when spared whole
            whole = row["answer_kept"] == 1.0
            cell["kept"] = [cell["kept"][0] + 1, cell["kept"][1] + whole, cell["kept"][2] + (whole and row["correct"])]
        cell["correct"] += int(row["correct"])
        cell["seconds"].append(row.get("build_seconds") or 0)
        d = (
            depths.setdefault(row["method"], {})
            .setdefault(str(row["tokens"]), {})
            .setdefault(f"{row['depth']:.2f}", [0, 0])
        )
        d[0] += int(row["correct"])
        d[1] += 1
    for cell in cells.values():
        cell["accuracy"] = round(cell["correct"] / cell["n"], 3)
        cell["ci95"] = wilson(cell["correct"], cell["n"])
        seconds = cell.pop("seconds")
        cell["mean_seconds"] = round(sum(seconds) / len(seconds), 2)
        measured, whole, correct = cell.pop("kept")
        if measured:  # how often pruning spared every token of the answer, and what the model made of it
            cell["answer_kept_whole"] = f"{whole}/{measured}"
            cell["correct_when_kept_whole"] = f"{correct}/{whole}"
    summary = {
        "task": "needle in essays" if task == "needle" else "passkey retrieval",
        "model": rows[0]["model"] if rows else None,
        "prompt_format": f"{prompt_style}: "
        + (
            "the model's chat template, document and question in one user turn"
            if prompt_style == "chat"
            else "plain text, 'Question: … Answer:'"
        ),
        "decoding": "greedy, 16 new tokens; correct if the first integer in the answer equals the key",
        "machine": f"{torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "cells": sorted(cells.values(), key=lambda c: (c["method"], c["tokens"])),
        "by_depth": depths,
    }
    out.write_text(json.dumps(summary, indent=2))
    return summary


def parse_variant(spec: str) -> tuple[str, HomerConfig]:
    """NAME:SIGNIFICANCE:POOL_WIDTH[:SPAN[:QUERY_ROWS]] or NAME:key=value,key=value (any
    HomerConfig field, e.g. ``w8:warmup_layers=8,max_chunk_len=2048``)."""
    name, _, rest = spec.partition(":")
    if "=" in rest:
        fields = {f.name: f.type for f in dataclasses.fields(HomerConfig)}
        kwargs = {}
        for pair in rest.split(","):
            key, _, value = pair.partition("=")
            if key not in fields or key == "bias":
                raise SystemExit(f"unknown HOMER setting {key!r} in variant {spec!r}")
            kind = str(fields[key])
            kwargs[key] = int(value) if "int" in kind else float(value) if "float" in kind else value
        return name, HomerConfig(**kwargs)
    significance, pool, *more = rest.split(":")
    span, rows = (more + ["token", "1"][len(more) :])[:2]
    return name, HomerConfig(significance=significance, pool_width=int(pool), span=span, query_rows=int(rows))


def rope_factor(tokens: int, window: int) -> float:
    return float(2 ** max(0, math.ceil(math.log2(tokens / window)))) if tokens > window else 1.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="needle")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16_000, 32_000])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--start", type=int, default=0, help="first sample index (to resume)")
    parser.add_argument(
        "--methods", nargs="+", default=["homer"], help="plain clipped linear dynamic yarn homer homer+yarn"
    )
    parser.add_argument("--protocols", nargs="+", default=["question-aware", "document-first"])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["paper:calibrated:0"],
        help="HOMER variants NAME:SIGNIFICANCE:POOL_WIDTH[:SPAN[:QUERY_ROWS]] or NAME:key=value,...",
    )
    parser.add_argument("--prompt-style", choices=["chat", "completion"], default="chat")
    parser.add_argument("--name", default=None, help="results file stem (default: the task)")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    name = args.name or args.task
    args.results_dir.mkdir(parents=True, exist_ok=True)
    lines = args.results_dir / f"{name}.jsonl"
    summary_path = args.results_dir / f"{name}.json"
    if args.summarize:
        print(json.dumps(summarize(lines, summary_path, args.task, args.prompt_style)["cells"], indent=2))
        return

    model, tokenizer = load_model(args.model, device=args.device)
    window = int(model.config.max_position_embeddings)
    prompt = DocumentPrompt(style=args.prompt_style)
    variants = [parse_variant(spec) for spec in args.variants]
    scaled: dict = {}

    def scaled_model(method: str, factor: float):
        from benchmarks.evaluation.rope import load_scaled_model

        if (method, factor) not in scaled:
            scaled.clear()  # one scaled model at a time
            scaled[(method, factor)] = load_scaled_model(args.model, method, factor, device=args.device)[0]
        return scaled[(method, factor)]

    make = TASKS[args.task]
    with lines.open("a") as fh:
        for i in range(args.start, args.start + args.samples):
            depth = (i % 10) / 10 + 0.05  # depths spread evenly
            for tokens in args.lengths:
                item = make(tokenizer, tokens, depth, seed=1000 + i)
                factor = rope_factor(tokens, window)
                for method in args.methods:
                    runs = []
                    if method in ("plain", "clipped"):
                        runs.append(
                            (
                                method,
                                lambda: (
                                    plain_answer(
                                        model, tokenizer, item, prompt, window if method == "clipped" else None
                                    ),
                                    None,
                                    None,
                                ),
                            )
                        )
                    elif method in ("linear", "dynamic", "yarn"):
                        runs.append(
                            (
                                f"{method}x{factor:g}",
                                lambda: (
                                    plain_answer(scaled_model(method, factor), tokenizer, item, prompt, None),
                                    None,
                                    None,
                                ),
                            )
                        )
                    elif method in ("homer", "homer+yarn"):
                        for vname, config in variants:
                            for protocol in args.protocols:
                                qa = protocol == "question-aware"

                                def run(config=config, qa=qa):
                                    base = model if method == "homer" else scaled_model("yarn", max(2.0, factor / 2))
                                    return homer_answer(base, tokenizer, item, prompt, config, qa)

                                runs.append((f"{method}[{vname}]-{protocol}", run))
                    else:
                        raise SystemExit(f"unknown method {method}")
                    for label, run in runs:
                        started = time.perf_counter()
                        answer, build, about = run()
                        about = about or {}
                        row = {
                            "model": getattr(model, "homer_name", ""),
                            "task": args.task,
                            "method": label,
                            "tokens": tokens,
                            "sample": i,
                            "depth": depth,
                            "answer": answer.strip()[:80],
                            "expected": item.answer,
                            "correct": first_number(answer) == item.answer,
                            "build_seconds": round(build, 2) if build is not None else None,
                            "seconds": round(time.perf_counter() - started, 2),
                            "significance": about.get("significance"),
                            "answer_kept": about.get("answer_kept"),
                        }
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
                        print(json.dumps(row), flush=True)
    summarize(lines, summary_path, args.task, args.prompt_style)


if __name__ == "__main__":
    main()
