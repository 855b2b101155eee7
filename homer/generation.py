"""Continuing generation from a HOMER cache (method §7) and multi-turn chat.

New tokens continue at ``last_position + 1`` (not the released code's off-by-one). The
stored cache is never mutated: each conversation works on its own DynamicCache clone and
appends its turns after the document. Sampling uses transformers' logits processors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .cache import HomerCache
from .prompting import DOC, DocumentPrompt, default_prompt


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def processors(self) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if self.temperature > 0:
            procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                procs.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@dataclass
class DecodeState:
    """A working cache and where the next token goes. ``pending``: a sampled token that is
    not in the cache yet (fed with the next input)."""

    kv: object
    position: int
    first_logits: torch.Tensor | None = None
    pending: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@torch.no_grad()
def generate_tokens(model, state: DecodeState, new_ids: list[int], settings: GenerationSettings,
                    eos_ids: set[int]) -> Iterator[int]:
    """Feed ``new_ids`` (after any pending token) at explicit positions, then sample up to
    ``max_new_tokens`` tokens, yielding each. Updates ``state`` in place."""
    device = model.device
    ids = state.pending + list(new_ids)
    state.pending = []
    started = time.perf_counter()
    if ids:
        logits = _forward(model, state, ids, device)
    elif state.first_logits is not None:  # question-aware cache: the suffix ends the prompt
        logits = state.first_logits.to(device).view(1, -1)
    else:
        raise ValueError("nothing to continue from: give new tokens")
    state.first_logits = None
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    processors = settings.processors()
    generated: list[int] = []
    try:
        for step in range(settings.max_new_tokens):
            scores = processors(torch.tensor([generated], dtype=torch.long, device=device), logits.float())
            if settings.temperature > 0:
                probs = torch.softmax(scores, dim=-1).cpu()
                token = int(torch.multinomial(probs[0], 1, generator=generator))
            else:
                token = int(scores[0].argmax())
            if step == 0:
                state.stats["time_to_first_token"] = time.perf_counter() - started
            generated.append(token)
            state.pending = [token]  # not in the cache until fed; survives an early stop
            yield token
            if token in eos_ids or step == settings.max_new_tokens - 1:
                break
            state.pending = []
            logits = _forward(model, state, [token], device)
    finally:
        elapsed = time.perf_counter() - started
        state.stats.update(new_tokens=len(generated), seconds=elapsed,
                           tokens_per_second=(len(generated) - 1) / max(elapsed - state.stats.get("time_to_first_token", 0), 1e-9))


def _forward(model, state: DecodeState, ids: list[int], device) -> torch.Tensor:
    n = len(ids)
    positions = torch.arange(state.position, state.position + n, device=device).view(1, -1)
    out = model(input_ids=torch.tensor([ids], device=device), past_key_values=state.kv,
                position_ids=positions, use_cache=True, logits_to_keep=1)
    state.position += n
    return out.logits[:, -1, :]


class Conversation:
    """A multi-turn chat about one cached document. Appends each turn after the cache."""

    def __init__(self, cache: HomerCache, model, tokenizer, prompt: DocumentPrompt | None = None):
        self.cache, self.model, self.tokenizer = cache, model, tokenizer
        stored = cache.metadata.get("prompt")
        self.prompt = prompt or (DocumentPrompt.from_json(stored) if stored else default_prompt(tokenizer))
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: a fresh clone of the stored cache."""
        dtype = next(self.model.parameters()).dtype
        kv = self.cache.to_dynamic_cache(dtype=dtype, device=self.model.device, rerotate=False)
        self.state = DecodeState(kv=kv, position=self.cache.next_position)
        self.turns: list[tuple[str, str]] = []
        self.rebuilds = 0  # times the conversation had to be re-appended from the stored cache
        prefix, suffix, _ = self.prompt.split(self.tokenizer)
        self.text = prefix + DOC + suffix  # what the cache holds, as text
        self.cached_question = self.cache.metadata.get("question") or None
        if self.cached_question:  # question-aware build: the question is already in the suffix
            self.text = self.prompt.render(self.tokenizer, [], self.cached_question)
            self.state.first_logits = self.cache.last_logits

    @property
    def stats(self) -> dict:
        return self.state.stats

    def _new_text(self, question: str) -> str:
        if self.cached_question and not self.turns:
            if question != self.cached_question:
                raise ValueError("this cache was built for another question; build a question-agnostic cache")
            return ""
        rendered = self.prompt.render(self.tokenizer, self.turns, question)
        if not rendered.startswith(self.text):  # template rewrote history: re-append all turns
            turns, rebuilds = self.turns, self.rebuilds + 1
            self.reset()
            self.rebuilds = rebuilds
            self.turns = turns
            rendered = self.prompt.render(self.tokenizer, self.turns, question)
            if not rendered.startswith(self.text):
                raise ValueError("the chat template does not render conversations incrementally")
        return rendered[len(self.text):]

    def ask(self, question: str, **generation) -> Iterator[str]:
        """Stream the answer to ``question`` as text pieces."""
        settings = generation.pop("settings", None) or GenerationSettings(**generation)
        new_text = self._new_text(question)
        new_ids = self.tokenizer(new_text, add_special_tokens=False).input_ids if new_text else []
        self.text += new_text
        answer_ids: list[int] = []
        ended = False
        shown = ""
        for token in generate_tokens(self.model, self.state, new_ids, settings, self.eos_ids):
            if token in self.eos_ids:
                ended = True
                break
            answer_ids.append(token)
            text = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):
                yield text[len(shown):]
                shown = text
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        if len(answer) > len(shown):
            yield answer[len(shown):]
        # the cache now holds the answer (its last token pending); keep the text in step
        if ended and self.prompt.style == "completion":
            self.state.pending = []  # plain-text transcripts carry no end-of-turn token
        self.text += answer + (self.tokenizer.decode(self.state.pending) if ended else "")
        self.turns.append((question, answer))
