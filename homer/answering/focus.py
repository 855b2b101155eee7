"""Focused answers: passages the question points to, read again at full resolution.

A HOMER cache keeps about M of a document's tokens, chosen before any question is known,
so the sentence a specific question needs is usually pruned away in a book-length text.
REFORM (arXiv 2506.01215, by HOMER's first author) keeps the compressed cache for the
document's gist and, at question time, gathers the few passages the question selects and
**recomputes them at full resolution** after it — the fact is then in the window verbatim,
while the cache still carries the whole document. This module does that step with passages
given as plain strings (retrieval is the caller's: the app uses the store's BM25 index).

Strategies are chosen by name, so an ablation is a setting (:data:`STRATEGIES`):

* ``"cache"`` — the stored cache, then the question (no retrieval);
* ``"passages"`` — plain retrieval-augmented generation: the passages as the document in a
  fresh window, then the question; no cache (:class:`PassageConversation`);
* ``"cache+passages"`` — the stored cache, then one turn holding the passages and the
  question (:meth:`FocusStrategy.turn_text`), appended by :class:`~homer.generation.Conversation`
  in **one batched prefill** (every new token of the turn in one forward, never token by
  token); the stored cache is only read.

Passage text is document text: it reaches the model through the conversation's marking
(:func:`homer.text_encoding.mark`), so a control-token string in a passage stays text.
In a conversation, a focused turn's passages are part of that turn's text: later turns see
them, and when the window is full the oldest turns go first, as for any turn. The passages
of one turn are cut to what the window leaves after the cache (:func:`fit_passages`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ..config import model_window
from ..generation import (
    ConversationFullError,
    DecodeState,
    GenerationSettings,
    PreallocatedCache,
    eos_token_ids,
    generate_tokens,
)
from ..prompting import DocumentPrompt, default_prompt
from ..text_encoding import encode_marked, encode_text, mark

DEFAULT_PASSAGES = 3
# The order the model reads the retrieved passages in. "best-first" is the search's order;
# "best-last" puts the best passage next to the question, where a small model's attention
# (recency) is strongest ("Lost in the Middle", arXiv 2307.03172: accuracy is highest with
# the evidence at the start or the end of the context). Chosen on the RULER dev slice at 32k
# (README): 90.0 against 85.5 summed over its four answerable tasks (200 questions; the
# needle +14 points, QA-1 -6, multi-value +1, QA-2 level); on the book set 21/56 against 19/56.
PASSAGE_ORDERS = ("best-first", "best-last")
DEFAULT_PASSAGE_ORDER = "best-last"
INTRO = "Excerpts of the document that may answer the question:\n\n"


@dataclass(frozen=True)
class FocusStrategy:
    """How a question is answered: from the stored cache, from retrieved passages, or both."""

    name: str
    uses_cache: bool
    uses_passages: bool
    description: str = ""

    def turn_text(self, question: str, passages: Sequence[str] = (), order: str = DEFAULT_PASSAGE_ORDER) -> str:
        """The user's text of a turn appended after the cache: the question, preceded by the
        passages (given best first) in reading ``order`` when this strategy uses them."""
        if not (self.uses_passages and passages):
            return question
        return INTRO + passages_block(reading_order(passages, order)) + "Question: " + question


STRATEGIES = {
    s.name: s
    for s in (
        FocusStrategy("cache", True, False, "the stored cache, then the question"),
        FocusStrategy("passages", False, True, "the retrieved passages and the question, without the cache"),
        FocusStrategy("cache+passages", True, True, "the stored cache, then the retrieved passages and the question"),
    )
}
FOCUS_CHOICES = tuple(STRATEGIES)


# Questions about the document as a whole ("what is this book about", "how does it end",
# "summarise …"): no passage holds their answer, so they go to the cache (the document's gist).
_WHOLE = re.compile(
    r"\b(this|whole|entire)\s+(book|document|text|volume|story|work|pdf|paper|article|report|file)\b"
    r"|\bhow\s+does\s+(it|the\s+\w+)\s+(begin|start|open|end|finish|conclude)\b"
    r"|\bsummar(y|ies|ise|ize|ising|izing)\b|\boverview\b|\bgist\b"
    r"|\bmain\s+(people|persons|characters|ideas?|themes?|points?|topics?|events?|arguments?|parts?)\b",
    re.IGNORECASE,
)


def whole_document(question: str) -> bool:
    """Whether ``question`` asks about the document as a whole (then the cache answers it)."""
    return bool(_WHOLE.search(question or ""))


def route(question: str, specific: str = "cache+passages") -> str:
    """The strategy ``"auto"`` uses for ``question``: the cache for a question about the
    whole document, ``specific`` for any other."""
    return "cache" if whole_document(question) else specific


def strategy(name: str) -> FocusStrategy:
    """The strategy called ``name``; ValueError (one line) for an unknown one."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"focus must be one of {', '.join(FOCUS_CHOICES)}, not {name!r}") from None


