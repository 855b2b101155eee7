"""Query-aware deep read vs a full question-aware rebuild vs document-first (needle in essays).

Per sample: a document-first build that also stores the leaf states, then for the question a
full question-aware build and a deep read from the stored states; each cache answers the
question (greedy, 16 tokens; correct if the first integer is the needle's number). Reports
the cost ratio (deep read, file reading included / full rebuild), the leaf-state size per
token, accuracy of the three on the same samples, and how often the deep read's answer and
kept tokens match the full rebuild's (they differ only by the float16 rounding of the
stored states). The JSON is rewritten after every sample.

    python -m benchmarks.deep_read --tokens 16000 --samples 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.evaluation.haystack import first_number, needle_document
from homer import Conversation, HomerConfig, build_document_cache
from homer.answering.deep_read import build_document_with_leaf_states, deep_read_document
from homer.models import load_model

from .retrieval import wilson

RESULTS = Path(__file__).parent / "results"


def answer(cache, model, tokenizer, question: str) -> str:
    return "".join(Conversation(cache, model, tokenizer).ask(question, max_new_tokens=16)).strip()


def summary(rows: list[dict], args, model, config: HomerConfig) -> dict:
    n = len(rows)
    out = {
        "task": "needle in essays, question-aware deep read",
        "model": getattr(model, "homer_name", ""),
        "machine": f"{torch.get_num_threads()} CPU threads (shared with other jobs)"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "tokens": args.tokens,
        "samples": n,
        "settings": json.loads(config.settings_json()),
        "decoding": "greedy, 16 new tokens; correct if the first integer in the answer equals the number",
    }
    if not n:
        return out
    for method in ("document_first", "question_aware", "deep_read"):
        k = sum(r[f"{method}_correct"] for r in rows)
        out[f"{method}_accuracy"] = {"correct": k, "n": n, "accuracy": round(k / n, 3), "ci95": wilson(k, n)}
    full = sum(r["question_aware_seconds"] for r in rows)
    deep = sum(r["deep_read_seconds"] for r in rows)
    out.update(
        {
            "question_aware_rebuild_seconds_mean": round(full / n, 2),
            "deep_read_seconds_mean": round(deep / n, 2),
            "cost_ratio_deep_read_over_rebuild": round(deep / full, 3),
            "cost_ratio_per_sample": [round(r["deep_read_seconds"] / r["question_aware_seconds"], 3) for r in rows],
            "document_first_build_with_states_seconds_mean": round(
                sum(r["document_first_seconds"] for r in rows) / n, 2
            ),
            "leaf_state_bytes_per_token": round(
                sum(r["leaf_state_bytes"] for r in rows) / sum(r["context_tokens"] for r in rows)
            ),
            "document_cache_bytes_per_context_token": round(
                sum(r["cache_bytes"] for r in rows) / sum(r["context_tokens"] for r in rows)
            ),
            "deep_read_same_answer_as_rebuild": sum(r["deep_read_answer"] == r["question_aware_answer"] for r in rows),
            "deep_read_kept_tokens_same_as_rebuild_mean": round(sum(r["kept_overlap"] for r in rows) / n, 4),
            "deep_read_fell_back_to_rebuild": sum(r["deep_read_mode"] != "leaf-states" for r in rows),
        }
    )
    overhead = [r for r in rows if r.get("document_first_plain_seconds")]
    if overhead:
        out["storing_states_overhead"] = {
            "with_states_seconds": overhead[0]["document_first_seconds"],
            "without_seconds": overhead[0]["document_first_plain_seconds"],
        }
    out["rows"] = rows
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--significance", default="calibrated")
    parser.add_argument("--pool-width", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "deep_read.json")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model)
    config = HomerConfig(significance=args.significance, pool_width=args.pool_width)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for j in range(args.samples):
            i = 2 * j  # the retrieval benchmark's samples 0, 2, 4, …: depths 0.05, 0.25, 0.45, …
            depth = (i % 10) / 10 + 0.05
            item = needle_document(tokenizer, args.tokens, depth, seed=1000 + i)
            states = Path(tmp) / f"doc{i}.leaves.safetensors"

            started = time.perf_counter()
            doc = build_document_with_leaf_states(model, tokenizer, item.document, states, config)
            doc_seconds = time.perf_counter() - started
            plain_seconds = None
            if j == 0:  # what storing the states costs the document-first build
                started = time.perf_counter()
                build_document_cache(model, tokenizer, item.document, config)
                plain_seconds = round(time.perf_counter() - started, 2)

            started = time.perf_counter()
            full = build_document_cache(model, tokenizer, item.document, config, question=item.question)
            full_seconds = time.perf_counter() - started

            started = time.perf_counter()
            deep = deep_read_document(model, tokenizer, states, item.question)
            deep_seconds = time.perf_counter() - started

            answers = {
                name: answer(c, model, tokenizer, item.question)
                for name, c in (("document_first", doc), ("question_aware", full), ("deep_read", deep))
            }
            same = deep.sources.shape == full.sources.shape and bool(torch.equal(deep.positions, full.positions))
            kept = set(deep.sources.tolist()) & set(full.sources.tolist())
            row = {
                "sample": i,
                "depth": depth,
                "expected": item.answer,
                "context_tokens": int(doc.metadata["context_len"]),
                "leaves": int(doc.metadata["num_leaves"]),
                "document_first_seconds": round(doc_seconds, 2),
                "document_first_plain_seconds": plain_seconds,
                "question_aware_seconds": round(full_seconds, 2),
                "deep_read_seconds": round(deep_seconds, 2),
                "deep_read_mode": deep.metadata.get("deep_read"),
                "leaf_state_bytes": states.stat().st_size,
                "cache_bytes": doc.info()["bytes"],
                "kept_overlap": round(len(kept) / max(1, len(set(full.sources.tolist()))), 4),
                "same_positions": same,
                **{f"{name}_answer": a[:80] for name, a in answers.items()},
                **{f"{name}_correct": first_number(a) == item.answer for name, a in answers.items()},
            }
            states.unlink()
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary(rows, args, model, config), indent=2))
    print(json.dumps({k: v for k, v in summary(rows, args, model, config).items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
