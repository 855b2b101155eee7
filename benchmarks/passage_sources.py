"""Sources of a focused answer: is the first one listed the passage that holds the answer?

The app's default for a specific question reads the top-3 BM25 passages of the question, each
as its best 80-word excerpt (:func:`homer.answering.focus.excerpt`), in a fresh window
(:class:`homer.answering.focus.PassageConversation`), and lists them under the answer as its sources.
This benchmark asks each factual question of :mod:`benchmarks.book_questions` on the sample
book that way (greedy, ``--max-new-tokens`` 32, as :mod:`benchmarks.focus`), then ranks the
three sources two ways and checks the first against the question's evidence passage (the
passage holding its verse, :func:`benchmarks.focus.locate_verse`):

* ``retrieval`` — BM25 order, as the app listed them;
* ``attention`` — :mod:`homer.answering.passage_citations`: one more forward of prompt + answer, each
  passage scored by the peak attention weight any answer-producing query puts on one of its
  tokens, lower half of the layers (the statistic of :mod:`homer.answering.citations`).

Next to the default statistic it reports the other layer ranges (all, upper half) and the
mean weight instead of the peak, from the same forward. Accuracy is given over the
questions whose evidence passage was among the three retrieved (the only ones where the
order can be right) and over all; also split by whether the answer was right, and whether
the evidence verse is inside the excerpt the model read. The book is a text file: one page,
so a source's page says nothing here and the passage is what is checked.

Measured (``results/passage-sources.json``, SmolLM2-135M, the 56 questions, evidence among
the three retrieved for 47): the first source is the evidence passage for 39/47 in retrieval
order, 30/47 by attention (the mean weight, lower half: 37/47). Attention follows the answer:
over the 20 right answers 18 vs 17, over the 27 wrong ones 21 vs 13 (a wrong answer was read
from a wrong passage). So the app keeps retrieval order by default; ``HOMER_SOURCE_ORDER=
attention`` lists the passage the answer was read from first.

    python -m benchmarks.passage_sources                 # 56 questions (~10 minutes on 2 CPU cores)
    python -m benchmarks.passage_sources --limit 5 --output /tmp/sources.json
    python -m benchmarks.passage_sources --answers benchmarks/results/focus-book-excerpt80.jsonl
                                                         # score the answers recorded there, no generation
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

VARIANTS = {  # name -> (reduce, layer range as fractions of the stack)
    "peak:lower-half": ("peak", (0.0, 0.5)),  # the default (homer.answering.citations)
    "peak:all": ("peak", (0.0, 1.0)),
    "peak:upper-half": ("peak", (0.5, 1.0)),
    "mean:lower-half": ("mean", (0.0, 0.5)),
    "mean:all": ("mean", (0.0, 1.0)),
}


def variant_scores(model, prompt_ids: list[int], answer_ids: list[int], spans) -> dict[str, list[float | None]]:
    """Every variant's per-passage score from one forward through the whole stack."""
    import torch

    from homer.answering.citations import attention_rows
    from homer.layers import DecoderStack

    stack = DecoderStack(model)
    ids = list(prompt_ids) + list(answer_ids)[:-1]
    query_start = len(prompt_ids) - 1
    peak = torch.zeros(stack.num_layers, len(ids))
    mean = torch.zeros(stack.num_layers, len(ids))
    for layer, probs, _ in attention_rows(stack, None, ids, query_start, stack.num_layers - 1, own_keys=True):
        peak[layer] = probs.amax(dim=(0, 1)).cpu()
        mean[layer] = probs.mean(dim=(0, 1)).cpu()
    out = {}
    for name, (reduce, (lo, hi)) in VARIANTS.items():
        first, last = int(stack.num_layers * lo), max(int(stack.num_layers * lo) + 1, int(stack.num_layers * hi))
        rows = peak[first:last].amax(dim=0) if reduce == "peak" else mean[first:last].mean(dim=0)
        out[name] = [
            None
            if s is None
            else (float(rows[s[0] : s[1]].max()) if reduce == "peak" else float(rows[s[0] : s[1]].sum()))
            for s in spans
        ]
    return out


def top_of(scores: list[float | None]) -> int:
    from homer.answering.passage_citations import PassageScores

    return PassageScores(scores).order()[0]


def share(rows: list[dict], key: str) -> dict:
    n = len(rows)
    right = sum(1 for r in rows if r[key])
    return {"n": n, "right": right, "accuracy": round(right / n, 4) if n else None}


