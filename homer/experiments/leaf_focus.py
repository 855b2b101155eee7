"""Deep read on a few leaves: a question-aware HOMER read of only the leaves that hold the
question's passages.

A focused answer (:mod:`homer.answering.focus`) reads the retrieved passages verbatim. This is the
other way to spend the question's compute that the REFORM line of work suggests (arXiv
2506.01215, by HOMER's first author: select, then recompute the selected context at full
resolution): take the leaves of the document's own HOMER layout (method §2: the context cut
into ``N = 2^h`` equal slices) that contain the passages, and build a question-aware HOMER
cache of just those leaves, the question in the suffix steering every prune (the paper's
protocol, method §4). The model then reads each passage with its surrounding leaf, merged
to the cache budget, instead of the passage alone.

It is a comparison arm (``python -m benchmarks.focus --arms leaves``), not an app path: it
costs a HOMER build of a few leaves per question. The leaves are recomputed from the text
rather than read from stored leaf states (:mod:`homer.answering.deep_read`), which would need about
15 KB per document token on disk.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from ..cache import HomerCache
from ..config import HomerConfig
from ..document import build_document_cache, document_prompt_ids, tokenize_document
from ..plan import ChunkPlan
from ..prompting import DocumentPrompt, default_prompt


def document_leaves(
    model, tokenizer, text: str, config: HomerConfig | None = None, prompt: DocumentPrompt | None = None
) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the leaves a document-first build cuts ``text``
    into (:class:`homer.plan.ChunkPlan`), in document order; together they cover the text."""
    ids, offsets = tokenize_document(tokenizer, text)
    if not ids:
        raise ValueError("the document has no text")
    prefix, suffix = document_prompt_ids(tokenizer, prompt or default_prompt(tokenizer))
    config = (config or HomerConfig()).resolve(model.config)
    plan = ChunkPlan(
        prefix_len=len(prefix),
        context_len=len(ids),
        suffix_len=len(suffix),
        max_chunk_len=config.max_chunk_len,
        target_len=config.target_len,
        num_layers=int(model.config.num_hidden_layers),
        warmup_layers=config.warmup_layers,
    )
    spans = []
    for leaf in range(plan.num_leaves):
        first, end = plan.slice_bounds(leaf)
        if first >= len(ids):
            break
        start = 0 if leaf == 0 else offsets[first]
        spans.append((start, offsets[end] if end < len(ids) else len(text)))
    return spans


def leaves_holding(spans: Sequence[tuple[int, int]], offsets: Sequence[int]) -> list[int]:
    """Indices (ascending, each once) of the leaves in ``spans`` that hold the characters at
    ``offsets`` (e.g. the retrieved passages' starts)."""
    starts = [s for s, _ in spans]
    return sorted({min(max(bisect_right(starts, o) - 1, 0), len(spans) - 1) for o in offsets})


def read_leaves(
    model,
    tokenizer,
    text: str,
    spans: Sequence[tuple[int, int]],
    leaves: Sequence[int],
    question: str,
    config: HomerConfig | None = None,
    prompt: DocumentPrompt | None = None,
) -> HomerCache:
    """A question-aware HOMER cache of the ``leaves`` of ``text`` (in document order, a blank
    line between non-adjacent ones), the question in the suffix."""
    if not leaves:
        raise ValueError("no leaves to read")
    parts, last = [], None
    for i in sorted(set(leaves)):
        start, end = spans[i]
        parts.append(text[start:end] if last is None or i == last + 1 else "\n\n" + text[start:end])
        last = i
    return build_document_cache(model, tokenizer, "".join(parts), config, prompt=prompt, question=question)
