"""Document-level API: lay a document out around the chat template and build its cache."""

from __future__ import annotations

import torch

from .cache import HomerCache
from .config import HomerConfig
from .prompting import DocumentPrompt, default_prompt
from .spans import span_ids
from .text_encoding import encode_marked, encode_text, mark
from .tree import Progress, build_cache


def tokenize_document(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and each token's character offset in it. Control-token strings in
    the text (``<|im_end|>`` …) are encoded as text, so a document cannot end the user's turn
    or open one (:mod:`homer.text_encoding`); other text encodes as the plain tokenizer call."""
    return encode_text(tokenizer, text, offsets=True)


def document_prompt_ids(tokenizer, prompt: DocumentPrompt, question: str | None = None) -> tuple[list[int], list[int]]:
    """Prefix ids (with BOS where the template or tokenizer adds one) and suffix ids. The
    template's markup keeps its control tokens; a question placed in the suffix is the user's
    text, its control-token strings encoded as text."""
    prefix, suffix, tail = prompt.split(tokenizer)
    prefix_ids = tokenizer(prefix, add_special_tokens=prompt.style == "completion").input_ids
    if question is None:
        suffix_ids = tokenizer(suffix, add_special_tokens=False).input_ids
    else:
        suffix_ids = encode_marked(tokenizer, suffix + mark(tokenizer, question) + tail)
    return prefix_ids, suffix_ids


def build_document_cache(
    model,
    tokenizer,
    text: str,
    config: HomerConfig | None = None,
    prompt: DocumentPrompt | None = None,
    question: str | None = None,
    progress: Progress | None = None,
    metadata: dict | None = None,
    context_ids: list[int] | None = None,
    char_offsets: list[int] | None = None,
    leaf_states=None,
    checkpoints=None,
    deadline=None,
) -> HomerCache:
    """Build the cache of a whole document.

    Without ``question`` (the product's document-first protocol) the suffix is
    question-agnostic and any later question is appended after the cache. With a question
    (the paper's protocol) the question sits in the suffix and steers pruning.
    ``context_ids``/``char_offsets`` may be passed when the document is already tokenised.
    ``leaf_states``: a path where the leaf-stage states are also written, for later
    query-aware deep reads (:func:`homer.answering.deep_read.deep_read_document`). ``checkpoints``: a
    :class:`homer.checkpoints.Checkpointer` the build saves its finished subtrees to and
    resumes from (see :func:`homer.tree.build_cache`); ``deadline``: build in slices, one
    call stopping once it is spent (:class:`homer.checkpoints.BuildSliceEnded`; see
    :func:`homer.tree.build_cache`)."""
    prompt = prompt or default_prompt(tokenizer)
    if context_ids is None:
        context_ids, char_offsets = tokenize_document(tokenizer, text)
    if not context_ids:
        raise ValueError("the document has no text")
    prefix_ids, suffix_ids = document_prompt_ids(tokenizer, prompt, question)
    meta = {"prompt": prompt.to_json(), "prompt_version": prompt.version, "question": question or ""}
    meta.update(metadata or {})
    config = config or HomerConfig()
    units = None
    if config.span != "token":
        if char_offsets is None:
            raise ValueError(f"span={config.span!r} needs the tokens' character offsets")
        units = span_ids(text, char_offsets, config.span)
    offsets = None if char_offsets is None else torch.tensor(char_offsets, dtype=torch.long)
    states = (
        {}
        if leaf_states is None
        else {"leaf_states": leaf_states, "leaf_state_tensors": {} if offsets is None else {"char_offsets": offsets}}
    )
    cache = build_cache(
        model,
        prefix_ids,
        context_ids,
        suffix_ids,
        config=config,
        progress=progress,
        metadata=meta,
        context_units=units,
        checkpoints=checkpoints,
        deadline=deadline,
        **states,
    )
    if offsets is not None:
        cache.char_offsets = torch.where(cache.sources >= 0, offsets[cache.sources.clamp(min=0)], -1)
    return cache
