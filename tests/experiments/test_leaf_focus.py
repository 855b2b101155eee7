"""Deep read on a few leaves (homer.experiments.leaf_focus): the leaves of a document's HOMER layout, the
ones that hold given passages, and a question-aware build of only those, on a tiny model."""

from __future__ import annotations

import pytest

from homer import HomerConfig
from homer.experiments.leaf_focus import document_leaves, leaves_holding, read_leaves

FAST = HomerConfig(significance="uncalibrated", max_chunk_len=256, target_len=256)


def text(n: int = 12) -> str:
    return "".join(f"Line {i}: the keeper of lamp {i} watched ship {i * 7} come home.\n" for i in range(n))


def test_leaves_cover_the_document_in_order_as_the_build_slices_it(tiny):
    model, tokenizer, _ = tiny
    doc = text()
    spans = document_leaves(model, tokenizer, doc, FAST)
    assert len(spans) >= 4 and (len(spans) & (len(spans) - 1)) == 0  # N = 2^h leaves
    assert spans[0][0] == 0 and spans[-1][1] == len(doc)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no gaps
    sizes = [e - s for s, e in spans]  # the character tokenizer: equal token slices are equal text
    assert max(sizes[:-1]) - min(sizes[:-1]) <= 1
    with pytest.raises(ValueError, match="no text"):
        document_leaves(model, tokenizer, "", FAST)


def test_the_leaves_holding_passages_are_found_once_each_in_order():
    spans = [(0, 10), (10, 20), (20, 35), (35, 50)]
    assert leaves_holding(spans, [36, 0, 12, 19, 49]) == [0, 1, 3]
    assert leaves_holding(spans, [999]) == [3] and leaves_holding(spans, []) == []


def test_a_deep_read_of_some_leaves_holds_only_their_text_and_the_question(tiny):
    model, tokenizer, _ = tiny
    doc = text()
    spans = document_leaves(model, tokenizer, doc, FAST)
    chosen = [0, len(spans) - 1]
    cache = read_leaves(model, tokenizer, doc, spans, chosen, "Which ship came home?", FAST)
    assert cache.metadata["question"] == "Which ship came home?"
    read = doc[spans[0][0] : spans[0][1]] + "\n\n" + doc[spans[-1][0] : spans[-1][1]]
    assert int(cache.metadata["context_len"]) == len(read)  # one token per character here
    with pytest.raises(ValueError, match="no leaves"):
        read_leaves(model, tokenizer, doc, spans, [], "Which ship?", FAST)
