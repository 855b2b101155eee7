"""The sample book in assets/ (a whole public-domain book of over 100k tokens) and the
benchmark that takes it through the running app, on a slice."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"


@pytest.fixture(scope="module")
def embedded_dir():
    from homer.models import embedded_model_dir

    return embedded_model_dir()  # converted once per machine, then reused


def test_the_sample_book_is_a_whole_book_of_over_100k_tokens(embedded_dir):
    from transformers import AutoTokenizer

    text = BOOK.read_text(encoding="utf-8")
    assert text.startswith("THE HOLY BIBLE")
    for title in (
        "THE FIRST BOOK OF MOSES, CALLED GENESIS",
        "THE SECOND BOOK OF MOSES, CALLED EXODUS",
        "THE THIRD BOOK OF MOSES, CALLED LEVITICUS",
    ):
        assert f"\n{title}\n" in text
    assert "\n27 And all the days of Methuselah were nine hundred sixty and nine years: and he died.\n" in text
    assert text.count("\nChapter 1\n") == 3 and "\nChapter 50\n" in text and "\nChapter 51\n" not in text
    tokens = len(AutoTokenizer.from_pretrained(embedded_dir)(text, add_special_tokens=False).input_ids)
    assert tokens >= 100_000
    documented = re.search(r"([\d,]+) tokens", (ROOT / "assets" / "README.md").read_text())
    assert documented and int(documented.group(1).replace(",", "")) == tokens


@pytest.mark.skipif(shutil.which("bible") is None, reason="needs the bible program (Debian package bible-kjv)")
def test_the_book_is_regenerated_identically(tmp_path):
    out = tmp_path / "book.txt"
    run = subprocess.run(
        [sys.executable, str(ROOT / "assets" / "make_book.py"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == BOOK.read_bytes()


@pytest.mark.e2e
def test_the_app_book_benchmark_runs_end_to_end_on_a_slice(tmp_path, embedded_dir):
    output = tmp_path / "app_book.json"
    # questions the slice answers (the default ones are about chapter 5, past the slice: those the
    # app answers "not found" without running the model)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.app_book",
        "--chars",
        "6000",
        "--model",
        str(embedded_dir),
        "--max-new-tokens",
        "8",
        "--timeout",
        "300",
        "--output",
        str(output),
        "--question",
        "What did God call the light?",
        "--question",
        "And what did he call the darkness?",
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["library_row"][1] == "ready" and result["document_tokens"] > 1000
    assert 0 < result["upload_to_ready_s"] < result["upload_to_first_answer_s"]
    first, follow = (turn["stats"] for turn in result["turns"])
    assert first["cache_source"] == "disk" and follow["cache_source"] == "memory" and follow["turn"] == 2
    focused = sum(p["end"] - p["start"] for p in follow.get("passages", []))  # characters: at least their tokens
    # the book was not read again: the turn fed its passages, the earlier turn and the question (a focused
    # follow-up answers in a fresh window), a small fraction of the document
    assert follow["appended_tokens"] < result["document_tokens"] / 10 + focused
    assert result["follow_up_ttft_s"] == follow["time_to_first_token"] > 0
    assert result["build_over_follow_up_ttft"] > 1 and all(turn["answer"] for turn in result["turns"])
