"""A model's cache dimensions (layers, kv heads, head dim, vocabulary, window) and the
dimensions of every model fingerprinted in this process, so a cache load that names only a
fingerprint (the store's) still checks the file's shapes against that model.

:mod:`homer.fingerprint` records a model here when it fingerprints it; :mod:`homer.cache`
looks the dimensions up when it checks a file."""

from __future__ import annotations

_model_shapes: dict[str, dict] = {}


def model_shape(config) -> dict:
    """The dimensions a cache of this model must have: layers, kv heads, head dim, vocab, window."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "layers": int(config.num_hidden_layers),
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
        "vocab": int(config.vocab_size),
        "window": int(getattr(config, "max_position_embeddings", 0) or 0),
    }


def remember_model_shape(fingerprint: str, config) -> None:
    """Record the dimensions of a fingerprinted model, so a load that names only the
    fingerprint (the store's) still checks the file's shapes against that model."""
    try:
        _model_shapes[fingerprint] = model_shape(config)
    except (AttributeError, TypeError, ZeroDivisionError):
        pass


def known_model_shape(fingerprint: str | None) -> dict | None:
    """The dimensions recorded for ``fingerprint`` in this process, or None."""
    return _model_shapes.get(fingerprint or "")
