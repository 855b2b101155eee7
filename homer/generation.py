"""Continuing generation from a HOMER cache (method §7) and multi-turn chat.

New tokens continue at ``last_position + 1`` (not the released code's off-by-one). The
stored cache is never mutated: each conversation works on its own copy and appends its turns
after the document. Sampling uses transformers' logits processors.

The working copy is a :class:`PreallocatedCache`: per-layer buffers with room to spare, so a
decoded token costs one row write per layer instead of a concatenation that copies the whole
cache (``DynamicCache``, kept as the baseline: ``Conversation(..., kv_cache="dynamic")``).
Buffers grow by chunks when a conversation outgrows them. The buffers keep the stored cache's
dtype (float16 by default) when it is narrower than the model's: the document part is then
exactly what was stored, with no upcast copy, and a decoded token reads half the KV bytes.

This module owns decoding and the conversation; it reads a :class:`~homer.cache.HomerCache`
through its attributes only and imports nothing from :mod:`homer.cache`, whose
``HomerCache.stream_answer`` starts a :class:`Conversation` (the dependency runs one way)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import rotate_half

from .config import model_window
from .prompting import DOC, DocumentPrompt, default_prompt
from .text_encoding import render_marked, turn_tail, unmark


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


GROWTH_CHUNK = 512  # tokens of headroom a working cache gets, and the step it grows by
KV_CACHES = ("preallocated", "dynamic")


def _round_up(n: int, chunk: int) -> int:
    return -(-n // chunk) * chunk


class PreallocatedLayer(DynamicLayer):
    """One layer of a :class:`PreallocatedCache`. ``keys``/``values`` are views of the first
    ``length`` rows of larger buffers, so the attention sees exactly what a DynamicLayer shows
    (same shapes, same mask sizes), but appending writes only the new rows. When the buffers
    are full they are replaced by ones ``chunk`` rows larger than needed (one copy per chunk).

    ``storage_dtype``: the buffers' dtype (default: the first update's). When it differs from
    the model's, :meth:`update` hands the model an upcast copy and :class:`DecodeStep` reads
    the buffers as they are (:meth:`append`)."""

    def __init__(self, chunk: int = GROWTH_CHUNK, storage_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        self.chunk = max(int(chunk), 1)
        self.storage_dtype = storage_dtype
        self.length = 0
        self.capacity = 0
        self.grows = 0
        self._k = self._v = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.storage_dtype = self.storage_dtype or key_states.dtype
        self.is_initialized = True

    def reserve(self, tokens: int, key_like: torch.Tensor, value_like: torch.Tensor) -> None:
        """Make room for ``tokens`` rows in all (rounded up to whole chunks, plus one spare chunk
        when the buffers have to move)."""
        if tokens <= self.capacity:
            return
        capacity = _round_up(tokens + (self.chunk if self.capacity else 0), self.chunk)
        b, h, _, dk = key_like.shape
        k = key_like.new_empty((b, h, capacity, dk), dtype=self.storage_dtype)
        v = value_like.new_empty((b, value_like.shape[1], capacity, value_like.shape[-1]), dtype=self.storage_dtype)
        if self.length:
            k[:, :, : self.length].copy_(self._k[:, :, : self.length])
            v[:, :, : self.length].copy_(self._v[:, :, : self.length])
            self.grows += 1
        self._k, self._v, self.capacity = k, v, capacity
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new rows (rounded to the storage dtype); return all rows as stored."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self.reserve(self.length + n, key_states, value_states)
        self._k[:, :, self.length : self.length + n].copy_(key_states)
        self._v[:, :, self.length : self.length + n].copy_(value_states)
        self.length += n
        self._refresh()
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = self.append(key_states, value_states)
        if keys.dtype != key_states.dtype:  # the model's attention wants its own dtype
            return keys.to(key_states.dtype), values.to(value_states.dtype)
        return keys, values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self._k = self._v = self.keys = self.values = None
        self.length = self.capacity = 0
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove:
            self.length = max(self.length + tokens_to_remove, 0)
            self._refresh()

    def _replace(self, fn) -> None:  # batch reshuffles (beam search): rebuild the buffers
        if self.length:
            self._k, self._v = fn(self._k), fn(self._v)
            self._refresh()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._replace(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._replace(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._replace(lambda t: t[indices, ...])


class PreallocatedCache(DynamicCache):
    """A DynamicCache whose layers append into preallocated buffers (see :class:`PreallocatedLayer`).
    Behaves like a DynamicCache of the same contents for the model: same tensors, same masks."""

    def __init__(
        self, num_layers: int | None = None, chunk: int = GROWTH_CHUNK, storage_dtype: torch.dtype | None = None
    ):
        self.chunk = chunk
        make = lambda: PreallocatedLayer(chunk, storage_dtype=storage_dtype)  # noqa: E731
        if num_layers is None:
            Cache.__init__(self, layer_class_to_replicate=make)
        else:
            Cache.__init__(self, layers=[make() for _ in range(num_layers)])

    @classmethod
    def from_homer(
        cls,
        cache,
        dtype: torch.dtype | None = None,
        device=None,
        headroom: int = GROWTH_CHUNK,
        chunk: int = GROWTH_CHUNK,
    ) -> "PreallocatedCache":
        """A working copy of ``cache``, a :class:`~homer.cache.HomerCache` (positions as built:
        continue at ``next_position``), with room for ``headroom`` more tokens, held in
        ``dtype`` (default float32). The stored tensors are only read."""
        dtype = dtype or torch.float32
        out = cls(cache.num_layers, chunk=chunk, storage_dtype=dtype)
        n = len(cache)
        for layer, target in enumerate(out.layers):
            k = cache.keys[layer].unsqueeze(0)
            v = cache.values[layer].unsqueeze(0)
            like_k = torch.empty((1, k.shape[1], 0, k.shape[-1]), dtype=dtype, device=device)
            like_v = torch.empty((1, v.shape[1], 0, v.shape[-1]), dtype=dtype, device=device)
            target.lazy_initialization(like_k, like_v)
            target.reserve(n + headroom, like_k, like_v)
            target._k[:, :, :n].copy_(k)
            target._v[:, :, :n].copy_(v)
            target.length = n
            target._refresh()
        return out

    @property
    def capacity(self) -> int:
        return min((layer.capacity for layer in self.layers), default=0)

    @property
    def grows(self) -> int:
        return max((layer.grows for layer in self.layers), default=0)


def storage_dtype(cache, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the stored ``cache`` (a :class:`~homer.cache.HomerCache`) when it is
    narrower than the model's (float16 next to a float32 model on CPU), else the model's."""
    stored = cache.keys[0].dtype if cache.num_layers else model_dtype
    return stored if stored.is_floating_point and stored.itemsize < model_dtype.itemsize else model_dtype


