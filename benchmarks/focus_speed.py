"""Time to first token on the 128k-token book: a focused answer, a cache-only follow-up, and
the rebuild they avoid — in one run.

The book (``assets/``, 128 651 tokens) is read once into its HOMER cache (the one
:mod:`benchmarks.focus` builds and keeps in HOMER's home; its build time is the one measured
when it was built) and into its passage index. Then, as a user chats:

* **focused** — a factual question answered the app's way for a specific question: BM25
  retrieval, the not-found check, each passage's best window (``app.focus``), one batched
  prefill of the passages and the question in a fresh window, then the first token;
* **cache follow-up** — a question about the whole book asked after it in the conversation
  kept over the stored cache (as the app keeps it between turns): the question alone is
  prefilled after the cache.

Every time runs from the question to the first token, retrieval included. The machine's load
average is recorded next to each figure: on 2 shared cores, other jobs stretch every number.

    python -m benchmarks.focus_speed            # 20 of each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--output", default=str(RESULTS / "focus-speed.json"))
    parser.add_argument("--cache", help="the book's cache (default: the one benchmarks.focus keeps)")
    args = parser.parse_args(argv)

    import torch

    from app import focus as focusing
    from app.answering import plan_turn
    from benchmarks.book_questions import FACTS, WHOLE_BOOK
    from benchmarks.focus import BOOK, book_cache
    from homer.answering.focus import PassageConversation
    from homer.generation import Conversation, GenerationSettings
    from homer.models import load_model
    from homer.paths import homer_home
    from storage import passages as passage_index
    from storage.store import Store

    model, tokenizer = load_model()
    text = BOOK.read_text(encoding="utf-8")
    cache_path = Path(args.cache) if args.cache else homer_home() / "benchmarks" / "focus-book.safetensors"
    cache, built = book_cache(model, tokenizer, cache_path, text)
    store = Store(tempfile.mkdtemp(prefix="focus-speed-"))
    doc = "b" * 64
    started = time.perf_counter()
    passage_index.build(store.db, doc, text)
    index_seconds = time.perf_counter() - started
    settings = GenerationSettings(max_new_tokens=8)
    focus = focusing.focus_mode(None, FACTS[0][0])
    kept = Conversation(cache, model, tokenizer)  # the app's working copy, made once per session
    list(kept.ask("Hello.", settings=GenerationSettings(max_new_tokens=1)))  # warm-up turn
    rows = []
    for i in range(args.questions):
        question = FACTS[i % len(FACTS)][0]
        load = os.getloadavg()[0]
        started = time.perf_counter()
        turn = plan_turn(store, doc, question, focus)
        first = None
        if not turn.not_found:
            for _ in PassageConversation(model, tokenizer).ask(question, turn.texts, settings=settings):
                first = time.perf_counter() - started
                break
        focused = first if first is not None else time.perf_counter() - started
        follow_up = WHOLE_BOOK[i % len(WHOLE_BOOK)][0]
        started = time.perf_counter()
        follow = None
        for _ in kept.ask(follow_up, settings=settings):
            follow = time.perf_counter() - started
            break
        kept.reset()  # each follow-up after the cache alone, as the next turn of a fresh chat would be
        rows.append(
            {
                "question": question,
                "focus": focus.name,
                "not_found": turn.not_found,
                "retrieval_seconds": round(turn.seconds, 4),
                "focused_ttft": round(focused, 3),
                "follow_up": follow_up,
                "follow_up_ttft": round(follow or 0.0, 3),
                "load_average": round(load, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "benchmark": "focus-speed",
        "book": BOOK.name,
        "document_tokens": int(cache.metadata.get("context_len") or 0),
        "cache_tokens": len(cache),
        "passages_index_seconds": round(index_seconds, 3),
        "rebuild_seconds": round(built, 1) if built else cache.metadata.get("build_seconds"),
        "rebuild_note": "the book's HOMER build, measured when its cache was built (see focus-book.json)",
        "excerpt_words": focusing.excerpt_words(),
        "passages": focusing.passages_per_question(),
        "model": getattr(model, "homer_name", "embedded"),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "median_focused_ttft": round(statistics.median(r["focused_ttft"] for r in rows), 3),
        "max_focused_ttft": max(r["focused_ttft"] for r in rows),
        "median_follow_up_ttft": round(statistics.median(r["follow_up_ttft"] for r in rows), 3),
        "max_follow_up_ttft": max(r["follow_up_ttft"] for r in rows),
        "median_load_average": round(statistics.median(r["load_average"] for r in rows), 2),
        "rows": rows,
    }
    rebuild = out["rebuild_seconds"]
    if rebuild:
        out["rebuild_over_focused_ttft"] = round(float(rebuild) / out["median_focused_ttft"], 1)
        out["rebuild_over_follow_up_ttft"] = round(float(rebuild) / max(out["median_follow_up_ttft"], 1e-9), 1)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
