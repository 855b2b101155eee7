"""An explicit, top-to-bottom view of a Hugging Face decoder-only model: embedding, RoPE, and
each decoder layer split in two halves so HOMER can prune between attention and MLP (method
§4). Supported families: Llama (2, 3.x, SmolLM), Mistral, Qwen2 / Qwen2.5, Qwen3, Gemma 2,
Gemma 3 (text), Phi-3 / Phi-4(-mini), Granite (3.x dense) and OLMo 2. Any other model is
refused by name (:func:`check_model_config`) before any work is done.

The attention itself is the model's own module: the engine calls it (q/k/v projections, fused
``qkv_proj``, q/k norms, partial rotary, the family's attention scale, sliding window and
logit soft-capping all stay the model's) through a shallow copy whose config names the
engine's attention function (:data:`ENGINE_ATTENTION`, registered with transformers'
``AttentionInterface``): that function receives the post-RoPE q, k and v, records them for
the significance score, and computes causal attention in **sequence order** — which merged
nodes need, their reused position ids being non-monotonic (§6) — within each layer's sliding
window. Nothing of the model is patched or mutated.

What the engine does itself is the decoder layer's wiring (which norm sits where, residual
multipliers) and the embedding / logit scalings, from a small per-family table
(:data:`WIRINGS`). It must split the layer there: tokens are pruned between attention and MLP
(§4), and the leaf states of :mod:`homer.leaf_states` are the residual stream at that point.
A decoder layer with a submodule the table does not place is refused, so a family whose layout
changes cannot silently lose a norm.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.models.llama.modeling_llama import rotate_half

_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
ENGINE_ATTENTION = "homer_engine"
_QUERY_BLOCK = 1024  # query rows per block when attention needs an explicit mask (windows, soft-capping)


class UnsupportedModelError(TypeError):
    """A model the engine cannot run exactly; the message names the family and the reason."""


@dataclass(frozen=True)
class LayerWiring:
    """How a family's decoder layer joins attention and MLP to the residual stream, and how its
    embedding and logits are scaled: read from the family's transformers modeling code.

    attention_in / mlp_in: the norm applied before attention / MLP (None: none);
    attention_out / mlp_out: the norm applied to their outputs before the residual add;
    residual_multiplier, embedding_multiplier, logits_divisor, logit_softcap: config fields
    (None: not used); no_op: layer submodules that do nothing at inference (dropouts)."""

    name: str
    attention_in: str | None = "input_layernorm"
    attention_out: str | None = None
    mlp_in: str | None = "post_attention_layernorm"
    mlp_out: str | None = None
    residual_multiplier: str | None = None
    embedding_multiplier: str | None = None
    logits_divisor: str | None = None
    logit_softcap: str | None = None
    no_op: tuple[str, ...] = ()

    @property
    def norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.attention_in, self.attention_out, self.mlp_in, self.mlp_out) if n)


_GEMMA = dict(
    attention_out="post_attention_layernorm",
    mlp_in="pre_feedforward_layernorm",
    mlp_out="post_feedforward_layernorm",
    logit_softcap="final_logit_softcapping",
)
WIRINGS = {
    "llama": LayerWiring("Llama"),
    "mistral": LayerWiring("Mistral"),
    "qwen2": LayerWiring("Qwen2"),
    "qwen3": LayerWiring("Qwen3"),
    "gemma2": LayerWiring("Gemma 2", **_GEMMA),  # embedding scale: inside its embed_tokens module
    "gemma3_text": LayerWiring("Gemma 3", **_GEMMA),
    "phi3": LayerWiring("Phi-3", no_op=("resid_attn_dropout", "resid_mlp_dropout")),
    "granite": LayerWiring(
        "Granite",
        residual_multiplier="residual_multiplier",
        embedding_multiplier="embedding_multiplier",
        logits_divisor="logits_scaling",
    ),
    "olmo2": LayerWiring(
        "OLMo 2",
        attention_in=None,
        attention_out="post_attention_layernorm",
        mlp_in=None,
        mlp_out="post_feedforward_layernorm",
    ),
}
SUPPORTED_MODEL_TYPES = tuple(WIRINGS)
# families whose layer is exactly Llama's (no extra norm, multiplier or scaling): the by-hand
# decode step (homer.generation.DecodeStep) reproduces them
PLAIN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_LAYER_TYPES = ("full_attention", "sliding_attention")

# known families the engine refuses, with the reason (model_type -> (family, reason))
REFUSED_MODEL_TYPES = {
    "gemma3": (
        "Gemma 3 (image-text)",
        "the 4B and larger checkpoints load as image-text models "
        "(Gemma3ForConditionalGeneration); HOMER runs text-only decoders — use Gemma 3 270M / 1B, "
        "or the text model saved on its own (Gemma3ForCausalLM)",
    ),
    "gemma": ("Gemma 1", "not verified against the engine (Gemma 2 and Gemma 3 are)"),
    "phi": ("Phi-1/Phi-2", "parallel attention and MLP blocks with LayerNorm, not a layout the engine splits"),
    "olmo": ("OLMo 1", "not verified against the engine (OLMo 2 is)"),
    "ministral": ("Ministral", "not verified against the engine (Mistral is)"),
}


def supported_families() -> str:
    return ", ".join(dict.fromkeys(w.name for w in WIRINGS.values()))


def check_model_config(config) -> LayerWiring:
    """The engine's wiring for a model of this config, or :class:`UnsupportedModelError` naming
    the family and the reason — a check on the config alone, made before any weights load."""
    model_type = getattr(config, "model_type", None) or type(config).__name__
    if model_type in REFUSED_MODEL_TYPES:
        family, reason = REFUSED_MODEL_TYPES[model_type]
        raise UnsupportedModelError(f"HOMER does not support {family} models ({model_type!r}): {reason}")
    wiring = WIRINGS.get(model_type)
    if wiring is None:
        raise UnsupportedModelError(
            f"HOMER supports decoder-only models of the {supported_families()} families; {model_type!r} is not "
            "one of them (the engine runs only the families it has been checked on)"
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(
            f"HOMER does not support {wiring.name} with bidirectional attention (an embedding model, not a decoder)"
        )
    unknown = sorted(set(getattr(config, "layer_types", None) or ()) - set(_LAYER_TYPES))
    if unknown:
        raise UnsupportedModelError(f"HOMER does not support {wiring.name} models with {', '.join(unknown)} layers")
    return wiring


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [1, heads, n, d]; cos/sin: [1, n, d] → rotated x (same formula as transformers)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention in sequence order. q: [1, H, n, d]; k, v: [1, KV, n, d] → [1, H, n, d].

    ``window``: a query sees only the last ``window`` keys, itself included (transformers'
    sliding window: key index > query index − window); ``softcap``: logits become
    softcap · tanh(logits / softcap) before the softmax (Gemma 2).
    flash-attn 2 on a GPU when installed (it handles GQA, windows and soft-capping natively),
    otherwise ``scaled_dot_product_attention`` with the kv heads repeated to the query heads,
    block by block with an explicit mask when a window binds or logits are soft-capped."""
    n = q.shape[2]
    if window is not None and window >= n:
        window = None  # every query sees all earlier keys anyway
    if _HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        out = flash_attn_func(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            causal=True,
            softmax_scale=scale,
            window_size=(window - 1, 0) if window else (-1, -1),
            softcap=float(softcap or 0.0),
        )
        return out.transpose(1, 2)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if window is None and softcap is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    out = torch.empty_like(q)
    for start in range(0, n, _QUERY_BLOCK):
        end = min(start + _QUERY_BLOCK, n)
        first = 0 if window is None else max(0, start - window + 1)
        rows = torch.arange(start, end, device=q.device)[:, None]
        cols = torch.arange(first, end, device=q.device)[None, :]
        visible = cols <= rows
        if window is not None:
            visible = visible & (cols > rows - window)
        qb, kb, vb = q[:, :, start:end], k[:, :, first:end], v[:, :, first:end]
        if softcap is None:
            out[:, :, start:end] = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=visible, scale=scale)
        else:  # the model's eager attention: scale, soft-cap, mask, softmax in float32
            logits = torch.matmul(qb, kb.transpose(-1, -2)) * scale
            logits = torch.tanh(logits / softcap) * softcap
            logits = logits.masked_fill(~visible, float("-inf"))
            weights = logits.softmax(-1, dtype=torch.float32).to(qb.dtype)
            out[:, :, start:end] = torch.matmul(weights, vb)
    return out


