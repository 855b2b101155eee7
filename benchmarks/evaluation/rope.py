"""RoPE-scaling baselines (method §8): the same weights with linear (PI), dynamic NTK or
YaRN scaling, set through the model config's ``rope_parameters``."""

from __future__ import annotations

ROPE_METHODS = ("linear", "dynamic", "yarn")


def scaled_rope_parameters(config, method: str, factor: float) -> dict:
    """``rope_parameters`` for ``method`` at ``factor`` times the native window."""
    if method not in ROPE_METHODS:
        raise ValueError(f"rope method must be one of {ROPE_METHODS}")
    base = dict(getattr(config, "rope_parameters", None) or {})
    theta = base.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = {"rope_type": method, "factor": float(factor), "rope_theta": theta}
    if method in ("yarn", "dynamic"):
        params["original_max_position_embeddings"] = int(config.max_position_embeddings)
    return params


def load_scaled_model(name: str | None, method: str, factor: float, device: str | None = None):
    """Load ``(model, tokenizer)`` with RoPE scaling applied (a fresh model instance)."""
    from transformers import AutoConfig

    from homer import models

    path = models.resolve_model_path(name)
    config = AutoConfig.from_pretrained(path)
    config.rope_parameters = scaled_rope_parameters(config, method, factor)
    if method in ("yarn", "dynamic"):
        config.max_position_embeddings = int(config.max_position_embeddings * factor)
    return models.load_model(name, device=device, config=config)
