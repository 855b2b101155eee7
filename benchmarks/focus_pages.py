"""Page accuracy of focused answers on PDFs with known facts on known pages.

The documents of :mod:`benchmarks.citations` (essay prose as a real text-layer PDF, one
distinctive fact planted on each of several pages, seeded), read the way the app reads an
upload (:func:`homer.reading.sources.read_pdf`: text and each page's start), indexed the way the
worker indexes it (:mod:`storage.passages`: ~120-word passages with their first page,
SQLite FTS5, BM25), then each fact's question asked the way the app answers a specific
question by default: the not-found check (:mod:`homer.answering.grounding`), the top-3 passages as
80-word excerpts (:func:`app.focus.fed_text`), read in the app's order in a fresh window
(:class:`homer.answering.focus.PassageConversation`), greedy. No HOMER build is involved.

A source is right when its page — the page holding the middle of the part the model read
(:func:`app.focus.read_part`), as the app lists it — is the fact's page (each row also
records the passages' first pages, what the sources named before). Reported per document and overall: the
first listed source right (the sources keep the search's order, as the app lists them), any
of the three right, the answer holding the fact's word, and the median time to first token.
Where :mod:`benchmarks.citations` measured the *cache's* citations (from the answer's
attention to a document-first HOMER cache) this measures the sources a focused answer lists.

    python -m benchmarks.focus_pages                    # 3 documents × 16 facts, 20 pages
    python -m benchmarks.focus_pages --seeds 0 --facts 4 --output /tmp/pages.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def run_document(model, tokenizer, store, pages: int, facts: int, seed: int, max_new_tokens: int) -> list[dict]:
    from app.focus import fed_text, passage_order, passages_per_question, read_part
    from benchmarks.citations import fact_document, fact_pattern
    from homer.answering import grounding
    from homer.answering.focus import PassageConversation
    from homer.answering.grounding import NOT_FOUND
    from homer.generation import GenerationSettings
    from homer.reading.locations import LocationMap
    from homer.reading.sources import read_pdf
    from storage import passages as index

    data, items = fact_document(pages, facts, seed)
    source = read_pdf(data)
    doc_id = f"{seed:08d}".ljust(64, "0")
    index.build(store.db, doc_id, source.text, source.page_starts)
    stats = grounding.document_frequencies(p.text for p in index.passages(store.db, doc_id))
    locations = LocationMap.of(source.page_starts)
    rows = []
    for item in items:
        found = re.search(fact_pattern(item["fact"]), source.text)
        assert found and source.page_of(found.start()) == item["page"], item  # planted where we put it
        started = time.perf_counter()
        hits = index.search(store.db, doc_id, item["question"], passages_per_question())
        cover = grounding.coverage(item["question"], [p.text for p in hits], *stats) if hits else 0.0
        if not hits or cover < grounding.MIN_COVERAGE:
            answer, first = NOT_FOUND, time.perf_counter() - started
        else:
            conversation = PassageConversation(model, tokenizer, order=passage_order())
            answer, first = "", None
            for piece in conversation.ask(
                item["question"],
                [fed_text(p, item["question"]) for p in hits],
                settings=GenerationSettings(max_new_tokens=max_new_tokens),
            ):
                first = first if first is not None else time.perf_counter() - started
                answer += piece
        # a source's page is the page of the part the model read (app.focus.read_part), as the app lists it
        pages_listed = [read_part(p, item["question"], locations).page for p in hits]
        rows.append(
            {
                "seed": seed,
                "page": item["page"],
                "question": item["question"],
                "answer": answer.strip(),
                "answer_right": item["answer"].lower() in answer.lower(),
                "sources": pages_listed,
                "passage_first_pages": [p.page for p in hits],
                "first_source_right": bool(pages_listed) and pages_listed[0] == item["page"],
                "any_source_right": item["page"] in pages_listed,
                "coverage": round(cover, 4),
                "time_to_first_token": round(first if first is not None else time.perf_counter() - started, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def share(rows: list[dict], key: str) -> dict:
    right = sum(1 for r in rows if r[key])
    return {"right": right, "n": len(rows), "rate": round(right / len(rows), 4) if rows else None}


def summarize(rows: list[dict], meta: dict) -> dict:
    out = {**meta, "documents": {}}
    groups = {f"seed {s}": [r for r in rows if r["seed"] == s] for s in sorted({r["seed"] for r in rows})}
    groups["all"] = rows
    for name, group in groups.items():
        out["documents"][name] = {
            "first_source_on_the_fact_page": share(group, "first_source_right"),
            "a_source_on_the_fact_page": share(group, "any_source_right"),
            "answer_holds_the_fact": share(group, "answer_right"),
            "median_time_to_first_token": round(statistics.median(r["time_to_first_token"] for r in group), 3),
        }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--output", type=Path, default=RESULTS / "focus-pages.json")
    args = parser.parse_args(argv)

    import torch

    from app.focus import passage_order
    from homer.models import load_model
    from storage.store import Store

    model, tokenizer = load_model(args.model)
    store = Store(tempfile.mkdtemp(prefix="focus-pages-"))
    rows = []
    for seed in args.seeds:
        rows += run_document(model, tokenizer, store, args.pages, args.facts, seed, args.max_new_tokens)
    meta = {
        "benchmark": "focus-pages",
        "model": getattr(model, "homer_name", "embedded"),
        "pages": args.pages,
        "facts_per_document": args.facts,
        "seeds": args.seeds,
        "passage_order": passage_order(),
        "decoding": "greedy",
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
    }
    summary = summarize(rows, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    args.output.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(summary["documents"], indent=2))
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
