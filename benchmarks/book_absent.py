"""Questions the book does not answer, asked of the book the two ways the app can: the stored
HOMER cache alone (the cache-only path) and the app's focused path (BM25 passages, the
not-found check of :mod:`homer.answering.grounding`, excerpts, a fresh window). Reported: the share of
answers that do not decline (the unsupported-answer rate) on each path.

The questions are HotpotQA questions of the RULER runner's evaluation slice (about films,
people and places, none in Genesis–Leviticus), drawn seeded.

    python -m benchmarks.book_absent --questions 30
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--output", default=str(RESULTS / "book-absent.json"))
    args = parser.parse_args(argv)

    from app import focus as focusing
    from app.answering import plan_turn
    from benchmarks.focus import BOOK, book_cache
    from benchmarks.ruler import HOTPOT_EVAL_FROM, declined, hotpot
    from homer.answering.focus import PassageConversation
    from homer.generation import Conversation, GenerationSettings
    from homer.models import load_model
    from homer.paths import homer_home
    from storage import passages as passage_index
    from storage.store import Store

    model, tokenizer = load_model()
    text = BOOK.read_text(encoding="utf-8")
    cache, _ = book_cache(model, tokenizer, homer_home() / "benchmarks" / "focus-book.safetensors", text)
    store = Store(tempfile.mkdtemp(prefix="book-absent-"))
    doc = "b" * 64
    passage_index.build(store.db, doc, text)
    pool = hotpot()[HOTPOT_EVAL_FROM:]
    questions = [q for q, *_ in random.Random("book-absent").sample(pool, args.questions)]
    settings = GenerationSettings(max_new_tokens=32)
    focus = focusing.focus_mode("passages")
    rows = []
    for question in questions:
        cached = "".join(Conversation(cache, model, tokenizer).ask(question, settings=settings))
        turn = plan_turn(store, doc, question, focus)
        focused = (
            focusing.NOT_FOUND
            if turn.not_found
            else "".join(PassageConversation(model, tokenizer).ask(question, turn.texts, settings=settings))
        )
        rows.append(
            {
                "question": question,
                "cache_answer": cached,
                "cache_declined": declined(cached),
                "focused_answer": focused,
                "focused_declined": declined(focused),
                "coverage": round(turn.coverage or 0.0, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    n = len(rows)
    out = {
        "benchmark": "book-absent",
        "book": BOOK.name,
        "questions": n,
        "cache_unsupported_rate": round(100 * sum(not r["cache_declined"] for r in rows) / n, 1),
        "focused_unsupported_rate": round(100 * sum(not r["focused_declined"] for r in rows) / n, 1),
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