class AttentionCall:
    """One call of a layer's attention module by the engine: what the engine's attention
    function records (post-RoPE q [1, H, n, d], k and v [1, KV, n, d], the layer's window and
    soft-cap) and how it attends. ``attend(q, k, v, scale, window, softcap)`` → [1, H, n, d]
    replaces plain causal attention (e.g. a copy that also sees earlier keys); with
    ``project_only`` the call stops once q, k and v are known."""

    def __init__(self, attend=None, project_only: bool = False):
        self.attend = attend
        self.project_only = project_only
        self.q = self.k = self.v = None
        self.window: int | None = None
        self.softcap: float | None = None


class _Projected(Exception):
    """Ends a project-only call once q, k and v are recorded (the output would be unused)."""


def _engine_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    sliding_window=None,
    softcap=None,
    homer_call: AttentionCall | None = None,
    **kwargs,
):
    """The attention function the engine's copies of the attention modules call (see the
    module docstring): records q, k, v and attends in sequence order within the window."""
    if homer_call is None:
        raise RuntimeError("the HOMER engine attention runs only inside the engine")
    homer_call.q, homer_call.k, homer_call.v = query, key, value
    homer_call.window, homer_call.softcap = sliding_window, softcap
    if homer_call.project_only:
        raise _Projected
    attend = homer_call.attend or causal_attention
    out = attend(query, key, value, scaling, sliding_window, softcap)
    return out.transpose(1, 2), None


