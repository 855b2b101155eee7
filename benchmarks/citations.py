"""Page citations on a document with known facts on known pages.

A multi-page PDF (a real text layer) of essay prose, with one distinctive fact planted on
each of several distinct pages ("The lighthouse keeper's cat is named Biscuit."). The PDF
is read the way the app reads an upload (text + each page's start offset), its HOMER cache
is built question-agnostically (document first, the app's protocol), saved and loaded, then
each fact's question is asked in a fresh conversation and the answer's citations are
computed from the stored cache (:mod:`homer.answering.citations`: the attention of the queries that
produced the answer, mapped to pages). A citation is right when the top cited page is the
fact's page. Also recorded: whether the answer holds the fact, how much of the fact's
sentence the cache kept, the cost of each citation, and the accuracy with other layer
ranges, summed instead of peak attention, and with the question's queries included. The
statistic and layers were chosen on the document of seed 0 (``development``); the other
seeds are held out (``held_out``).

    python -m benchmarks.citations                     # 3 documents × 16 facts, ~16k tokens each
    python -m benchmarks.citations --pages 8 --facts 6 --seeds 0   # a quick check
    python -m benchmarks.citations --pages 16 --page-lines 11 --output benchmarks/results/citations-in-window.json
                                                       # ~3.6k tokens: nothing pruned, the mechanism alone
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import tempfile
import textwrap
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DEV_SEED = (
    0  # the document the statistic and layers of homer.answering.citations were chosen on; the others are held out
)

# (fact sentence, question, the word the answer must hold)
FACTS = [
    ("The lighthouse keeper's cat is named Biscuit.", "What is the name of the lighthouse keeper's cat?", "Biscuit"),
    ("The treasury holds 4120 gold coins.", "How many gold coins does the treasury hold?", "4120"),
    ("The mayor of Port Avalon is a woman called Henrietta Vale.", "Who is the mayor of Port Avalon?", "Henrietta"),
    (
        "The secret password to the city archive is marmalade.",
        "What is the secret password to the city archive?",
        "marmalade",
    ),
    (
        "The blue train to Kingsbridge leaves at 7:45 every morning.",
        "When does the blue train to Kingsbridge leave?",
        "7:45",
    ),
    (
        "Professor Okafor's favourite instrument is the bassoon.",
        "What is Professor Okafor's favourite instrument?",
        "bassoon",
    ),
    ("The bridge over the Silver River is 318 metres long.", "How long is the bridge over the Silver River?", "318"),
    ("The expedition's ship was called the Northern Wren.", "What was the expedition's ship called?", "Wren"),
    (
        "Grandmother Rosa's soup recipe uses exactly nine cloves of garlic.",
        "How many cloves of garlic does Grandmother Rosa's soup use?",
        "nine",
    ),
    (
        "The museum's oldest painting shows a red fox sleeping in the snow.",
        "What does the museum's oldest painting show?",
        "fox",
    ),
    (
        "The village of Elmsworth celebrates the Lantern Festival every October.",
        "In which month does Elmsworth celebrate the Lantern Festival?",
        "October",
    ),
    (
        "The chess champion Ivan Petrov won his first title at the age of 14.",
        "At what age did Ivan Petrov win his first chess title?",
        "14",
    ),
    (
        "The tallest tree in the botanical garden is a copper beech.",
        "What is the tallest tree in the botanical garden?",
        "beech",
    ),
    (
        "The rocket engine was tested at the Redstone range in the desert.",
        "Where was the rocket engine tested?",
        "Redstone",
    ),
    (
        "The baker on Mill Street is famous for his lemon tarts.",
        "What is the baker on Mill Street famous for?",
        "lemon",
    ),
    ("The pilot's call sign is Falcon Seven.", "What is the pilot's call sign?", "Falcon"),
]

LINE_CHARS, PAGE_LINES = 90, 40


def ascii_prose(text: str) -> str:
    text = text.replace("\u2014", " - ").replace("\u2013", "-").replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    text = text.encode("ascii", "ignore").decode()
    text = re.sub(r"([.?!])(?=[A-Z])", r"\1 ", text)  # the essay set glues some sentences together
    return re.sub(r"\s+", " ", text).strip()


def wrapped(text: str) -> str:
    """Lines of at most LINE_CHARS characters (what fits across a page)."""
    return "\n".join(textwrap.wrap(text, LINE_CHARS))


def fact_document(pages: int, facts: int, seed: int, page_lines: int = PAGE_LINES) -> tuple[bytes, list[dict]]:
    """A PDF of ``pages`` pages of essay prose with ``facts`` facts, each on its own page at a
    random sentence boundary. Returns (pdf bytes, [{fact, question, answer, page}])."""
    from benchmarks.evaluation.haystack import essay_text
    from benchmarks.evaluation.pdf import text_pdf

    rng = random.Random(seed)
    prose = ascii_prose(essay_text()[:2_000_000])
    chosen = rng.sample(FACTS, facts)
    fact_pages = sorted(rng.sample(range(1, pages + 1), facts))
    rng.shuffle(fact_pages)
    planted = {page: fact for page, fact in zip(fact_pages, chosen)}
    start = rng.randrange(0, len(prose) // 2)
    start = prose.find(". ", start) + 2
    per_page = LINE_CHARS * page_lines
    texts, items = [], []
    for page in range(1, pages + 1):
        body = prose[start : start + per_page]
        cut = body.rfind(". ")
        body, start = body[: cut + 1], start + cut + 2
        if page in planted:
            sentence, question, answer = planted[page]
            ends = [m.end() for m in re.finditer(r"\. ", body[: int(len(body) * 0.9)])]
            at = rng.choice(ends) if ends else 0
            body = body[:at] + sentence + " " + body[at:]
            items.append({"fact": sentence, "question": question, "answer": answer, "page": page})
        texts.append(wrapped(body))
    return text_pdf(texts, font_size=10), items


def fact_pattern(sentence: str) -> str:
    """The sentence as the PDF's text layer gives it back: lines wrap anywhere, and the
    standard encoding turns ' into a right single quote."""
    words = [re.escape(word).replace("'", "['\u2019]") for word in sentence.split()]
    return r"\s+".join(words)


