"""Pruning units: which context tokens belong together (an extension of method §4).

The paper prunes single tokens. On small models that cuts numbers and words apart (a kept
"58" of 5887), so a build may instead choose what to drop in whole units: ``word`` (sub-word
pieces of one word, all digits of one number) or ``sentence``. A unit is scored by the
best of its tokens (see :func:`homer.significance.keep_indices`). Units are plain integer
ids per context token, non-decreasing, computed once from the text and the tokens' character
offsets — the tree itself never needs the tokenizer."""

from __future__ import annotations

import bisect
import re

SPAN_CHOICES = ("token", "word", "sentence")

_WORD = re.compile(r"\w+(?:[.,'’]\w+)*")  # "5,887", "3.14", "don't" are one word
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n\s*\n")


def _unit_starts(text: str, unit: str) -> list[int]:
    """Character offsets where a new unit begins (sorted)."""
    if unit == "word":
        starts = []
        for match in _WORD.finditer(text):
            starts += [match.start(), match.end()]  # a word, then whatever follows it until the next
        return starts
    if unit == "sentence":
        return [match.end() for match in _SENTENCE_END.finditer(text)]
    raise ValueError(f"unknown span unit {unit!r}; choose one of {SPAN_CHOICES}")


def span_ids(text: str, char_offsets: list[int], unit: str) -> list[int]:
    """The unit id of every token, given each token's start offset in ``text``.

    A token belongs to the unit holding its first non-space character, so " 5887" split
    into " 58" + "87" is one unit. ``token``: every token its own unit."""
    if unit == "token":
        return list(range(len(char_offsets)))
    starts = _unit_starts(text, unit)
    ids = []
    for offset in char_offsets:
        first = offset
        while first < len(text) and text[first].isspace() and unit == "word":
            first += 1
        ids.append(bisect.bisect_right(starts, first))
    # a token holding the end of one unit and the start of the next counts with the first;
    # ids are non-decreasing by construction (offsets are)
    return ids
