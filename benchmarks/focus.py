"""Focused answers on a whole book: the stored HOMER cache alone, retrieved passages alone,
the cache with the passages read again after it (REFORM, arXiv 2506.01215), and the ceiling.

One HOMER build of the sample book (``assets/``, ~129k tokens, 16 windows of the embedded
model) with the default settings, saved once and reused by later runs; the book's passage
index (``storage.passages``: ~120-word passages, SQLite FTS5, BM25) in a scratch store; then
every question of :mod:`benchmarks.book_questions`, each in a fresh conversation (the
document-first protocol: nothing about the question reached the build), under every arm:

* ``cache`` — the stored cache, then the question (the app before focus);
* ``passages`` — the top-k passages as the document in a fresh window, then the question
  (plain retrieval-augmented generation, no cache);
* ``cache+passages`` — the stored cache, then one turn with the top-k passages and the
  question, one batched prefill;
* ``clue+passages`` — MemoRAG (arXiv 2409.05591): the stored cache first drafts a clue
  (:func:`homer.experiments.clues.draft_clue`), the question and the clue together are the retrieval
  query, and the top-k passages are read as in ``passages`` (the clue's time counts in the
  time to first token);
* ``leaves`` — a deep read on a few leaves (:mod:`homer.experiments.leaf_focus`): a question-aware HOMER
  build of only the leaves of the book's layout that hold the top-k passages, then the
  question (the build counts in the time to first token);
* ``ceiling`` (factual questions only) — the evidence verse's own passage alone in the window;
* ``auto:…`` — scored from the rows above, not run: the cache for a question about the whole
  document (:func:`homer.answering.focus.route`), the named arm for the others.

Reported: accuracy per arm (an accepted string in the answer; whole-book questions by their
keyword rubric), BM25 recall@1/3/5 of the evidence passage, median time to first token per
arm (from the question, retrieval included; the conversation's working copy of the cache is
made before the clock starts, as the app keeps it between turns). Each answer is appended to
``focus-book.jsonl`` as it comes and the summary ``focus-book.json`` is rewritten after each
question, so a run cut short still reports what it measured; ``--resume`` skips what is done.

    python -m benchmarks.focus                      # everything (long on a 2-core CPU)
    python -m benchmarks.focus --limit 4 --output /tmp/focus-smoke.json   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
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
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
RESULTS = Path(__file__).parent / "results"
ARMS = ("cache", "passages", "cache+passages", "ceiling")
EXTRA_ARMS = ("clue+passages", "leaves")  # run when named in --arms
BOOK_TITLES = {"Genesis": "CALLED GENESIS", "Exodus": "CALLED EXODUS", "Leviticus": "CALLED LEVITICUS"}


def locate_verse(text: str, ref: str) -> int:
    """Character offset of a verse ("Exodus 12:40") in the book: the book's title, its
    "Chapter N" heading, then the line that starts with the verse number."""
    book, chapter_verse = ref.rsplit(" ", 1)
    chapter, verse = chapter_verse.split(":")
    start = text.index(BOOK_TITLES[book])
    later = [i for i in (text.find(t, start + 1) for t in BOOK_TITLES.values()) if i > start]
    end = min(later) if later else len(text)
    heading = text.index(f"\nChapter {chapter}\n", start)
    if heading >= end:
        raise ValueError(f"{ref}: no such chapter")
    match = re.compile(rf"^{verse} ", re.M).search(text, heading)
    if match is None or match.start() >= end:
        raise ValueError(f"{ref}: no such verse")
    return match.start()


def correct(answer: str, accepted: list[str]) -> bool:
    low = " ".join(answer.lower().split())
    return any(re.search(r"(?<![a-z0-9])" + re.escape(a.lower()), low) for a in accepted)


def rubric_hits(answer: str, keywords: list[str]) -> int:
    low = answer.lower()
    return sum(1 for k in keywords if k.lower() in low)


def book_cache(model, tokenizer, path: Path, text: str):
    """The book's HOMER cache: loaded from ``path`` when it was built by this model, else built
    (default settings, document-first) and saved there. ``(cache, build seconds or None)``."""
    from homer.cache import CacheMismatchError, HomerCache
    from homer.document import build_document_cache

    if path.exists():
        try:
            return HomerCache.load(path, model=model), None
        except CacheMismatchError as exc:
            print(f"rebuilding: {exc}", file=sys.stderr)
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, text, metadata={"document_id": "book"})
    seconds = time.perf_counter() - started
    cache.save(path)
    return cache, seconds


def run_arm(
    arm: str,
    question: str,
    model,
    tokenizer,
    cache,
    retrieve,
    evidence_text: str | None,
    max_new_tokens: int,
    k: int,
    excerpt_words: int = 0,
    order: str | None = None,
    leaf_read=None,
) -> dict:
    """One answer under one arm: the answer, time to first token and what was fed."""
    from homer.answering.focus import DEFAULT_PASSAGE_ORDER, PassageConversation, cache_room, fit_passages, strategy
    from homer.generation import Conversation, GenerationSettings

    order = order or DEFAULT_PASSAGE_ORDER
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    conversation = Conversation(cache, model, tokenizer) if arm in ("cache", "cache+passages") else None
    started = time.perf_counter()
    used: list = []
    clue = ""
    leaves: list = []
    if arm == "leaves":  # a question-aware HOMER read of the leaves holding the passages
        used = retrieve(question, k)
        leaves, leaf_cache = leaf_read(question, used)
        conversation, texts = Conversation(leaf_cache, model, tokenizer), []
    elif arm == "ceiling":
        texts = [evidence_text]
    elif arm in ("passages", "cache+passages", "clue+passages"):
        from homer.answering.focus import excerpt

        query = question
        if arm == "clue+passages":
            from homer.experiments.clues import clue_query, draft_clue

            clue = draft_clue(cache, model, tokenizer, question)
            query = clue_query(question, clue)
        used = retrieve(query, k)
        texts = [excerpt(p.text, query if arm == "clue+passages" else question, excerpt_words) for p in used]
    else:
        texts = []
    retrieval = time.perf_counter() - started
    if arm == "leaves":
        fed, before = [], conversation.state.position
        stream = conversation.ask(question, settings=settings)
    elif conversation is not None:
        fed = texts and fit_passages(tokenizer, texts, cache_room(cache, model, max_new_tokens), question)
        before = conversation.state.position
        stream = conversation.ask(strategy(arm).turn_text(question, fed or [], order), settings=settings)
    else:
        conversation = PassageConversation(model, tokenizer, order=order)
        fed, before = texts, 0
        stream = conversation.ask(question, texts, settings=settings)
    answer, first = "", None
    for piece in stream:
        if first is None:
            first = time.perf_counter() - started
        answer += piece
    stats = conversation.stats
    extra = {"clue": clue} if arm == "clue+passages" else {"leaves": leaves} if arm == "leaves" else {}
    return {
        **extra,
        "answer": answer,
        "time_to_first_token": round(first if first is not None else time.perf_counter() - started, 4),
        "engine_time_to_first_token": round(float(stats.get("time_to_first_token", 0.0)), 4),
        "retrieval_seconds": round(retrieval, 4),
        "passages_fed": len(fed or []),
        "prompt_tokens": (conversation.state.position - before - max(int(stats.get("new_tokens", 0)) - 1, 0)),
        "new_tokens": int(stats.get("new_tokens", 0)),
        "retrieved": [{"seq": p.seq, "score": round(p.score, 3)} for p in used],
    }


def summarise(rows: list[dict], recall: dict, meta: dict) -> dict:
    out = {**meta, "recall": recall, "arms": {}}
    present = [arm for arm in ARMS + EXTRA_ARMS if any(r["arm"] == arm for r in rows)]
    for kind in ("fact", "whole"):
        for arm in present:
            got = [r for r in rows if r["kind"] == kind and r["arm"] == arm]
            if not got:
                continue
            ttft = [r["time_to_first_token"] for r in got]
            out["arms"].setdefault(arm, {})[kind] = {
                "n": len(got),
                "right": sum(r["right"] for r in got),
                "accuracy": round(sum(r["right"] for r in got) / len(got), 4),
                "median_time_to_first_token": round(statistics.median(ttft), 3),
                "median_prompt_tokens": statistics.median(r["prompt_tokens"] for r in got),
            }
    facts = {r["question"] for r in rows if r["kind"] == "fact"}
    complete = [q for q in facts if {r["arm"] for r in rows if r["question"] == q} >= set(present)]
    out["paired_fact_questions"] = len(complete)
    out["paired_accuracy"] = {
        arm: sum(r["right"] for r in rows if r["arm"] == arm and r["question"] in complete) for arm in present
    }
    clued = [r for r in rows if r["arm"] == "clue+passages" and r["kind"] == "fact" and "evidence_seq" in r]
    if clued:  # did the clue bring the evidence passage into the top k?
        out["clue_evidence_retrieved"] = round(
            sum(r["evidence_seq"] in [p["seq"] for p in r["retrieved"]] for r in clued) / len(clued), 4
        )
    out["auto"] = auto_routes(rows)
    return out


def auto_routes(rows: list[dict]) -> dict:
    """The ``auto`` focus, scored from the answers already measured: each question takes the
    row of the arm :func:`homer.answering.focus.route` picks for it (the cache for a question about the
    whole document, else the specific arm), over the questions measured under both arms."""
    from homer.answering.focus import route

    by = {(r["question"], r["arm"]): r for r in rows}
    out = {}
    for specific in ("passages", "cache+passages"):
        for kind in ("fact", "whole"):
            questions = sorted({r["question"] for r in rows if r["kind"] == kind})
            picked = [by[(q, route(q, specific))] for q in questions if (q, "cache") in by and (q, specific) in by]
            if picked:
                out.setdefault(f"auto:{specific}", {})[kind] = {
                    "n": len(picked),
                    "right": sum(r["right"] for r in picked),
                    "accuracy": round(sum(r["right"] for r in picked) / len(picked), 4),
                    "routed_to_cache": sum(1 for r in picked if r["arm"] == "cache"),
                    "median_time_to_first_token": round(statistics.median(r["time_to_first_token"] for r in picked), 3),
                }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(RESULTS / "focus-book.json"))
    parser.add_argument("--cache", help="where the book's cache is kept (default: in HOMER's home)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--k", type=int, default=3, help="passages retrieved per question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--excerpt-words",
        type=int,
        default=None,
        help="feed each passage's best window of N words (homer.answering.focus.excerpt); 0: whole "
        "passages; default: the app's",
    )
    parser.add_argument(
        "--passage-order", default=None, help="best-first (the search's order) or best-last (default: the app's)"
    )
    parser.add_argument("--whole-max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions of each set")
    parser.add_argument("--resume", action="store_true", help="keep the answers already in the .jsonl")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="recompute the summary from the .jsonl")
    args = parser.parse_args(argv)
    if args.summary_only:
        output = Path(args.output)
        rows = [json.loads(line) for line in output.with_suffix(".jsonl").read_text().splitlines() if line.strip()]
        old = json.loads(output.read_text())
        meta = {
            k: v
            for k, v in old.items()
            if k not in ("recall", "arms", "paired_fact_questions", "paired_accuracy", "auto")
        }
        output.write_text(json.dumps(summarise(rows, old["recall"], meta), indent=2) + "\n")
        return 0

    import torch

    from app.focus import DEFAULT_EXCERPT_WORDS
    from benchmarks.book_questions import FACTS, WHOLE_BOOK
    from homer.answering.focus import DEFAULT_PASSAGE_ORDER
    from homer.models import load_model
    from homer.paths import homer_home
    from storage import passages as passage_index
    from storage.store import Store

    if args.excerpt_words is None:
        args.excerpt_words = DEFAULT_EXCERPT_WORDS
    arms = [a for a in args.arms.split(",") if a]
    output = Path(args.output)
    jsonl = output.with_suffix(".jsonl")
    text = BOOK.read_text(encoding="utf-8")
    digest = hashlib.sha256(BOOK.read_bytes()).hexdigest()
    model, tokenizer = load_model()
    cache_path = Path(args.cache) if args.cache else homer_home() / "benchmarks" / "focus-book.safetensors"
    needs_cache = args.build_only or any(a in ("cache", "cache+passages", "clue+passages") for a in arms)
    cache, built = book_cache(model, tokenizer, cache_path, text) if needs_cache else (None, None)
    if args.build_only:
        print(json.dumps({"cache": str(cache_path), "tokens": len(cache), "build_seconds": built}))
        return 0

    store = Store(tempfile.mkdtemp(prefix="focus-bench-"))
    started = time.perf_counter()
    count = passage_index.build(store.db, digest, text)
    index_seconds = time.perf_counter() - started
    all_passages = passage_index.passages(store.db, digest)
    spans = [(p.start, p.end) for p in all_passages]

    def evidence(ref: str):
        offset = locate_verse(text, ref)
        return next(p for p, (s, e) in zip(all_passages, spans) if s <= offset < e)

    def retrieve(question: str, k: int):
        return passage_index.search(store.db, digest, question, k)

    leaf_read = None
    if "leaves" in arms:
        from homer.experiments.leaf_focus import document_leaves, leaves_holding, read_leaves

        leaf_spans = document_leaves(model, tokenizer, text)

        def leaf_read(question: str, used):
            leaves = leaves_holding(leaf_spans, [p.start for p in used])
            return leaves, read_leaves(model, tokenizer, text, leaf_spans, leaves, question)

    facts = FACTS[: args.limit] if args.limit else FACTS
    whole = WHOLE_BOOK[: args.limit] if args.limit else WHOLE_BOOK
    ranks = {}
    for question, ref, _ in facts:
        found = [p.seq for p in retrieve(question, 5)]
        target = evidence(ref).seq
        ranks[question] = found.index(target) + 1 if target in found else None
    recall = {
        f"at_{k}": round(sum(1 for r in ranks.values() if r is not None and r <= k) / len(ranks), 4) for k in (1, 3, 5)
    }
    recall["questions"] = len(ranks)
    meta = {
        "benchmark": "focus-book",
        "book": BOOK.name,
        "book_sha256": digest,
        "book_chars": len(text),
        "document_tokens": int(cache.metadata.get("context_len") or 0) if cache else None,
        "cache_tokens": len(cache) if cache else None,
        "cache_build_seconds": round(built, 1) if built else (cache.metadata.get("build_seconds") if cache else None),
        "passages": count,
        "passage_words": passage_index.PASSAGE_WORDS,
        "index_seconds": round(index_seconds, 3),
        "k": args.k,
        "excerpt_words": args.excerpt_words,
        "passage_order": args.passage_order or DEFAULT_PASSAGE_ORDER,
        "max_new_tokens": args.max_new_tokens,
        "whole_max_new_tokens": args.whole_max_new_tokens,
        "model": getattr(model, "homer_name", "embedded"),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "decoding": "greedy",
        "fact_questions": len(facts),
        "whole_book_questions": len(whole),
        "ranks": ranks,
    }

    rows = []
    if args.resume and jsonl.exists():
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    elif jsonl.exists():
        jsonl.unlink()
    done = {(r["question"], r["arm"]) for r in rows}
    items = [("fact", q, ref, accepted) for q, ref, accepted in facts]
    for i, (q, keywords, need) in enumerate(whole):  # interleaved, so a partial run has both kinds
        items.insert(min(len(items), (i + 1) * 5 + i), ("whole", q, keywords, need))
    for kind, question, extra, accepted in items:
        for arm in arms:
            if (question, arm) in done or (kind == "whole" and arm == "ceiling"):
                continue
            load = os.getloadavg()[0]
            if kind == "fact":
                ev = evidence(extra)
                result = run_arm(
                    arm,
                    question,
                    model,
                    tokenizer,
                    cache,
                    retrieve,
                    ev.text,
                    args.max_new_tokens,
                    args.k,
                    args.excerpt_words,
                    args.passage_order,
                    leaf_read,
                )
                row = {
                    "kind": kind,
                    "question": question,
                    "verse": extra,
                    "evidence_seq": ev.seq,
                    "arm": arm,
                    "right": correct(result["answer"], accepted),
                    **result,
                }
            else:
                result = run_arm(
                    arm,
                    question,
                    model,
                    tokenizer,
                    cache,
                    retrieve,
                    None,
                    args.whole_max_new_tokens,
                    args.k,
                    args.excerpt_words,
                    args.passage_order,
                    leaf_read,
                )
                hits = rubric_hits(result["answer"], extra)
                row = {
                    "kind": kind,
                    "question": question,
                    "arm": arm,
                    "keyword_hits": hits,
                    "right": hits >= accepted,
                    **result,
                }
            row["load_average"] = round(load, 2)
            rows.append(row)
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"{arm:15s} {'ok ' if row['right'] else '-- '} {row['time_to_first_token']:6.2f}s "
                f"{question[:50]!r} -> {result['answer'][:70]!r}",
                flush=True,
            )
        summary = summarise(rows, recall, meta)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summarise(rows, recall, meta).items() if k != "ranks"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
