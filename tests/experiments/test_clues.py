"""MemoRAG-style clues drafted from the stored cache (homer.experiments.clues): a short greedy draft that
leaves the cache untouched, joined to the question as the retrieval query."""

from __future__ import annotations

import torch
from conftest import tiny_model, tiny_tokenizer

from homer import HomerConfig, build_document_cache
from homer.experiments.clues import CLUE_TOKENS, clue_query, draft_clue


def test_a_clue_is_a_short_greedy_draft_and_the_cache_is_only_read():
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    text = " ".join(f"Line {i}: the keeper lit the lamp at dusk." for i in range(60))
    cache = build_document_cache(model, tokenizer, text, HomerConfig(significance="uncalibrated"))
    before = cache.keys.clone(), cache.values.clone()
    first = draft_clue(cache, model, tokenizer, "When was the lamp lit?", max_new_tokens=8)
    again = draft_clue(cache, model, tokenizer, "When was the lamp lit?", max_new_tokens=8)
    assert isinstance(first, str) and first == again  # greedy: the same clue twice
    assert len(tokenizer(first, add_special_tokens=False).input_ids) <= 8 + 2
    assert torch.equal(cache.keys, before[0]) and torch.equal(cache.values, before[1])
    assert CLUE_TOKENS <= 32
    assert clue_query("When was it lit?", " at dusk ") == "When was it lit? at dusk"
    assert clue_query("Q?", "") == "Q?"
