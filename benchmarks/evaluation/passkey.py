"""Passkey retrieval (method §9, the paper's Table 1): repetitive filler with one line
"The pass key is NNNNN. Remember it. NNNNN is the pass key." at a chosen depth."""

from __future__ import annotations

import random
from dataclasses import dataclass

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n\n"
)
QUESTION = "What is the pass key?"


@dataclass(frozen=True)
class Passkey:
    document: str
    question: str
    answer: str
    depth: float


def passkey_document(tokenizer, context_tokens: int, depth: float, seed: int) -> Passkey:
    """About ``context_tokens`` tokens of filler with the key line at ``depth`` (0..1)."""
    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    line = f"The pass key is {key}. Remember it. {key} is the pass key. "
    per_filler = len(tokenizer(FILLER, add_special_tokens=False).input_ids)
    per_line = len(tokenizer(line, add_special_tokens=False).input_ids)
    repeats = max(1, (context_tokens - per_line) // per_filler)
    before = round(repeats * depth)
    document = INTRO + FILLER * before + line + FILLER * (repeats - before)
    return Passkey(document, QUESTION, key, depth)
