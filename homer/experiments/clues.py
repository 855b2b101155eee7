"""Clues drafted from the compressed memory, to steer retrieval (MemoRAG, arXiv 2409.05591).

MemoRAG keeps a compressed global memory of a long text and, for a question, first lets the
memory *draft clues* — short text the answer's passage is likely to contain — then retrieves
with the question and the clues together, so a question phrased unlike the text (a
paraphrase, a two-hop question) still finds its evidence. Here the memory is the stored HOMER
cache: the clue is the model's short continuation after the cache and the question, asked to
recall the document's own words. Retrieval itself stays the caller's (the app's BM25 index).
"""

from __future__ import annotations

from ..generation import Conversation, GenerationSettings

CLUE_REQUEST = (
    "Recall the sentence of the document that answers this question, in the document's own words. Question: {question}"
)
CLUE_TOKENS = 24


def draft_clue(cache, model, tokenizer, question: str, max_new_tokens: int = CLUE_TOKENS) -> str:
    """A short clue for ``question`` drafted from ``cache`` (greedy; the cache is only read:
    the conversation works on its own copy)."""
    conversation = Conversation(cache, model, tokenizer)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return "".join(conversation.ask(CLUE_REQUEST.format(question=question), settings=settings)).strip()


def clue_query(question: str, clue: str) -> str:
    """The retrieval query: the question, then the clue (BM25 weighs their words together)."""
    return " ".join(f"{question} {clue}".split())
