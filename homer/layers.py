"""An explicit, top-to-bottom view of a Hugging Face decoder-only model (Llama, Mistral,
Qwen2, Qwen3): embedding, RoPE, and each decoder layer split in two halves so HOMER can
prune between attention and MLP (method §4). Uses the model's own modules; patches nothing.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [1, heads, n, d]; cos/sin: [1, n, d] → rotated x (same formula as transformers)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention in sequence order. q: [1, H, n, d]; k, v: [1, KV, n, d] → [1, H, n, d].

    flash-attn 2 on a GPU when installed (it handles GQA natively), otherwise
    ``scaled_dot_product_attention`` with the kv heads repeated to the query heads."""
    if _HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        out = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, softmax_scale=scale
        )
        return out.transpose(1, 2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


class DecoderStack:
    """The pieces of ``model`` that a HOMER build runs by hand.

    Shapes: hidden [1, n, hidden]; q [1, H, n, d]; k, v [1, KV, n, d]."""

    def __init__(self, model):
        self.model = model
        self.config = getattr(model, "config", None)
        model_type = getattr(self.config, "model_type", type(model).__name__)
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, name) for name in needed) or not hasattr(model, "lm_head"):
            raise TypeError(
                f"HOMER supports decoder-only models of the {', '.join(SUPPORTED_MODEL_TYPES)} families; "
                f"{model_type!r} does not have the expected layout"
            )
        self.embed_tokens = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb
        self.lm_head = model.lm_head
        attn = self.layers[0].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise TypeError(f"{model_type!r} attention has no {name}: not a supported family")
        self.num_layers = len(self.layers)
        self.num_heads = int(self.config.num_attention_heads)
        self.num_kv_heads = int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(attn.head_dim)
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def inv_freq(self) -> torch.Tensor:
        """RoPE frequencies (already scaled for PI / NTK / YaRN), without any attention factor."""
        return self.rotary_emb.inv_freq.detach().float().cpu()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids.to(self.device).view(1, -1))

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary_emb(hidden, positions.to(self.device).view(1, -1))

    def project(self, layer_idx: int, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """input norm → q/k/v → RoPE: post-RoPE q [1, H, n, d], post-RoPE k [1, KV, n, d], v."""
        attn = self.layers[layer_idx].self_attn
        n = hidden.shape[1]
        x = self.layers[layer_idx].input_layernorm(hidden)
        q = attn.q_proj(x).view(1, n, -1, self.head_dim)
        k = attn.k_proj(x).view(1, n, -1, self.head_dim)
        v = attn.v_proj(x).view(1, n, -1, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises q and k per head before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = rope
        return apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin), v

    def attention_half(self, layer_idx: int, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """input norm → q/k/v → RoPE → causal attention → o_proj → residual.

        Returns (hidden after the residual add, post-RoPE q, post-RoPE k, v)."""
        attn = self.layers[layer_idx].self_attn
        n = hidden.shape[1]
        q, k, v = self.project(layer_idx, hidden, rope)
        out = causal_attention(q, k, v, self.scaling)  # [1, H, n, d]
        out = attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
        return hidden + out, q, k, v

    def mlp_half(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """post-attention norm → MLP → residual."""
        layer = self.layers[layer_idx]
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the given hidden states (pass only the rows you need)."""
        return self.lm_head(self.norm(hidden))