def working_cache(cache, model, kv_cache: str = "preallocated"):
    """The per-conversation copy of ``cache`` (a :class:`~homer.cache.HomerCache`) on the
    model's device: preallocated buffers in :func:`storage_dtype`, or the DynamicCache
    baseline in the model's dtype."""
    dtype = next(model.parameters()).dtype
    if kv_cache == "preallocated":
        return PreallocatedCache.from_homer(cache, dtype=storage_dtype(cache, dtype), device=model.device)
    if kv_cache == "dynamic":
        return cache.to_dynamic_cache(dtype=dtype, device=model.device, rerotate=False)
    raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHES)}, not {kv_cache!r}")


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
def generate_tokens(
    model, state: DecodeState, new_ids: list[int], settings: GenerationSettings, eos_ids: set[int]
) -> Iterator[int]:
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
        state.stats.update(
            new_tokens=len(generated),
            seconds=elapsed,
            tokens_per_second=(len(generated) - 1) / max(elapsed - state.stats.get("time_to_first_token", 0), 1e-9),
        )


def _forward(model, state: DecodeState, ids: list[int], device) -> torch.Tensor:
    if len(ids) == 1 and isinstance(state.kv, PreallocatedCache):
        step = _decoder(model)
        if step is not None and step.fits(state.kv.get_seq_length() + 1):
            logits = step(state.kv, ids[0], state.position)
            state.position += 1
            return logits
    n = len(ids)
    positions = torch.arange(state.position, state.position + n, device=device).view(1, -1)
    out = model(
        input_ids=torch.tensor([ids], device=device),
        past_key_values=state.kv,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    state.position += n
    return out.logits[:, -1, :]


class DecodeStep:
    """One token through the model by hand (the layer pieces of :class:`~homer.layers.DecoderStack`),
    appending to a :class:`PreallocatedCache`. Same arithmetic as the model's forward, minus
    the mask building and the per-call plumbing; grouped-query attention runs each kv head
    against its group of query heads as a block of queries, so no kv head is repeated."""

    def __init__(self, model):
        from .layers import PLAIN_MODEL_TYPES, DecoderStack

        model_type = getattr(model.config, "model_type", None)
        if model_type not in PLAIN_MODEL_TYPES:  # norms, scalings or multipliers beyond Llama's: the model's forward
            raise TypeError(f"no by-hand decode step for {model_type!r}")
        self.stack = DecoderStack(model)  # TypeError for layouts it does not know
        self.groups = self.stack.num_heads // self.stack.num_kv_heads
        self.window = getattr(model.config, "sliding_window", None)

    def fits(self, length: int) -> bool:
        """Sliding-window models attend to everything only while the cache fits the window."""
        return self.window is None or length <= self.window

    def __call__(self, kv: PreallocatedCache, token: int, position: int) -> torch.Tensor:
        stack, d = self.stack, self.stack.head_dim
        device = stack.device
        hidden = stack.embed_tokens(torch.tensor([[token]], device=device))
        cos, sin = stack.rotary_emb(hidden, torch.tensor([[position]], device=device))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, layer in enumerate(stack.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, 1, -1, d)
            k = attn.k_proj(x).view(1, 1, -1, d)
            v = attn.v_proj(x).view(1, 1, -1, d).transpose(1, 2)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys, values = kv.layers[i].append(k, v)
            q = q.view(1, keys.shape[1], self.groups, d).to(
                keys.dtype
            )  # [1, KV, groups, d]: a group's heads as queries
            out = F.scaled_dot_product_attention(q, keys, values, scale=stack.scaling).to(hidden.dtype)
            hidden = hidden + attn.o_proj(out.reshape(1, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return stack.logits(hidden)[:, -1, :]


def _decoder(model) -> DecodeStep | None:
    """The model's :class:`DecodeStep` (made once, kept on the model), or None where the layout
    is not one it knows."""
    if "_homer_decode_step" not in model.__dict__:
        try:
            step = DecodeStep(model)
        except (TypeError, AttributeError):
            step = None
        model.__dict__["_homer_decode_step"] = step
    return model.__dict__["_homer_decode_step"]


class ConversationFullError(ValueError):
    """The question alone does not fit between the cached document and the model's window."""


class Conversation:
    """A multi-turn chat about one cached document (a :class:`~homer.cache.HomerCache`).
    Appends each turn after the cache.

    The cache ends near position M (method §2: M = window / 2 by default), so the window
    minus M is the room the conversation has. When the next question and its answer would
    pass the window, the oldest turns are forgotten (the working copy restarts from the
    stored cache with the turns that still fit: ``dropped_turns`` counts them) and an answer
    stops at the window."""

    def __init__(self, cache, model, tokenizer, prompt: DocumentPrompt | None = None, kv_cache: str = "preallocated"):
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_CACHES)}, not {kv_cache!r}")
        self.cache, self.model, self.tokenizer, self.kv_cache = cache, model, tokenizer, kv_cache
        stored = cache.metadata.get("prompt")
        self.prompt = prompt or (DocumentPrompt.from_json(stored) if stored else default_prompt(tokenizer))
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: a fresh copy of the stored cache."""
        kv = working_cache(self.cache, self.model, self.kv_cache)
        self.state = DecodeState(kv=kv, position=self.cache.next_position)
        self.turns: list[tuple[str, str]] = []
        self.rebuilds = 0  # times the conversation had to be re-appended from the stored cache
        self.dropped_turns = 0  # oldest turns forgotten to stay inside the window
        prefix, suffix, _ = self.prompt.split(self.tokenizer)
        self.text = prefix + DOC + suffix  # what the cache holds, as text
        self.cached_question = self.cache.metadata.get("question") or None
        if self.cached_question:  # question-aware build: the question is already in the suffix
            self.text = unmark(render_marked(self.prompt, self.tokenizer, [], self.cached_question))
            self.state.first_logits = self.cache.last_logits

    @property
    def stats(self) -> dict:
        return self.state.stats

    @property
    def window(self) -> int:
        return model_window(self.model.config)

    def _fit_window(self, question: str, max_new_tokens: int) -> tuple[str, list[int], int]:
        """The text (and its ids) to feed for ``question`` and how many tokens the answer may
        take, after forgetting the oldest turns that would push the answer past the window."""

        def fed(ids: list[int]) -> int:  # where the cache ends once ``ids`` (and any pending token) are in
            return self.state.position + len(self.state.pending) + len(ids)

        new_text, new_ids = self._new_text(question)
        while self.turns and not self.cached_question and fed(new_ids) + max_new_tokens > self.window:
            turns, rebuilds, dropped = self.turns[1:], self.rebuilds, self.dropped_turns + 1
            self.reset()
            self.turns, self.rebuilds, self.dropped_turns = turns, rebuilds, dropped
            new_text, new_ids = self._new_text(question)
        room = self.window - fed(new_ids)
        if room < 1:
            raise ConversationFullError(
                f"the question needs {-room + 1} more tokens than the window leaves after the document "
                f"({self.window} in all, the cache ends at {self.state.position}); ask a shorter question "
                "or build the document with a smaller max_chunk_len"
            )
        return new_text, new_ids, min(max_new_tokens, room)

    def _new_text(self, question: str) -> tuple[str, list[int]]:
        """The text the cache does not hold yet and its ids. The questions and earlier answers
        in it are the user's and the model's text: a control-token string in them is encoded as
        text, so a question cannot close its turn and write the assistant's
        (:mod:`homer.text_encoding`)."""
        if self.cached_question and not self.turns:
            if question != self.cached_question:
                raise ValueError("this cache was built for another question; build a question-agnostic cache")
            return "", []
        tail = turn_tail(self.prompt, self.tokenizer, self.text, self.turns, question)
        if tail is None:  # template rewrote history: re-append all turns
            turns, rebuilds = self.turns, self.rebuilds + 1
            self.reset()
            self.rebuilds = rebuilds
            self.turns = turns
            tail = turn_tail(self.prompt, self.tokenizer, self.text, self.turns, question)
            if tail is None:
                raise ValueError("the chat template does not render conversations incrementally")
        return tail

    def ask(self, question: str, **generation) -> Iterator[str]:
        """Stream the answer to ``question`` as text pieces."""
        settings = generation.pop("settings", None) or GenerationSettings(**generation)
        new_text, new_ids, room = self._fit_window(question, settings.max_new_tokens)
        if room < settings.max_new_tokens:
            settings = replace(settings, max_new_tokens=room)
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
                yield text[len(shown) :]
                shown = text
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True)
        if len(answer) > len(shown):
            yield answer[len(shown) :]
        # the cache now holds the answer (its last token pending); keep the text in step
        if ended and self.prompt.style == "completion":
            self.state.pending = []  # plain-text transcripts carry no end-of-turn token
        self.text += unmark(answer) + (self.tokenizer.decode(self.state.pending) if ended else "")
        self.turns.append((question, answer))
