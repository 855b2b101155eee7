"""Finding a quote of an answer in a document's text, exactly up to whitespace.

The reader (:mod:`app.reader`) highlights a source's quote where the text — a section, or the
text layer of a PDF page — holds it word for word: case, punctuation and every character
count, and any run of whitespace matches any other. :func:`find_quote` finds it (near the
passage it was read from first); :func:`find_quote_start` finds the first words of a quote that
runs on past the end of a page. Both run in time linear in the text and the quote, whatever
either holds: the two are squeezed (each run of whitespace becomes one space), searched with
``str.find`` / ``str.endswith``, and the match is mapped back to the text's own offsets.
"""

from __future__ import annotations

import re

NEAR_PASSAGE_CHARS = 400  # the quote is looked for in the passage and this far around it first
ELLIPSIS = "…"
_LONG_SPACE = re.compile(r"\s{2,}")
_SQUEEZE = re.compile(r"\s{2,}|[^\S ]")  # what squeezing whitespace changes


def quote_words(quote: str) -> list[str]:
    """The words of a quote as shown, without the ellipses a shortened quote carries."""
    return quote.strip().strip(ELLIPSIS).split()


def squeezed(text: str, start: int = 0, end: int | None = None) -> str:
    """``text[start:end]`` with every run of whitespace as one space: one substitution in C
    that touches only what changes (runs of two or more, a lone tab or line break)."""
    return _SQUEEZE.sub(" ", text[start:end])


def unsqueezed(text: str, start: int, end: int, offsets: list[int]) -> list[int]:
    """The offsets in ``text`` of ``offsets`` (ascending) in ``squeezed(text, start, end)``:
    the characters dropped before each are counted over the runs of whitespace up to the
    last of them, no further (an offset is never inside a run: a match starts and ends at a
    word)."""
    out, dropped = [], 0
    runs = _LONG_SPACE.finditer(text, start, end)
    run = next(runs, None)
    for offset in offsets:
        while run is not None and run.end() - start - dropped - (run.end() - run.start() - 1) <= offset:
            dropped += run.end() - run.start() - 1  # the character after this run is at or before ``offset``
            run = next(runs, None)
        out.append(start + offset + dropped)
    return out


def find_quote(
    text: str, quote: str, start: int = 0, end: int | None = None, near: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """``(start, end)`` of the quote in ``text[start:end]``, matched exactly up to whitespace
    (case, punctuation and every character count); around ``near`` (the passage's span) first.
    None when the text does not hold it so.

    Linear in the text and the quote: both are squeezed (each run of whitespace becomes one
    space) and the quote is looked for with ``str.find`` (a two-way search, linear at worst),
    then the match is mapped back (:func:`unsqueezed`). A regular expression with ``\\s+`` between the words, as
    before, backtracks at every occurrence of the quote's first words: a 2 000-word quote
    took 18 s on a page of repeated words."""
    words = quote_words(quote or "")
    end = len(text) if end is None else min(end, len(text))
    if not words or start >= end:
        return None
    needle = " ".join(words)
    spans = []
    if near is not None:  # the passage itself, then a little around it (a quote may run past its ends)
        spans.append((max(start, near[0]), min(end, near[1])))
        spans.append((max(start, near[0] - NEAR_PASSAGE_CHARS), min(end, near[1] + NEAR_PASSAGE_CHARS)))
    spans.append((start, end))
    for a, b in spans:
        if a < b:
            at = squeezed(text, a, b).find(needle)
            if at >= 0:
                found = unsqueezed(text, a, b, [at, at + len(needle)])
                return found[0], found[1]
    return None


def find_quote_start(text: str, quote: str, min_words: int = 4) -> tuple[int, int] | None:
    """The quote's beginning at the very end of ``text`` (a quote that runs on to the next
    page): the longest run of its first words (``min_words`` at least) that ends the text,
    matched exactly up to whitespace; None when there is none. Only the text's last
    ``len(quote)`` characters (squeezed) are compared, each run once with ``endswith``."""
    words = quote_words(quote or "")
    if len(words) <= min_words:
        return None
    needle = " ".join(words)
    stripped = text.rstrip()
    flat = squeezed(stripped)
    tail_at = max(0, len(flat) - len(needle))
    tail = flat[tail_at:]
    length = len(needle)
    for k in range(len(words) - 1, min_words - 1, -1):
        length -= len(words[k]) + 1  # the first k words, joined
        if tail.endswith(needle[:length]):
            at = len(flat) - length
            found = unsqueezed(stripped, 0, len(stripped), [at, len(flat)])
            return found[0], found[1]
    return None


__all__ = ["ELLIPSIS", "find_quote", "find_quote_start", "quote_words", "squeezed", "unsqueezed"]