def summarise(rows: list[dict], meta: dict) -> dict:
    retrieved = [r for r in rows if r["evidence_rank"] is not None]
    orders = ["retrieval", *VARIANTS]
    out = {**meta, "questions": len(rows), "evidence_retrieved": len(retrieved), "top_is_evidence": {}}
    for order in orders:
        key = f"top:{order}"
        out["top_is_evidence"][order] = {
            "evidence_retrieved": share(retrieved, key),
            "all": share(rows, key),
            "answer_right": share([r for r in retrieved if r["right"]], key),
            "answer_wrong": share([r for r in retrieved if not r["right"]], key),
            "verse_in_excerpt": share([r for r in retrieved if r["verse_in_excerpt"]], key),
        }
    attention, retrieval = "top:peak:lower-half", "top:retrieval"
    out["attention_vs_retrieval"] = {
        "both_right": sum(1 for r in retrieved if r[attention] and r[retrieval]),
        "only_attention": sum(1 for r in retrieved if r[attention] and not r[retrieval]),
        "only_retrieval": sum(1 for r in retrieved if r[retrieval] and not r[attention]),
        "neither": sum(1 for r in retrieved if not r[attention] and not r[retrieval]),
    }
    seconds = [r["citation_seconds"] for r in rows if r.get("citation_seconds") is not None]
    if seconds:
        out["citation_seconds"] = {"median": round(statistics.median(seconds), 3), "max": round(max(seconds), 3)}
    out["prompt_tokens"] = {"median": statistics.median(r["prompt_tokens"] for r in rows)} if rows else {}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(RESULTS / "passage-sources.json"))
    parser.add_argument("--answers", help="a benchmarks.focus .jsonl: score its passages-arm answers instead of asking")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--excerpt-words", type=int, default=None, help="default: the app's")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from app.focus import DEFAULT_EXCERPT_WORDS
    from benchmarks.book_questions import FACTS
    from benchmarks.focus import BOOK, correct, locate_verse
    from homer.answering.focus import PassageConversation, excerpt
    from homer.answering.passage_citations import cite_passages, last_turn_prompt
    from homer.generation import GenerationSettings
    from homer.models import load_model
    from homer.text_encoding import encode_text
    from storage import passages as passage_index
    from storage.store import Store

    words = DEFAULT_EXCERPT_WORDS if args.excerpt_words is None else args.excerpt_words
    text = BOOK.read_text(encoding="utf-8")
    digest = hashlib.sha256(BOOK.read_bytes()).hexdigest()
    model, tokenizer = load_model()
    store = Store(tempfile.mkdtemp(prefix="sources-bench-"))
    passage_index.build(store.db, digest, text)
    every = passage_index.passages(store.db, digest)
    recorded = {}
    if args.answers:
        for line in Path(args.answers).read_text().splitlines():
            row = json.loads(line) if line.strip() else None
            if row and row.get("kind") == "fact" and row.get("arm") == "passages":
                recorded[row["question"]] = row["answer"]

    facts = FACTS[: args.limit] if args.limit else FACTS
    rows = []
    for question, ref, accepted in facts:
        offset = locate_verse(text, ref)
        evidence = next(p for p in every if p.start <= offset < p.end)
        verse = " ".join(text[offset : text.find("\n", offset)].split()[1:])  # the verse without its number
        found = passage_index.search(store.db, digest, question, args.k)
        texts = [excerpt(p.text, question, words) for p in found]
        conversation = PassageConversation(model, tokenizer)
        if question in recorded:
            answer = recorded[question]
            prompt_ids, read = conversation.prompt_ids(question, texts), texts
        else:
            settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
            answer = "".join(conversation.ask(question, texts, settings=settings))
            prompt_ids, read = last_turn_prompt(conversation, question, texts)
        cited = cite_passages(model, tokenizer, prompt_ids, answer, read, order=conversation.order)
        variants = variant_scores(model, prompt_ids, encode_text(tokenizer, answer), cited.spans)
        seqs = [p.seq for p in found[: len(read)]]
        rank = seqs.index(evidence.seq) + 1 if evidence.seq in seqs else None
        row = {
            "question": question,
            "verse": ref,
            "evidence_seq": evidence.seq,
            "retrieved": seqs,
            "evidence_rank": rank,
            "answer": answer,
            "right": correct(answer, accepted),
            "verse_in_excerpt": rank is not None and " ".join(verse.split()[:8]) in " ".join(read[rank - 1].split()),
            "prompt_tokens": len(prompt_ids),
            "citation_seconds": round(cited.seconds, 4),
            "scores": {name: [None if s is None else round(s, 4) for s in v] for name, v in variants.items()},
            "top:retrieval": rank == 1,
        }
        for name, v in variants.items():
            row[f"top:{name}"] = rank is not None and top_of(v) == rank - 1
        rows.append(row)
        print(
            f"{'R' if row['top:retrieval'] else '-'}{'A' if row['top:peak:lower-half'] else '-'} rank={rank} "
            f"{cited.seconds:5.2f}s {question[:50]!r} -> {answer[:50]!r} {variants['peak:lower-half']}",
            flush=True,
        )

    meta = {
        "benchmark": "passage-sources",
        "book": BOOK.name,
        "book_sha256": digest,
        "model": getattr(model, "homer_name", "embedded"),
        "k": args.k,
        "excerpt_words": words,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "answers": "recorded: " + Path(args.answers).name if args.answers else "asked",
        "default_statistic": "peak:lower-half",
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "pages_note": "a text file is one page: the passage is what is checked",
    }
    summary = summarise(rows, meta)
    summary["rows"] = rows
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
