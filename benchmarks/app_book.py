"""A whole book through the running app, as a user meets it: ``python app.py`` in a fresh
HOMER home (the embedded model is converted on this first start, offline), the book uploaded
through the API (``gradio_client``), the library polled until it is ready, then a question
and a follow-up.

Recorded: app start, upload → ready (the build, as the user waits for it), upload → first
answer, each question's time to first token as the app reports it, and build ÷ follow-up
time to first token (the bar: ≥ 100). The answers' text is saved too.

    python -m benchmarks.app_book                      # the sample book in assets/ (~129k tokens)
    python -m benchmarks.app_book --chars 8000 --output /tmp/smoke.json   # a slice, for a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
RESULTS = Path(__file__).parent / "results"
QUESTIONS = ["How old was Methuselah when he died?", "Who was his father?"]

sys.path.insert(0, str(ROOT / "tests"))
from app_helpers import app_log, running_app  # noqa: E402  (the app as a subprocess, shared with the tests)


def wait_ready(client, name: str, started: float, timeout: float, loads: list[float]) -> tuple[list, list]:
    """Poll the library until ``name`` is ready (or failed); returns its row and every state
    shown on the way with the seconds since ``started``. ``loads`` gets the machine's 1-minute
    load average at every poll (other processes slow a CPU build down)."""
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loads.append(os.getloadavg()[0])
        for row in client.predict(api_name="/library")["data"]:
            if row[0] != name:
                continue
            if not seen or seen[-1][1] != row[1]:
                seen.append((round(time.perf_counter() - started, 1), row[1]))
            if row[1].startswith(("ready", "failed")):
                return row, seen
        time.sleep(1.0)
    raise TimeoutError(f"{name} was not ready in {timeout} s; states seen: {seen[-5:]}")


def ask(client, document_id: str, question: str, max_new_tokens: int) -> dict:
    """One turn through ``/ask``, streamed: the app's turn stats plus what the client saw."""
    started = time.perf_counter()
    job = client.submit(document_id, question, 0.0, max_new_tokens, api_name="/ask")
    client_first = None
    for history, *_ in job:
        if client_first is None and history and history[-1]["role"] == "assistant" and _text(history[-1]):
            client_first = time.perf_counter() - started
    history, _, line, stats = job.result()
    return {
        "question": question,
        "answer": _text(history[-1]),
        "stats": stats,
        "turn_line": line,
        "client_first_token_s": round(client_first, 3) if client_first is not None else None,
        "client_seconds": round(time.perf_counter() - started, 3),
    }


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # gradio 6 message parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def store_rows(home: Path) -> dict:
    """The build as the store recorded it (after the app stopped)."""
    with sqlite3.connect(f"file:{home / 'store' / 'index.db'}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        job = db.execute("SELECT created, started, finished, attempts FROM jobs ORDER BY created LIMIT 1").fetchone()
        cache = db.execute("SELECT tokens, bytes, build_seconds, model_name FROM caches LIMIT 1").fetchone()
        doc = db.execute("SELECT token_count, chars, bytes FROM documents LIMIT 1").fetchone()
    out = {}
    if job is not None and job["started"] and job["finished"]:
        out["job_queued_to_done_s"] = round(job["finished"] - job["created"], 2)
        out["job_running_s"] = round(job["finished"] - job["started"], 2)
    if cache is not None:
        out.update(
            cache_tokens=cache["tokens"],
            cache_bytes=cache["bytes"],
            engine_build_s=round(cache["build_seconds"] or 0.0, 2),
            model_name=cache["model_name"],
        )
    if doc is not None:
        out.update(document_tokens=doc["token_count"], document_chars=doc["chars"], document_bytes=doc["bytes"])
    return out


def run(
    book: Path, model: str, questions: list[str], max_new_tokens: int, chars: int | None, timeout: float, work: Path
) -> dict:
    from gradio_client import Client, handle_file

    text = book.read_text(encoding="utf-8")
    if chars:
        text = text[:chars]
        book = work / f"{book.stem}-first-{chars}-chars.txt"
        book.write_text(text, encoding="utf-8")
    document_id = hashlib.sha256(book.read_bytes()).hexdigest()
    home = work / "home"  # fresh: nothing converted, nothing stored
    result: dict = {
        "book": book.name,
        "chars": len(text),
        "model": model,
        "questions": questions,
        "max_new_tokens": max_new_tokens,
    }
    launched = time.perf_counter()
    with running_app(home, model, timeout=timeout) as url:
        result["app_start_s"] = round(time.perf_counter() - launched, 2)
        print(f"app up in {result['app_start_s']} s at {url}", flush=True)
        client = Client(url, verbose=False)
        started = time.perf_counter()
        status, _ = client.predict([handle_file(str(book))], api_name="/upload")
        result["upload_status"] = status
        loads: list[float] = []
        row, states = wait_ready(client, book.name, started, timeout, loads)
        ready = time.perf_counter() - started
        result.update(
            upload_to_ready_s=round(ready, 2),
            library_row=row,
            states_seen=states,
            load_average_during_build={"mean": round(sum(loads) / len(loads), 2), "max": round(max(loads), 2)},
        )
        print(f"{book.name}: {row[1]} after {ready:.1f} s", flush=True)
        if not row[1].startswith("ready"):
            raise RuntimeError(f"the build failed: {row[1]}\n{app_log(home)[-3000:]}")
        turns = []
        for question in questions:
            turns.append(ask(client, document_id, question, max_new_tokens))
            print(json.dumps({k: turns[-1][k] for k in ("question", "answer")}), flush=True)
            if len(turns) == 1:
                result["upload_to_first_answer_s"] = round(time.perf_counter() - started, 2)
        result["turns"] = turns
    result.update(store_rows(home))
    first, follow = turns[0]["stats"], turns[-1]["stats"]
    result["first_question_ttft_s"] = first["time_to_first_token"]
    result["follow_up_ttft_s"] = follow["time_to_first_token"]
    result["build_over_follow_up_ttft"] = round(result["upload_to_ready_s"] / follow["time_to_first_token"], 1)
    result["build_over_first_question_ttft"] = round(result["upload_to_ready_s"] / first["time_to_first_token"], 1)
    result["bar"] = "build / follow-up time to first token >= 100"
    result["bar_met"] = result["build_over_follow_up_ttft"] >= 100
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": cpus}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A whole book through the running app: build and follow-up timings.")
    parser.add_argument("--book", type=Path, default=BOOK)
    parser.add_argument("--model", default="embedded", help="what the app is started with (--model)")
    parser.add_argument("--chars", type=int, default=None, help="only the first N characters (a quick check)")
    parser.add_argument(
        "--question", action="append", dest="questions", help=f"repeat for each turn (default: {QUESTIONS})"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the app to start and for the build")
    parser.add_argument("--output", type=Path, default=RESULTS / "app_book.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="homer-app-book-") as work:
        result = run(
            args.book,
            args.model,
            args.questions or QUESTIONS,
            args.max_new_tokens,
            args.chars,
            args.timeout,
            Path(work),
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {
        k: result.get(k)
        for k in (
            "document_tokens",
            "app_start_s",
            "upload_to_ready_s",
            "upload_to_first_answer_s",
            "first_question_ttft_s",
            "follow_up_ttft_s",
            "build_over_follow_up_ttft",
            "bar_met",
        )
    }
    print(json.dumps(summary, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