def reading_order(passages: Sequence[str], order: str = DEFAULT_PASSAGE_ORDER) -> list[str]:
    """``passages`` (best first, as retrieved) in the order the model reads them
    (:data:`PASSAGE_ORDERS`); ValueError (one line) for an unknown order."""
    if order == "best-first":
        return list(passages)
    if order == "best-last":
        return list(reversed(passages))
    raise ValueError(f"passage order must be one of {', '.join(PASSAGE_ORDERS)}, not {order!r}")


def passages_block(passages: Sequence[str]) -> str:
    """The passages as numbered paragraphs, each ending with a blank line."""
    return "".join(f"[{i}] {' '.join(text.split())}\n\n" for i, text in enumerate(passages, start=1))


def excerpt(text: str, question: str, words: int) -> str:
    """The ``words`` consecutive words of ``text`` that hold the most of ``question``'s
    content words (each distinct word once; the middle one of tied windows), widened to
    the sentence ends around it when that stays within a third more words; ``text``
    itself when it is no longer. Fewer tokens to prefill is a shorter time to the first
    token on a CPU, and a small model is distracted less by the rest of the passage."""
    span = excerpt_span(text, question, words)
    return text if span is None else " ".join(text[span[0] : span[1]].split())


def excerpt_span(text: str, question: str, words: int) -> tuple[int, int] | None:
    """Where :func:`excerpt` reads in ``text``: the character span ``[start, end)`` of its
    words, or None when it reads the whole text (``words`` ≤ 0 or no more words than that)."""
    from .grounding import content_words

    found = list(re.finditer(r"\S+", text))
    tokens = [m.group() for m in found]
    if words <= 0 or len(tokens) <= words:
        return None
    wanted = content_words(question)
    keys = [content_words(t) & wanted for t in tokens]  # "vacuous-creek" holds two words, "Abram's" one
    hits = [len(set().union(*keys[start : start + words])) for start in range(0, len(tokens) - words + 1)]
    best = max(hits)
    tied = [start for start, h in enumerate(hits) if h == best]
    lo = tied[len(tied) // 2]  # the middle of the tied windows: the matched words centred, context both sides
    hi = lo + words
    slack = words // 3
    ends = (".", "!", "?")
    for i in range(lo, max(lo - slack, 0) - 1, -1):  # back to a sentence start
        if i == 0 or tokens[i - 1].endswith(ends):
            lo = i
            break
    for i in range(hi, min(hi + slack, len(tokens)) + 1):  # on to a sentence end
        if i == len(tokens) or tokens[i - 1].endswith(ends):
            hi = i
            break
    return found[lo].start(), found[hi - 1].end()


def fit_passages(tokenizer, passages: Sequence[str], room: int, question: str = "") -> list[str]:
    """The leading passages (best first, as given) whose turn fits in ``room`` tokens next to
    ``question``; counted with the document encoding, plus the framing."""
    frame = len(encode_text(tokenizer, INTRO + "Question: " + question)) + 4
    kept, used = [], frame
    for text in passages:
        cost = len(encode_text(tokenizer, passages_block([text]))) + 2
        if used + cost > room:
            break
        kept.append(text)
        used += cost
    return kept


def cache_room(cache, model, max_new_tokens: int) -> int:
    """Tokens a turn may take after ``cache`` with an answer of ``max_new_tokens``: the window
    minus where the cache ends (the conversation's room)."""
    return model_window(model.config) - cache.next_position - max_new_tokens


def stream_text(
    model, tokenizer, state: DecodeState, ids: list[int], settings: GenerationSettings, eos_ids: set[int]
) -> Iterator[tuple[str, list[int], bool]]:
    """Feed ``ids`` in one batched prefill and decode: ``(new text, answer ids so far, ended)``
    per step where the text grew, then one last item with empty text."""
    answer_ids, shown, ended = [], "", False
    for token in generate_tokens(model, state, ids, settings, eos_ids):
        if token in eos_ids:
            ended = True
            break
        answer_ids.append(token)
        text = tokenizer.decode(answer_ids, skip_special_tokens=True)
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            yield text[len(shown) :], answer_ids, False
            shown = text
    answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
    if len(answer) > len(shown):
        yield answer[len(shown) :], answer_ids, False
    yield "", answer_ids, ended


class PassageConversation:
    """Plain retrieval-augmented chat (the ``"passages"`` strategy): each question is answered
    in a fresh window holding the earlier turns and, as the document, that question's
    passages — no HOMER cache. The whole prompt is one batched prefill. When it would not fit
    the window with the answer, the oldest turns go first, then the last passages."""

    def __init__(self, model, tokenizer, prompt: DocumentPrompt | None = None, order: str = DEFAULT_PASSAGE_ORDER):
        self.model, self.tokenizer = model, tokenizer
        reading_order((), order)  # refuse an unknown order here, not at the first question
        self.order = order
        self.prompt = prompt or default_prompt(tokenizer)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.turns: list[tuple[str, str]] = []
        self.dropped_turns = 0
        self.state: DecodeState | None = None

    @property
    def stats(self) -> dict:
        return self.state.stats if self.state is not None else {}

    @property
    def window(self) -> int:
        return model_window(self.model.config)

    def prompt_ids(self, question: str, passages: Sequence[str], turns: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Ids of the whole prompt: the passages as the document (document text, marked), the
        earlier turns and the question (the user's and the model's text, marked)."""
        t = self.tokenizer
        text = self.prompt.render(
            t,
            [(mark(t, q), mark(t, a)) for q, a in turns],
            mark(t, question),
            document=mark(t, passages_block(reading_order(passages, self.order)).rstrip("\n")),
        )
        ids = encode_marked(t, text)
        if self.prompt.style == "completion" and t.bos_token_id is not None:
            ids = [t.bos_token_id] + ids
        return ids

    def _fit(self, question: str, passages: list[str], max_new_tokens: int) -> tuple[list[int], int]:
        turns = list(self.turns)
        ids = self.prompt_ids(question, passages, turns)
        while len(ids) + max_new_tokens > self.window and (turns or passages):
            if turns:
                turns.pop(0)
                self.dropped_turns += 1
            elif len(passages) > 1 or len(ids) >= self.window:
                passages.pop()
            else:
                break
            ids = self.prompt_ids(question, passages, turns)
        self.turns = turns
        room = self.window - len(ids)
        if room < 1:
            raise ConversationFullError(
                f"the question needs {-room + 1} more tokens than the model's window "
                f"of {self.window}; ask a shorter question"
            )
        return ids, min(max_new_tokens, room)

    def ask(self, question: str, passages: Sequence[str], settings: GenerationSettings | None = None) -> Iterator[str]:
        """Stream the answer to ``question`` read from ``passages`` as text pieces."""
        settings = settings or GenerationSettings()
        ids, room = self._fit(question, list(passages), settings.max_new_tokens)
        if room < settings.max_new_tokens:
            settings = replace(settings, max_new_tokens=room)
        dtype = next(self.model.parameters()).dtype
        self.state = DecodeState(
            kv=PreallocatedCache(self.model.config.num_hidden_layers, storage_dtype=dtype), position=0
        )
        self.state.stats["prompt_tokens"] = len(ids)
        answer_ids: list[int] = []
        for piece, answer_ids, _ in stream_text(self.model, self.tokenizer, self.state, ids, settings, self.eos_ids):
            if piece:
                yield piece
        self.turns.append((question, self.tokenizer.decode(answer_ids, skip_special_tokens=True)))
