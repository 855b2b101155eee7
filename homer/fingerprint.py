"""A model fingerprint: a hash of the config (RoPE scaling included) and of a fixed sample
of every weight tensor, so a cache built by another model is never used silently."""

from __future__ import annotations

import hashlib
import json

import torch

from .model_shape import remember_model_shape  # a load naming only a fingerprint checks shapes too

_IGNORED_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_attn_implementation",
    "attn_implementation",
    "_attn_implementation_autoset",
    "use_cache",
    "architectures",
    "output_attentions",
    "output_hidden_states",
    "_commit_hash",
}
_SAMPLES_PER_TENSOR = 4096


def model_fingerprint(model) -> str:
    """32 hex characters; the same for the same weights in fp32 or bf16, on any device."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _IGNORED_CONFIG_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            sample = flat[::step][:_SAMPLES_PER_TENSOR].to("cpu", torch.float32).to(torch.bfloat16)
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            digest.update(sample.view(torch.int16).numpy().tobytes())
    fingerprint = digest.hexdigest()[:32]
    remember_model_shape(fingerprint, model.config)
    return fingerprint
