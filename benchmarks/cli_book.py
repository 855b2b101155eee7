"""The book set through the command line, as a terminal user meets it: ``homer ask BOOK q1 q2 …``
in a fresh HOMER home (one process: the book is read into the store once, each question is
answered through the app's answer pipeline, :mod:`homer.answering`), graded as
:mod:`benchmarks.focus` grades the app's arms (an accepted string in the answer text; the
sources printed under it are not graded).

    python -m benchmarks.cli_book                 # the 56 factual questions (passages: no build needed)
    python -m benchmarks.cli_book --limit 8 --output /tmp/cli-smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
RESULTS = Path(__file__).parent / "results"


def answers(stdout: str, questions: list[str]) -> list[str]:
    """Each question's answer text from ``homer ask``'s output (the sources block left out)."""
    out = []
    for i, question in enumerate(questions):
        start = stdout.index(f"> {question}\n") + len(question) + 3
        end = stdout.find(f"> {questions[i + 1]}\n", start) if i + 1 < len(questions) else len(stdout)
        out.append(re.split(r"\n\nSources:", stdout[start:end], maxsplit=1)[0].strip())
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.book_questions import FACTS
    from benchmarks.focus import correct

    parser = argparse.ArgumentParser(description="The book set through `homer ask`.")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--output", type=Path, default=RESULTS / "cli-book.json")
    args = parser.parse_args(argv)
    facts = FACTS[: args.limit] if args.limit else FACTS
    questions = [q for q, _, _ in facts]
    with tempfile.TemporaryDirectory(prefix="homer-cli-book-") as home:
        env = {**os.environ, "HOMER_HOME": home, "HF_HUB_OFFLINE": "1"}  # fresh: the model is converted first
        started = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "app",
                "ask",
                str(BOOK),
                *questions,
                "--model",
                args.model,
                "--max-new-tokens",
                str(args.max_new_tokens),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=6 * 3600,
        )
        seconds = time.perf_counter() - started
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        return run.returncode
    texts = answers(run.stdout, questions)
    strategies = re.findall(r"^\[(\S+) · first token ([0-9.]+) s", run.stderr, re.M)
    rows = [
        {"question": q, "answer": a, "right": correct(a, accepted), "strategy": s[0], "ttft_s": float(s[1])}
        for (q, _, accepted), a, s in zip(facts, texts, strategies)
    ]
    right = sum(r["right"] for r in rows)
    ttfts = sorted(r["ttft_s"] for r in rows)
    result = {
        "benchmark": "cli-book",
        "book": BOOK.name,
        "door": "homer ask BOOK q1 … qN (one process)",
        "questions": len(rows),
        "right": right,
        "accuracy": round(right / len(rows), 4),
        "median_time_to_first_token_s": ttfts[len(ttfts) // 2],
        "seconds": round(seconds, 1),
        "max_new_tokens": args.max_new_tokens,
        "load_average_end": round(os.getloadavg()[0], 2),
        "app_figure": "benchmarks/results/focus-book-best-last.json: passages 21/56",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