AttentionInterface.register(ENGINE_ATTENTION, _engine_attention)


class _EngineConfigView:
    """The model's config as the engine's copy of an attention module sees it: every field the
    model's, except the attention implementation (the model itself keeps its own)."""

    _attn_implementation = ENGINE_ATTENTION

    def __init__(self, config):
        self.__dict__["_config"] = config

    def __getattr__(self, name):
        return getattr(self.__dict__["_config"], name)


def _engine_copy(attn):
    """A shallow copy of an attention module (same parameters, nothing copied) that calls the
    engine's attention function."""
    view = copy.copy(attn)
    view.config = _EngineConfigView(attn.config)
    return view


class LayerTypeRope(dict):
    """RoPE (cos, sin) per layer type, for models with a RoPE base per type (Gemma 3: local
    and global layers). Not a (cos, sin) pair: pass it to the stack's methods, which pick each
    layer's (:meth:`DecoderStack.layer_rope`)."""

    def __iter__(self):
        raise TypeError("this model has a RoPE per layer type: use DecoderStack.layer_rope(rope, layer)")


class DecoderStack:
    """The pieces of ``model`` that a HOMER build runs by hand.

    Shapes: hidden [1, n, hidden]; q [1, H, n, d]; k, v [1, KV, n, d]."""

    def __init__(self, model):
        self.model = model
        self.config = getattr(model, "config", None)
        model_type = getattr(self.config, "model_type", type(model).__name__)
        if self.config is None:
            raise UnsupportedModelError(
                f"HOMER supports decoder-only models of the {supported_families()} "
                f"families; {model_type!r} is not a Hugging Face model"
            )
        self.wiring = check_model_config(self.config)
        base = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if base is None or not all(hasattr(base, name) for name in needed) or not hasattr(model, "lm_head"):
            raise UnsupportedModelError(
                f"{self.wiring.name} model {type(model).__name__} does not have the "
                "expected layout (model.embed_tokens, layers, norm, rotary_emb; lm_head)"
            )
        self.embed_tokens = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary_emb = base.rotary_emb
        self.lm_head = model.lm_head
        known = {"self_attn", "mlp", *self.wiring.norms, *self.wiring.no_op}
        for layer in self.layers:
            extra = sorted(name for name, _ in layer.named_children() if name not in known)
            missing = sorted(name for name in known - set(self.wiring.no_op) if not hasattr(layer, name))
            if extra or missing:
                raise UnsupportedModelError(
                    f"{self.wiring.name} decoder layer {type(layer).__name__} has "
                    f"{'submodules the engine does not place: ' + ', '.join(extra) if extra else ''}"
                    f"{'; ' if extra and missing else ''}{'no ' + ', '.join(missing) if missing else ''}"
                )
        self._attention = [_engine_copy(layer.self_attn) for layer in self.layers]
        attn = self.layers[0].self_attn
        self.num_layers = len(self.layers)
        self.num_heads = int(self.config.num_attention_heads)
        self.num_kv_heads = int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(attn.head_dim)
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        self._by_layer_type = "layer_type" in inspect.signature(self.rotary_emb.forward).parameters
        self.layer_types = list(getattr(self.config, "layer_types", None) or ["full_attention"] * self.num_layers)

    def _multiplier(self, field: str | None) -> float | None:
        value = getattr(self.config, field, None) if field else None
        return None if value is None else float(value)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    # --- RoPE ----------------------------------------------------------------------------
    def _inv_freqs(self) -> dict[str, torch.Tensor]:
        if not self._by_layer_type:
            return {"": self.rotary_emb.inv_freq}
        return {t: getattr(self.rotary_emb, f"{t}_inv_freq") for t in dict.fromkeys(self.layer_types)}

    @property
    def rotary_dim(self) -> int:
        """How many of the head dimensions RoPE rotates (fewer than head_dim: partial rotary, Phi-4)."""
        return 2 * int(next(iter(self._inv_freqs().values())).shape[0])

    @property
    def inv_freq(self) -> torch.Tensor:
        """RoPE frequencies (already scaled for PI / NTK / YaRN / llama3), without any attention
        factor, [head_dim / 2]: with partial rotary the rotated ones then zeros (the cache's
        ``rotary_dim`` says how many rotate); with a RoPE per layer type the global layers'."""
        freqs = self._inv_freqs()
        inv_freq = freqs.get("full_attention", next(iter(freqs.values()))).detach().float().cpu()
        return F.pad(inv_freq, (0, self.head_dim // 2 - inv_freq.shape[0]))

    def rope_metadata(self) -> dict[str, str]:
        """What a cache must record beside ``inv_freq`` to re-rotate its keys (§7): the rotary
        dimension when RoPE is partial; the layer types when their RoPE bases differ."""
        meta = {}
        if self.rotary_dim < self.head_dim:
            meta["rotary_dim"] = str(self.rotary_dim)
        freqs = list(self._inv_freqs().values())
        if any(not torch.equal(f, freqs[0]) for f in freqs[1:]):
            meta["rope_by_layer_type"] = ",".join(self.layer_types)
        return meta

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor):
        """The model's (cos, sin) for ``positions``; a :class:`LayerTypeRope` when its RoPE
        differs per layer type."""
        positions = positions.to(self.device).view(1, -1)
        if not self._by_layer_type:
            return self.rotary_emb(hidden, positions)
        return LayerTypeRope({t: self.rotary_emb(hidden, positions, t) for t in dict.fromkeys(self.layer_types)})

    def layer_rope(self, rope, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_idx``'s (cos, sin) from what :meth:`rope` returned."""
        return rope[self.layer_types[layer_idx]] if isinstance(rope, LayerTypeRope) else rope

    # --- the layer, in two halves ----------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(ids.to(self.device).view(1, -1))  # Gemma scales inside embed_tokens
        multiplier = self._multiplier(self.wiring.embedding_multiplier)
        return hidden if multiplier is None else hidden * multiplier

    def _norm(self, layer_idx: int, name: str | None, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if name is None else getattr(self.layers[layer_idx], name)(hidden)

    def _residual(self, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        multiplier = self._multiplier(self.wiring.residual_multiplier)
        return hidden + (out if multiplier is None else out * multiplier)

    def _call_attention(self, layer_idx: int, hidden: torch.Tensor, rope, call: AttentionCall):
        x = self._norm(layer_idx, self.wiring.attention_in, hidden)
        out, _ = self._attention[layer_idx](
            hidden_states=x, position_embeddings=self.layer_rope(rope, layer_idx), attention_mask=None, homer_call=call
        )
        return out

    def project(self, layer_idx: int, hidden: torch.Tensor, rope):
        """input norm → the model's q/k/v (and q/k norms) → RoPE: post-RoPE q [1, H, n, d],
        post-RoPE k [1, KV, n, d], v."""
        call = AttentionCall(project_only=True)
        try:
            self._call_attention(layer_idx, hidden, rope, call)
        except _Projected:
            pass
        if call.q is None:
            raise UnsupportedModelError(f"{self.wiring.name} attention did not call its attention function")
        return call.q, call.k, call.v

    def attention_half(self, layer_idx: int, hidden: torch.Tensor, rope, attend=None):
        """input norm → the model's attention module (causal in sequence order, within the
        layer's sliding window; ``attend`` replaces that, see :class:`AttentionCall`) → the
        family's output norm → residual.

        Returns (hidden after the residual add, post-RoPE q, post-RoPE k, v)."""
        call = AttentionCall(attend=attend)
        out = self._call_attention(layer_idx, hidden, rope, call)
        out = self._norm(layer_idx, self.wiring.attention_out, out)
        return self._residual(hidden, out), call.q, call.k, call.v

    def mlp_half(self, layer_idx: int, hidden: torch.Tensor) -> torch.Tensor:
        """MLP norm → MLP → the family's output norm → residual."""
        x = self._norm(layer_idx, self.wiring.mlp_in, hidden)
        x = self._norm(layer_idx, self.wiring.mlp_out, self.layers[layer_idx].mlp(x))
        return self._residual(hidden, x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the given hidden states (pass only the rows you need), scaled and
        soft-capped as the model's own head does."""
        logits = self.lm_head(self.norm(hidden))
        divisor = self._multiplier(self.wiring.logits_divisor)
        if divisor is not None:
            logits = logits / divisor
        cap = self._multiplier(self.wiring.logit_softcap)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
