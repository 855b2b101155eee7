"""Which of a focused answer's passages the answer was read from, by the model's attention.

A focused answer (:class:`homer.answering.focus.PassageConversation`) is read from a few retrieved
passages laid out as the document of a fresh window, numbered ``[1] …``, ``[2] …``
(:func:`homer.answering.focus.passages_block`). This module scores each passage the way
:mod:`homer.answering.citations` scores a cache's pages: the prompt and the answer are run once more
through the model's own layers (one batched forward of prompt + answer, no generation;
:func:`homer.answering.citations.attention_to_prompt`), the queries that *produced* the answer tokens
are read, and a passage scores the strongest weight any of them put on one of its tokens, in
any head of the lower half of the stack (the same peak and layers as the page citations, for
the same reason: summed mass goes to sink tokens, a token the answer was read from gets one
sharp weight). The ``[i]`` labels are not part of a passage's span.

Token spans are found on the prompt's own ids, not by re-encoding pieces (a piece encoded
alone can tokenise differently at its edges): the prompt is decoded, each numbered block is
located in order, and its character range is mapped back to tokens by decoding prefixes
(binary search); a span is kept only when it decodes back to the passage's text. A passage
that cannot be located scores ``None`` and is ranked last.

On the book set (``benchmarks/passage_sources.py``) the top-attended passage was the
question's evidence passage less often than the first retrieved one (30 vs 39 of 47): it is
where the answer came from, which for a wrong answer is a wrong passage; the app therefore
lists sources in retrieval order unless asked otherwise (``HOMER_SOURCE_ORDER``).

Nothing is stored or changed: the conversation's working cache is not read, the forward
builds its own tensors, and the model's weights are only read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..layers import DecoderStack
from ..text_encoding import encode_text
from .citations import attention_to_prompt, default_layers
from .focus import DEFAULT_PASSAGE_ORDER, reading_order


@dataclass
class PassageScores:
    """One score per passage (None: not located in the prompt), what was read, what it cost."""

    scores: list[float | None] = field(default_factory=list)
    spans: list[tuple[int, int] | None] = field(default_factory=list)
    seconds: float = 0.0
    layers: list[int] = field(default_factory=list)
    query_tokens: int = 0

    def order(self) -> list[int]:
        """Passage indices best first; a tie, or an unlocated passage, keeps the given order
        (unlocated ones last)."""
        return sorted(range(len(self.scores)), key=lambda i: (self.scores[i] is None, -(self.scores[i] or 0.0), i))

    def to_dict(self) -> dict:
        return {
            "scores": [None if s is None else round(s, 4) for s in self.scores],
            "seconds": round(self.seconds, 4),
            "layers": self.layers,
            "query_tokens": self.query_tokens,
        }


def _flat(text: str) -> str:
    return " ".join(text.split())


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def passage_spans(
    tokenizer, prompt_ids: Sequence[int], passages: Sequence[str], order: str = DEFAULT_PASSAGE_ORDER
) -> list[tuple[int, int] | None]:
    """Token span ``[start, end)`` in ``prompt_ids`` of each passage's text (without its
    ``[i]`` label), as :func:`homer.answering.focus.passages_block` numbered them when the prompt read
    ``passages`` (best first) in ``order`` (:func:`homer.answering.focus.reading_order`); one span per
    passage, in the order given; None for a passage not found, or whose span does not decode
    back to its text."""
    shown = reading_order(range(len(passages)), order)  # the prompt's blocks, as indices into passages
    ids = list(prompt_ids)
    full = _decode(tokenizer, ids)
    lengths: dict[int, int] = {0: 0, len(ids): len(full)}

    def length(k: int) -> int:  # characters decoded from the first k tokens
        if k not in lengths:
            lengths[k] = len(_decode(tokenizer, ids[:k]))
        return lengths[k]

    def last_at_most(char: int) -> int:  # the largest k with length(k) <= char: the token holding char
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if length(mid) <= char:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def first_at_least(char: int) -> int:  # the smallest k with length(k) >= char
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if length(mid) >= char:
                hi = mid
            else:
                lo = mid + 1
        return lo

    spans: list[tuple[int, int] | None] = [None] * len(passages)
    cursor = 0
    for number, which in enumerate(shown, start=1):
        flat, label = _flat(passages[which]), f"[{number}] "
        found = full.find(label + flat, cursor) if flat else -1
        if found < 0:
            continue
        begin = found + len(label)
        end = begin + len(flat)
        cursor = end
        start, stop = last_at_most(begin), first_at_least(end)
        if stop > start and flat in _flat(_decode(tokenizer, ids[start:stop])):
            spans[which] = (start, stop)
    return spans


def score_passages(
    model,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    spans: Sequence[tuple[int, int] | None],
    layers: list[int] | None = None,
) -> PassageScores:
    """The peak attention of the answer-producing queries over each passage's span.

    ``prompt_ids``: the whole prompt the answer followed (it starts at position 0, a fresh
    window); ``answer_ids``: the answer's tokens. The queries read are the prompt's last
    token (it produced the first answer token) through the answer's second-to-last token;
    one forward of prompt + answer through the layers read (default: the lower half)."""
    started = time.perf_counter()
    prompt, answer = list(prompt_ids), list(answer_ids)
    stack = DecoderStack(model)
    chosen = default_layers(stack.num_layers) if layers is None else sorted(set(layers))
    if not prompt or not answer:
        return PassageScores([None] * len(spans), list(spans), time.perf_counter() - started, chosen, 0)
    ids = prompt + answer[:-1]  # the last answer token's query predicts what follows the answer: not read
    query_start = len(prompt) - 1
    peaks = attention_to_prompt(model, ids, query_start, chosen, stack=stack)
    scores = [None if span is None or span[1] <= span[0] else float(peaks[span[0] : span[1]].max()) for span in spans]
    return PassageScores(scores, list(spans), time.perf_counter() - started, chosen, len(ids) - query_start)


def cite_passages(
    model,
    tokenizer,
    prompt_ids: Sequence[int],
    answer: str | Sequence[int],
    passages: Sequence[str],
    layers: list[int] | None = None,
    order: str = DEFAULT_PASSAGE_ORDER,
) -> PassageScores:
    """:func:`score_passages` with the spans located (:func:`passage_spans`); ``answer`` as
    text is encoded as the model's text (control-token strings stay text), as
    :func:`homer.answering.citations.turn_ids` does."""
    started = time.perf_counter()
    answer_ids = encode_text(tokenizer, answer) if isinstance(answer, str) else list(answer)
    spans = passage_spans(tokenizer, prompt_ids, passages, order)
    result = score_passages(model, prompt_ids, answer_ids, spans, layers)
    result.seconds = time.perf_counter() - started
    return result


def last_turn_prompt(conversation, question: str, passages: Sequence[str]) -> tuple[list[int], list[str]] | None:
    """``(prompt ids, passages read)`` of a :class:`homer.answering.focus.PassageConversation`'s last
    turn, asked with ``question`` and ``passages``: rebuilt from its turns and the passages
    that fitted the window (the leading ones; the prompt's length is in its stats). None when
    no rebuild matches (the conversation was not asked that)."""
    expected = conversation.stats.get("prompt_tokens")
    if not conversation.turns or conversation.turns[-1][0] != question or expected is None:
        return None
    earlier = conversation.turns[:-1]
    kept = list(passages)
    while True:
        ids = conversation.prompt_ids(question, kept, earlier)
        if len(ids) == expected:
            return ids, kept
        if not kept:
            return None
        kept.pop()
