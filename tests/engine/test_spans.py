"""Span-aware pruning: units from text offsets, whole units kept (extension of method §4)."""

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from homer import HomerConfig, build_document_cache
from homer.significance import keep_indices
from homer.spans import span_ids


def test_word_units_keep_numbers_and_subwords_together():
    text = "The magic number is 5887. Unbelievable!"
    # pieces as a sub-word tokenizer might cut them: " 58" + "87", "Un" + "believ" + "able"
    pieces = ["The", " magic", " number", " is", " 58", "87", ".", " Un", "believ", "able", "!"]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    ids = span_ids(text, offsets, "word")
    assert ids == sorted(ids)
    assert ids[4] == ids[5] and ids[7] == ids[8] == ids[9]
    assert len({ids[0], ids[1], ids[2], ids[3], ids[4], ids[6], ids[7]}) == 7
    assert span_ids(text, offsets, "token") == list(range(len(pieces)))


def test_sentence_units_split_at_sentence_ends():
    text = "One two. Three four! Five"
    offsets = [0, 3, 7, 8, 14, 19, 20]  # "One"," two","."," Three"," four","!"," Five"
    ids = span_ids(text, offsets, "sentence")
    assert ids[:3] == [ids[0]] * 3 and ids[3:6] == [ids[3]] * 3 and ids[6] > ids[3] > ids[0]


def test_keep_indices_takes_whole_units_best_first():
    # prefix 1, context 6 in units [a a b b b c], suffix 1; unit b holds the best token
    scores = torch.tensor([0.0, 1.0, 0.0, 0.5, 9.0, 0.1, 3.0, 0.0])
    units = torch.tensor([0, 0, 1, 1, 1, 2])
    keep = keep_indices(scores, prefix_len=1, suffix_len=1, target=6, units=units)
    assert keep.tolist() == [0, 3, 4, 5, 6, 7]  # unit b whole, then the best of unit c
    token_level = keep_indices(scores, prefix_len=1, suffix_len=1, target=6)
    assert token_level.tolist() == [0, 1, 3, 4, 6, 7]  # splits unit a and unit b


def test_span_pruning_keeps_words_whole():
    tokenizer = tiny_tokenizer()  # one token per character: every word is a multi-token unit
    text = " ".join(f"Item{i} costs {1000 + 37 * i} coins." for i in range(40))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    units = torch.tensor(span_ids(text, [s for s, _ in enc.offset_mapping], "word"))
    kept = {}
    for span in ("token", "word"):
        config = HomerConfig(max_chunk_len=256, significance="uncalibrated", span=span, cache_dtype="float32")
        cache = build_document_cache(tiny_model("llama", window=512), tokenizer, text, config)
        kept_units = units[cache.sources[cache.sources >= 0]]
        assert 0 < len(kept_units) < len(units)
        kept[span] = sum(int((units == u).sum() != (kept_units == u).sum()) for u in kept_units.unique().tolist())
    # whole units: at most one unit cut per pruning step (leaves + merges); token-level cuts many
    assert kept["word"] <= 2 * 4 - 1 < kept["token"]


def test_span_needs_a_known_unit_and_says_when_it_falls_back_to_tokens():
    with pytest.raises(ValueError, match="span"):
        HomerConfig(span="paragraph")
    from homer import build_cache

    with pytest.warns(UserWarning, match="context_units"):
        cache = build_cache(
            tiny_model("llama"), [1, 2], list(range(3, 120)) * 2, [5], HomerConfig(span="word", max_chunk_len=64)
        )
    assert cache.metadata["span_used"] == "token"
    assert HomerConfig.paper().span == "token" and HomerConfig.paper().query_rows == 1


def test_a_document_build_without_a_config_uses_the_default_word_units():
    tokenizer = tiny_tokenizer()
    text = " ".join(f"Item{i} costs {1000 + 37 * i} coins." for i in range(60))
    cache = build_document_cache(tiny_model("llama", window=1024), tokenizer, text)
    assert cache.metadata["span_used"] == "word"