def fact_kept(cache, start: int, end: int) -> float:
    """Share of the fact's characters whose token the cache kept (by kept-token offsets)."""
    offsets = cache.char_offsets
    inside = offsets[(offsets >= start) & (offsets < end)]
    if len(inside) == 0:
        return 0.0
    kept = sorted(set(int(o) for o in inside))
    spans = kept + [end]
    return sum(spans[i + 1] - spans[i] for i in range(len(kept))) / (end - start) if kept[0] >= start else 0.0


def variant_top_pages(model, cache, page_starts, ids, answer_start, layer_sets) -> dict:
    """Top page under other layer ranges, statistics (peak / mean) and query sets (the
    answer's queries, or the question's and the answer's)."""
    from homer.answering.citations import attention_to_cache, rank_pages

    out = {}
    every = list(range(model.config.num_hidden_layers))
    for queries, start in (("answer", max(answer_start - 1, 0)), ("question+answer", 0)):
        for reduce in ("peak", "mean"):
            per_layer = attention_to_cache(model, cache, ids[:-1], start, every, per_layer=True, reduce=reduce)
            for label, layers in layer_sets.items():
                rows = per_layer[layers]
                scores = rows.amax(dim=0) if reduce == "peak" else rows.mean(dim=0)
                if reduce == "mean":  # a page's share of the attention: the sum over its tokens
                    pages, _ = _sum_pages(scores, cache, page_starts)
                else:
                    pages, _ = rank_pages(scores, cache, page_starts, top=1)
                out[f"{queries}|{reduce}|{label}"] = pages[0].page if pages else None
    return out


