"""Shared fixtures: tiny random-weight models of each supported family, built in-process."""

from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config)

FAMILIES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
}


def tiny_model(family: str = "llama", layers: int = 6, window: int = 64, seed: int = 0, **overrides):
    """A random-weight decoder with GQA (4 query heads, 2 kv heads)."""
    torch.manual_seed(seed)
    config = FAMILIES[family](
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        attn_implementation="sdpa", **overrides,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture(params=list(FAMILIES))
def family_model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama():
    return tiny_model("llama")


def random_ids(n: int, seed: int, low: int = 3, high: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n,), generator=g)
