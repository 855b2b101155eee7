"""Upload → first answer through the running app's API, next to the build, in one run.

A document is askable as soon as its text and passage index are stored (:mod:`app.read_ahead`),
while its HOMER build runs on. This starts ``python app.py`` in a fresh HOMER home (the
embedded model), uploads each document through ``/upload`` (``gradio_client``), asks a
specific question through the API's ``/ask_document`` as soon as the app takes it (polling
every half second: before the text is stored the app answers "queued for reading … ask again"),
then waits for the build to end. Recorded per document: ``upload_to_first_answer_s`` (the
whole answer back at the client), ``upload_to_first_token_s`` (the call's start plus the
app's time to first token), the answer and its sources, the build (upload → ready), the time
to first token of questions asked during the build and the machine's load.

    python -m benchmarks.first_answer                        # a ~45k-token PDF and the ~129k-token book
    python -m benchmarks.first_answer --only pdf --output /tmp/first.json   # a quicker check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
RESULTS = Path(__file__).parent / "results"
QUESTION = "How old was Methuselah when he died?"
DURING = ["Who was the father of Methuselah?", "What did Jacob call the place where he dreamed of a ladder?"]
PDF_CHARS = 176_000  # about 45k tokens of the book, as a PDF of printed pages

sys.path.insert(0, str(ROOT / "tests"))
from app_helpers import running_app  # noqa: E402  (the app as a subprocess, shared with the tests)


def book_pdf(path: Path, chars: int = PDF_CHARS) -> Path:
    """The first ``chars`` characters of the book as a PDF with a real text layer."""
    from benchmarks.evaluation.pdf import text_pdf

    text = BOOK.read_text(encoding="utf-8")[:chars]
    lines = [line for paragraph in text.split("\n") for line in (textwrap.wrap(paragraph, 95) or [""])]
    pages = ["\n".join(lines[i : i + 58]) for i in range(0, len(lines), 58)]
    path.write_bytes(text_pdf(pages, font_size=9))
    return path


def ask_when_askable(client, name: str, question: str, started: float, timeout: float) -> dict:
    """Ask through ``/ask_document`` until the app takes the question; the first answer."""
    tries, last = 0, ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tries += 1
        began = time.perf_counter()
        try:
            result = client.predict(name, question, 48, api_name="/ask_document")
        except Exception as exc:  # noqa: BLE001 — "queued for reading … ask again": not stored yet
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.5)
            continue
        done = time.perf_counter()
        report = result.get("report") or {}
        return {
            "upload_to_first_answer_s": round(done - started, 2),
            "upload_to_first_token_s": round(began - started + float(report.get("time_to_first_token", 0.0)), 2),
            "tries": tries,
            "answer": result.get("answer"),
            "strategy": result.get("strategy"),
            "reading": result.get("reading"),
            "sources": result.get("sources_label"),
            "report": report,
        }
    raise TimeoutError(f"{name}: not askable in {timeout} s (last: {last})")


def wait_ready(client, name: str, started: float, timeout: float, loads: list[float]) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loads.append(os.getloadavg()[0])
        for row in client.predict(api_name="/library")["data"]:
            if row[0] == name and str(row[1]).startswith(("ready", "failed")):
                if str(row[1]).startswith("failed"):
                    raise RuntimeError(f"{name}: {row[1]}")
                return round(time.perf_counter() - started, 2)
        time.sleep(2.0)
    raise TimeoutError(f"{name} was not ready in {timeout} s")


def run(documents: list[Path], model: str, timeout: float, work: Path, questions_during: bool) -> dict:
    from gradio_client import Client, handle_file

    home = work / "home"
    result: dict = {"model": model, "question": QUESTION, "documents": []}
    launched = time.perf_counter()
    with running_app(home, model, timeout=timeout) as url:
        result["app_start_s"] = round(time.perf_counter() - launched, 2)
        client = Client(url, verbose=False)
        for path in documents:
            loads = [os.getloadavg()[0]]
            started = time.perf_counter()
            status, _ = client.predict([handle_file(str(path))], api_name="/upload")
            entry = {"document": path.name, "bytes": path.stat().st_size, "upload_status": status}
            entry.update(ask_when_askable(client, path.name, QUESTION, started, timeout))
            print(json.dumps({k: entry[k] for k in ("document", "upload_to_first_answer_s", "answer")}), flush=True)
            during = []
            if questions_during:
                for question in DURING:  # while the build runs: what a question costs it, and its wait
                    began = time.perf_counter()
                    answered = client.predict(path.name, question, 48, api_name="/ask_document")
                    during.append(
                        {
                            "question": question,
                            "client_seconds": round(time.perf_counter() - began, 2),
                            "strategy": answered.get("strategy"),
                            "reading": answered.get("reading"),
                            **{
                                k: v
                                for k, v in (answered.get("report") or {}).items()
                                if k in ("time_to_first_token", "seconds")
                            },
                        }
                    )
            entry["questions_during_build"] = during
            entry["upload_to_ready_s"] = wait_ready(client, path.name, started, timeout, loads)
            entry["load_average"] = {"mean": round(sum(loads) / len(loads), 2), "max": round(max(loads), 2)}
            print(json.dumps({k: entry[k] for k in ("document", "upload_to_ready_s", "load_average")}), flush=True)
            result["documents"].append(entry)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": cpus}
    result["bar"] = "upload -> first answer to a specific question <= 10 s on a 2-core CPU"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Upload -> first answer through the running app, next to the build.")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--only", choices=["pdf", "book"], default=None)
    parser.add_argument("--no-questions-during-build", action="store_true")
    parser.add_argument("--timeout", type=float, default=5400.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "first-answer.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="homer-first-answer-") as work:
        work = Path(work)
        documents = []
        if args.only in (None, "pdf"):
            documents.append(book_pdf(work / "genesis-45k.pdf"))
        if args.only in (None, "book"):
            documents.append(BOOK)
        result = run(documents, args.model, args.timeout, work, not args.no_questions_during_build)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"→ {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
