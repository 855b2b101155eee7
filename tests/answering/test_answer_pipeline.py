"""One answer pipeline for every door: the notebook (homer.answering), the app's chat service,
the command line (`homer ask` / `homer chat` as subprocesses) — the same passages, the same
answers, sources as their own field."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.chat import ChatService
from app.ingest import add_to_store, ingest_bytes
from homer.answering import AnswerSettings, DocumentChat, DocumentText, PassageIndex, open_document
from homer.generation import GenerationSettings
from storage import Store
from storage import passages as stored_passages

ROOT = Path(__file__).resolve().parents[2]
FACT = "The harbour master of Quillon counted forty-two fishing boats on the Tuesday before the storm."
QUESTIONS = [
    "How many fishing boats did the harbour master of Quillon count?",
    "What happened before the storm?",
    "Which lantern was in the garden window?",
    "Where was the silver letter?",
]


def book(paragraphs: int = 40, fact_at: int = 27) -> str:
    import random

    rng = random.Random(7)
    words = "river stone market bread lantern window garden letter morning silver keeper tide".split()
    paras = [" ".join(rng.choice(words) for _ in range(70)) + "." for _ in range(paragraphs)]
    paras[fact_at] = FACT
    return "\n\n".join(paras)


def test_a_notebook_and_the_store_rank_the_same_passages(tmp_path):
    text = book()
    store = Store(tmp_path / "store")
    doc = add_to_store(store, ingest_bytes(text.encode(), "harbour.txt"))
    other = add_to_store(store, ingest_bytes(("fishing boats " * 400).encode(), "boats.txt"))  # moves global statistics
    for document_id in (doc["id"], other["id"]):
        stored_passages.build(store.db, document_id, store.document_text(document_id))
    memory = PassageIndex.of_text(text)
    for question in QUESTIONS:
        here = [(p.seq, p.start, p.end) for p in memory.search(question, 3)]
        there = [(p.seq, p.start, p.end) for p in stored_passages.search(store.db, doc["id"], question, 3)]
        assert here == there and here, question  # another document's words never move a ranking
    assert memory.search(FACT, 1)[0].text.startswith(FACT)


def test_the_chat_service_and_a_notebook_give_the_same_answer(tmp_path, tiny):
    model, tokenizer, fingerprint = tiny
    text = book()
    store = Store(tmp_path / "store")
    doc = add_to_store(store, ingest_bytes(text.encode(), "harbour.txt", tokenizer))
    service = ChatService(store, loader=lambda name: (model, tokenizer, fingerprint))
    settings = GenerationSettings(max_new_tokens=6)
    *_, (shown, stats) = service.ask("s", doc["id"], QUESTIONS[0], "tiny", settings)  # no cache yet: its passages
    notebook = open_document(text, model=model, tokenizer=tokenizer, name="harbour.txt")
    answer = notebook.ask(QUESTIONS[0], generation=settings)
    assert answer.done and answer.report.strategy == stats["focus"] == "passages"
    assert answer.text == stats["answer"] and str(answer) == shown  # the same turn, the same words
    assert [(s.start, s.end, s.quote) for s in answer.sources] == [
        (p["start"], p["end"], p["quote"]) for p in stats["source_places"]
    ]
    assert FACT[:40] in answer.sources[0].quote and "Sources:" not in answer.text
    report = answer.report.to_dict()
    assert report["passages"] and report["time_to_first_token"] > 0 and json.dumps(report)
    # a whole-document question before any cache: one line, no model run, no turn recorded
    whole = notebook.ask("What is this book about?")
    assert whole.report.strategy == "waiting" and whole.report.new_tokens == 0 and "not built yet" in whole.text
    assert len(notebook._chat.turns) == 1


def test_the_pipeline_refuses_what_it_cannot_do_in_one_line(tiny):
    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match="focus must be one of"):
        AnswerSettings(focus="everything")
    two = [DocumentText.of_text(book(), "a.txt"), DocumentText.of_text(book(fact_at=3), "b.txt")]
    chat = DocumentChat(model, tokenizer, two)
    with pytest.raises(ValueError, match="needs that one document"):
        chat.ask("What is this book about?")
    with pytest.raises(ValueError, match="type a question"):
        chat.ask("   ")
    answer = chat.ask(QUESTIONS[0], generation=GenerationSettings(max_new_tokens=3))
    assert (
        {s.document for s in answer.sources} <= {"a.txt", "b.txt"}
        and "- a.txt: “" in str(answer)
        or "- b.txt: “" in str(answer)
    )


def app_cli(*args, home: Path, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "app", *map(str, args)],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=ROOT,
        timeout=600,
        env={"HOMER_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.e2e
def test_homer_ask_a_file_a_stored_document_and_a_cache_file(model_dir, tmp_path):
    path = tmp_path / "harbour.txt"
    path.write_text(book(3, fact_at=1))  # short enough for the tiny model's merge tree
    home = tmp_path / "home"
    r = app_cli("ask", path, QUESTIONS[0], "--model", model_dir, "--max-new-tokens", "4", home=home)
    assert r.returncode == 0, r.stderr
    assert "read harbour.txt" in r.stderr and "> " + QUESTIONS[0] in r.stdout
    assert "\n\nSources:\n- “" in r.stdout and "forty-two fishing boats" in r.stdout and "[passages" in r.stderr
    # the same file again is found in the store by its content; a stored document by its name
    r = app_cli("ask", path, QUESTIONS[0], "--model", model_dir, "--max-new-tokens", "4", home=home)
    assert r.returncode == 0 and "read harbour.txt" not in r.stderr
    r = app_cli(
        "ask", "harbour.txt", "What is this book about?", "--model", model_dir, "--max-new-tokens", "4", home=home
    )
    assert r.returncode == 0, r.stderr
    assert "reading the whole document" in r.stderr and "[cache" in r.stderr  # read once, then the cache answers
    r = app_cli("ask", "no-such-document", "Hi?", "--model", model_dir, home=home)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    # a cache file: the engine's cache-only answer, said in one line
    cache = tmp_path / "harbour.homer.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "homer",
            "build",
            path,
            "-o",
            cache,
            "--model",
            model_dir,
            "--significance",
            "uncalibrated",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={"HOMER_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    r = app_cli("ask", cache, "Who?", "--model", model_dir, "--max-new-tokens", "3", home=home)
    assert r.returncode == 0 and "answering from the cache alone" in r.stderr


@pytest.mark.slow
def test_homer_chat_keeps_the_conversation(model_dir, tmp_path):
    path = tmp_path / "harbour.txt"
    path.write_text(book())
    r = app_cli(
        "chat",
        path,
        "--model",
        model_dir,
        "--max-new-tokens",
        "3",
        home=tmp_path / "home",
        stdin=f"{QUESTIONS[0]}\n{QUESTIONS[1]}\n\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Sources:") == 2 and r.stdout.count("> ") == 2


NOTEBOOK = textwrap.dedent("""
    import sys
    from homer import open_document
    from homer.generation import GenerationSettings
    book = open_document(sys.argv[1], model=sys.argv[2])
    answer = book.ask(sys.argv[3], generation=GenerationSettings(max_new_tokens=4))
    print(answer.report.strategy, len(answer.sources), answer.sources[0].label.replace(' ', ''), repr(answer.sources[0].quote[:30]))
""")


@pytest.mark.e2e
def test_a_notebook_script_opens_a_pdf_and_answers_from_its_pages(model_dir, tmp_path):
    from store_helpers import text_pdf

    pdf = tmp_path / "harbour.pdf"
    pdf.write_bytes(text_pdf(["The keeper slept. " * 30, FACT + " " + "The tide rose. " * 20]))
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    r = subprocess.run(
        [sys.executable, script, pdf, model_dir, QUESTIONS[0]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr
    strategy, count, label, quote = r.stdout.split(maxsplit=3)
    assert strategy == "passages" and int(count) >= 1 and label == "p.2" and "harbour master" in quote
