"""HOMER — hierarchical context merging (Song et al., ICLR 2024) for Hugging Face decoder
models: read a text far longer than the context window into a compact KV cache.

    from homer import HomerConfig, HomerCache, build_cache, build_document_cache
"""

from .cache import CacheMismatchError, HomerCache
from .config import HomerConfig
from .document import build_document_cache
from .generation import Conversation, GenerationSettings
from .prompting import DocumentPrompt
from .tree import build_cache

__all__ = [
    "CacheMismatchError", "Conversation", "DocumentPrompt", "GenerationSettings", "HomerCache",
    "HomerConfig", "build_cache", "build_document_cache",
]
__version__ = "0.1.0"
