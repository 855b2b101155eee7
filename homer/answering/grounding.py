"""Saying "I could not find this in the document" instead of inventing an answer.

A focused answer is read from the few passages retrieval returned (:mod:`homer.answering.focus`). When
the document does not hold what the question asks about, retrieval still returns *something*
— the passages that share a common word with it — and a small model answers from them
anyway. The test used here is the one retrieval itself rests on (BM25's inverse document
frequency, Robertson & Zaragoza 2009): the share of the question's information, each content
word weighted by its IDF in this document, that the best retrieved passage contains. A word
the document never uses weighs most, so a question about a person, place or thing the
document does not mention scores low, and the answer is :data:`NOT_FOUND` without running
the model.

What this does not catch: a question about something the document does discuss but whose
specific answer is not there (SQuAD 2.0's adversarial unanswerable questions reuse the
paragraph's words); those are measured and reported (``benchmarks/ruler.py``), not hidden.

The threshold :data:`MIN_COVERAGE` was chosen on the RULER runner's dev slice only
(``--split dev``: answerable questions keep ≥ 95 % above it, questions about absent
documents mostly fall below); the evaluation slice and the book set report how it generalises.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

NOT_FOUND = "I could not find this in the document."
MIN_COVERAGE = 0.3

# Function words and question words: they carry no information about where an answer is.
STOPWORDS = frozenset(
    """
a an the of in on at to for by with from as is are was were be been being am and or nor not no
what which who whom whose when where why how did does do done that this these those it its into
than then there their they them he she his her him i you we our your my me us shall should will
would can could may might must has have had any some all each every about after before between
during over under up down out off so such very also only just more most other same own if
named called name many much one mentioned provided text document book say said tell according
paper report article chapter section page pages author authors pdf passage excerpt story file
""".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A light suffix strip (plural, past, gerund) so "died"/"dies"/"dying" meet; enough for
    a word-overlap test, where a full stemmer's precision buys nothing."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > 4 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """The stemmed words of ``text`` that carry information (no function or question words)."""
    return {
        _stem(w) for w in _WORD.findall((text or "").lower()) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())
    }  # not the "s" of "Abram's"


def document_frequencies(passages: Iterable[str]) -> tuple[Counter, int]:
    """How many of the document's passages hold each content word, and how many there are."""
    df: Counter = Counter()
    total = 0
    for text in passages:
        df.update(content_words(text))
        total += 1
    return df, total


def coverage(question: str, passages: Sequence[str], df: Mapping[str, int], total: int) -> float:
    """The IDF-weighted share of ``question``'s content words that the best of ``passages``
    holds, 0–1 (1.0 for a question with no content word: nothing to check)."""
    words = content_words(question)
    if not words:
        return 1.0
    if not passages:
        return 0.0
    idf = {w: math.log((total + 1) / (df.get(w, 0) + 0.5)) for w in words}
    weight = sum(idf.values())
    if weight <= 0:
        return 1.0
    best = 0.0
    for text in passages:
        held = content_words(text)
        best = max(best, sum(v for w, v in idf.items() if w in held) / weight)
    return best


def found(
    question: str, passages: Sequence[str], df: Mapping[str, int], total: int, minimum: float = MIN_COVERAGE
) -> bool:
    """Whether the passages hold enough of the question to answer from them (a question
    without a content word, "And then?", always: it is about the conversation)."""
    return coverage(question, passages, df, total) >= minimum
