"""HOMER — hierarchical context merging (Song et al., ICLR 2024) for Hugging Face decoder
models: read a text far longer than the context window into a compact KV cache.

    from homer import open_document
    book = open_document("book.pdf").read()    # text, places and passages; then the HOMER cache
    print(book.ask("Who counted the boats?"))   # the app's answer pipeline, sources under it

The engine itself: ``HomerConfig``, ``HomerCache``, ``build_cache``, ``build_document_cache``.

Names are imported on first use, so ``import homer`` (and the CLI's help) is instant; torch
and transformers load when the engine is first touched.
"""

from importlib import import_module

_EXPORTS = {
    "CacheMismatchError": "cache",
    "HomerCache": "cache",
    "HomerConfig": "config",
    "build_document_cache": "document",
    "Conversation": "generation",
    "ConversationFullError": "generation",
    "GenerationSettings": "generation",
    "DocumentPrompt": "prompting",
    "build_cache": "tree",
    "DirectoryCheckpointer": "checkpoints",
    "BuildSliceEnded": "checkpoints",
    "open_document": "answering",
    "DocumentChat": "answering",
    "AnswerSettings": "answering",
    "Answer": "answering",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'homer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