def _sum_pages(scores, cache, page_starts):
    from homer.answering.citations import PageCitation, pages_of_offsets

    document = (cache.sources >= 0) & (cache.char_offsets >= 0)
    pages = pages_of_offsets(cache.char_offsets, page_starts)[document]
    per_page = torch.zeros(int(pages.max()) + 1).index_add_(0, pages, scores.float()[document])
    best = int(per_page[1:].argmax()) + 1
    return [PageCitation(best, float(per_page[best]))], None


def run_document(
    model,
    tokenizer,
    pages: int,
    facts: int,
    seed: int,
    max_new_tokens: int,
    variants: bool,
    page_lines: int = PAGE_LINES,
) -> dict:
    from homer import Conversation, HomerCache, build_document_cache
    from homer.answering.citations import cite, turn_ids
    from homer.prompting import DocumentPrompt
    from homer.reading.sources import read_pdf

    data, items = fact_document(pages, facts, seed, page_lines)
    source = read_pdf(data)
    for item in items:  # the planted fact is where we put it, in the text the app stores
        found = re.search(fact_pattern(item["fact"]), source.text)
        assert found and source.page_of(found.start()) == item["page"], item
        item["offset"], item["end"] = found.start(), found.end()
    tokens = len(tokenizer(source.text, add_special_tokens=False).input_ids)
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, source.text)
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:  # the app's path: stored, then loaded
        cache = HomerCache.load(cache.save(Path(tmp) / "doc.homer.safetensors"), model=model)
    prompt = DocumentPrompt.from_json(cache.metadata["prompt"])
    n = model.config.num_hidden_layers
    layer_sets = {
        "all": list(range(n)),
        "lower half": list(range(n // 2)),
        "upper half": list(range(n // 2, n)),
        "middle half": list(range(n // 4, 3 * n // 4)),
        "top quarter": list(range(3 * n // 4, n)),
    }
    rows = []
    for item in items:
        conversation = Conversation(cache, model, tokenizer)
        t0 = time.perf_counter()
        answer = "".join(conversation.ask(item["question"], max_new_tokens=max_new_tokens))
        answer_s = time.perf_counter() - t0
        ids, answer_start = turn_ids(tokenizer, prompt, [], item["question"], answer)
        before = cache.keys.clone() if len(rows) == 0 else None
        cpu = time.process_time()
        citations = cite(model, cache, source.page_starts, ids, answer_start)
        cpu = time.process_time() - cpu
        if before is not None:
            assert torch.equal(before, cache.keys), "citing must not change the stored cache"
        row = {
            "page": item["page"],
            "question": item["question"],
            "answer": answer.strip(),
            "answer_holds_fact": item["answer"].lower() in answer.lower(),
            "fact_kept": round(fact_kept(cache, item["offset"], item["end"]), 3),
            "cited": [c.page for c in citations.pages],
            "scores": [round(c.score, 4) for c in citations.pages],
            "top_page_right": citations.top_page == item["page"],
            "right_page_cited": item["page"] in [c.page for c in citations.pages],
            "fact_page_score": round(citations.page_scores.get(item["page"], 0.0), 4),
            "best_page_score": round(max(citations.page_scores.values(), default=0.0), 4),
            "answer_tokens": citations.query_tokens,
            "citation_s": round(citations.seconds, 3),
            "citation_cpu_s": round(cpu, 3),
            "answer_s": round(answer_s, 3),
        }
        if variants:
            # the question's text is the first thing after the cache (the suffix ends before it)
            row["variants"] = variant_top_pages(model, cache, source.page_starts, ids, answer_start, layer_sets)
        rows.append(row)
        print(
            f"  p.{item['page']:>2} cited {row['cited']} {'ok ' if row['top_page_right'] else 'MISS'} "
            f"kept {row['fact_kept']:.2f} answer {row['answer'][:60]!r} ({row['citation_s']:.2f} s)",
            flush=True,
        )
    right = sum(r["top_page_right"] for r in rows)
    summary = {
        "seed": seed,
        "pages": pages,
        "document_tokens": tokens,
        "cache_tokens": len(cache),
        "window": int(model.config.max_position_embeddings),
        "build_s": round(build_s, 2),
        "facts": len(rows),
        "top_page_right": right,
        "accuracy": round(right / len(rows), 3),
        "answers_holding_fact": sum(r["answer_holds_fact"] for r in rows),
        "rows": rows,
    }
    if variants:
        summary["variants"] = {
            key: sum(r["variants"][key] == r["page"] for r in rows) / len(rows) for key in rows[0]["variants"]
        }
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument(
        "--page-lines",
        type=int,
        default=PAGE_LINES,
        help=f"lines of {LINE_CHARS} characters per page (11 keeps 16 pages inside one cache)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-variants", action="store_true", help="skip the layer-range / query-set comparison")
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--output", type=Path, default=RESULTS / "citations.json")
    args = parser.parse_args(argv)
    from homer.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    documents = []
    for seed in args.seeds:
        print(f"document seed {seed}: {args.pages} pages, {args.facts} facts", flush=True)
        documents.append(
            run_document(
                model,
                tokenizer,
                args.pages,
                args.facts,
                seed,
                args.max_new_tokens,
                not args.no_variants,
                args.page_lines,
            )
        )
        print(f"  top page right: {documents[-1]['top_page_right']}/{documents[-1]['facts']}", flush=True)
        result = summarize(model, documents)  # written after every document: a stopped run still counts
        result["run"] = {
            "pages": args.pages,
            "page_lines": args.page_lines,
            "facts": args.facts,
            "seeds": args.seeds,
            "max_new_tokens": args.max_new_tokens,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "documents"}, indent=2))
    return result


def summarize(model, documents: list[dict]) -> dict:
    from homer.answering.citations import default_layers

    rows = [r for d in documents for r in d["rows"]]
    right = sum(r["top_page_right"] for r in rows)
    costs = sorted(r["citation_s"] for r in rows)
    cpu_costs = sorted(r["citation_cpu_s"] for r in rows)
    result = {
        "model": getattr(model, "homer_name", None),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "layers_read": default_layers(model.config.num_hidden_layers),
        "answers": len(rows),
        "top_page_right": right,
        "accuracy": round(right / len(rows), 3),
        "held_out": _share([r for d in documents if d["seed"] != DEV_SEED for r in d["rows"]]),
        "development": _share([r for d in documents if d["seed"] == DEV_SEED for r in d["rows"]]),
        "right_page_among_cited": round(sum(r["right_page_cited"] for r in rows) / len(rows), 3),
        "mean_pages_cited": round(sum(len(r["cited"]) for r in rows) / len(rows), 2),
        "no_page_cited": sum(not r["cited"] for r in rows),
        "accuracy_when_fact_kept": _share([r for r in rows if r["fact_kept"] >= 0.5]),
        "accuracy_when_fact_pruned": _share([r for r in rows if r["fact_kept"] < 0.5]),
        "accuracy_when_answer_right": _share([r for r in rows if r["answer_holds_fact"]]),
        "accuracy_when_answer_wrong": _share([r for r in rows if not r["answer_holds_fact"]]),
        "answers_holding_fact": sum(r["answer_holds_fact"] for r in rows),
        "mean_answer_tokens": round(sum(r["answer_tokens"] for r in rows) / len(rows), 1),
        "citation_seconds": {"median": costs[len(costs) // 2], "max": costs[-1]},
        "citation_cpu_seconds": {"median": cpu_costs[len(cpu_costs) // 2], "max": cpu_costs[-1]},
        "documents": documents,
    }
    if "variants" in documents[0]:
        result["variants"] = {
            key: round(sum(d["variants"][key] * d["facts"] for d in documents) / len(rows), 3)
            for key in documents[0]["variants"]
        }
    return result


def _share(rows: list[dict]) -> dict:
    return {"n": len(rows), "accuracy": round(sum(r["top_page_right"] for r in rows) / len(rows), 3) if rows else None}


if __name__ == "__main__":
    main()
