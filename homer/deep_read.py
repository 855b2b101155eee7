"""Query-aware deep read: a fast question-aware rebuild from stored leaf-stage states.

In a leaf (prefix ++ slice ++ suffix, method §2) attention is causal, so the prefix and
context tokens never see the suffix: their K/V at every leaf layer (``plan.layers_at(0)``)
and their hidden states are the same whatever the suffix is. A build can therefore store,
per leaf, the context's K/V at the leaf layers and its hidden state after the attention half
of the last leaf layer (where pruning happens, §4), plus the prefix's (identical in every
leaf, stored once). A later question then needs only its own suffix tokens run through the
leaf layers, attending to the stored K/V at the leaf's reused positions; the last suffix
query scores the tokens, pruning, the MLP, the merges and the upper layers run exactly as in
a full build. The result is a normal question-aware :class:`HomerCache`.

Storage per context token (cache dtype of b bytes, ``Lw = len(plan.layers_at(0))`` leaf
layers, KV kv heads of size d, hidden size H): ``Lw · 2 · KV · d · b + H · b`` bytes. For the
embedded SmolLM2-135M (Lw = 18 at 2–3 tree levels, KV = 3, d = 64, H = 576, float16) that is
about 14.6 KiB per token, ~230 MiB for 16k tokens. The file is written to disk leaf by leaf
(one leaf's states in memory at a time) and read leaf by leaf.

A question changes the suffix length S, and with it E = M − P − S, the number of leaves and
the node targets. The stored leaves stay valid while the new plan has the same number of
leaves (then the slicing, the suffix position P + c and the leaf layers are the same; the
targets come from the new plan). Otherwise the deep read falls back to a full rebuild from
the stored token ids (or raises :class:`DeepReadUnavailable` with ``fallback=False``).

    states = "doc.leaves.safetensors"
    cache = build_document_with_leaf_states(model, tokenizer, text, states)  # document-first
    answer_cache = deep_read_document(model, tokenizer, states, question)    # question-aware
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .cache import CacheMismatchError, HomerCache, StoredMetadata
from .config import HomerConfig
from .layers import DecoderStack, apply_rope
from .tree import Node, Progress, _Builder, build_cache

FORMAT = "homer-leaf-states"
FORMAT_VERSION = "1"
# settings that shape the stored states; the others (target, significance, …) act after them
STATE_SETTINGS = ("max_chunk_len", "warmup_layers", "cache_dtype", "span")
_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


class LeafStateMismatchError(CacheMismatchError):
    """A leaf-state file was made for another model or other settings (or is not one)."""


class DeepReadUnavailable(ValueError):
    """The question changes the number of leaves, so the stored leaf states do not apply."""


# --- writing ---------------------------------------------------------------------------
class _StreamingSafetensors:
    """A safetensors file written tensor by tensor in a fixed, declared order: the header
    (names, dtypes, shapes, offsets) is known up front, the data is appended as it comes.
    Written to a temp file in the same folder, fsynced and renamed on :meth:`close`."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, torch.dtype, tuple]], metadata: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header, offset = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
        for name, dtype, shape in specs:
            size = torch.tensor([], dtype=dtype).element_size()
            for dim in shape:
                size *= int(dim)
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": [int(d) for d in shape],
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.specs = list(specs)
        self.next = 0
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.fh = os.fdopen(fd, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, dtype, shape = self.specs[self.next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(f"leaf states: expected {want} {dtype} {tuple(shape)}, got {name} "
                               f"{tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        self.fh.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        self.next += 1

    def close(self) -> Path:
        if self.next != len(self.specs):
            raise RuntimeError(f"leaf states: {len(self.specs) - self.next} tensors were never written")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        Path(self.tmp).unlink(missing_ok=True)


class _Recorder(_Builder):
    """A normal build that also writes every leaf's states (context K/V at the leaf layers and
    hidden state after the last leaf layer's attention; the prefix's once, from leaf 0)."""

    def __init__(self, *args, path, extra_tensors: dict | None, build_metadata: dict | None, fingerprint: str,
                 config: HomerConfig, model_name: str):
        super().__init__(*args)
        plan, stack, dtype = self.plan, self.stack, self.kv_dtype
        layers = len(plan.layers_at(0))
        kv, d, hidden = stack.num_kv_heads, stack.head_dim, int(stack.embed_tokens.weight.shape[1])
        p = plan.prefix_len
        self.extra = {name: torch.as_tensor(t) for name, t in (extra_tensors or {}).items()}
        specs = [("prefix_ids", torch.int64, (p,)), ("context_ids", torch.int64, (plan.context_len,))]
        if self.units is not None:
            specs.append(("context_units", torch.int64, (plan.context_len,)))
        specs += [(f"extra.{name}", t.dtype, tuple(t.shape)) for name, t in self.extra.items()]
        specs += [("prefix.keys", dtype, (layers, kv, p, d)), ("prefix.values", dtype, (layers, kv, p, d)),
                  ("prefix.hidden", dtype, (p, hidden))]
        for i in range(plan.num_leaves):
            start, end = plan.slice_bounds(i)
            n = end - start
            specs += [(f"leaf.{i}.keys", dtype, (layers, kv, n, d)), (f"leaf.{i}.values", dtype, (layers, kv, n, d)),
                      (f"leaf.{i}.hidden", dtype, (n, hidden))]
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_fingerprint": fingerprint,
            "model_name": model_name, "settings": config.settings_json(),
            "rope_parameters": json.dumps(getattr(stack.config, "rope_parameters", None), default=str),
            "prefix_len": p, "context_len": plan.context_len, "suffix_len": plan.suffix_len,
            "num_leaves": plan.num_leaves, "slice_len": plan.slice_len, "leaf_layers": layers,
            "build_metadata": json.dumps({k: str(v) for k, v in (build_metadata or {}).items()}),
        }
        self.writer = _StreamingSafetensors(path, specs, meta)
        self.writer.write("prefix_ids", self.prefix)
        self.writer.write("context_ids", self.context)
        if self.units is not None:
            self.writer.write("context_units", self.units)
        for name, t in self.extra.items():
            self.writer.write(f"extra.{name}", t)
        self._leaf = None

    def read_leaf(self, index: int, target: int) -> Node:
        self._leaf = index
        try:
            return super().read_leaf(index, target)
        finally:
            self._leaf = None

    def before_prune(self, node: Node, layers: range) -> None:
        if self._leaf is None:
            return
        p, s = self.plan.prefix_len, self.plan.suffix_len
        n = len(node) - p - s

        def part(tensors: list, a: int, b: int) -> torch.Tensor:
            return torch.stack([t[:, a:b] for t in tensors]).to("cpu", self.kv_dtype)

        if self._leaf == 0:
            self.writer.write("prefix.keys", part(node.keys, 0, p))
            self.writer.write("prefix.values", part(node.values, 0, p))
            self.writer.write("prefix.hidden", node.hidden[0, :p].to("cpu", self.kv_dtype))
        self.writer.write(f"leaf.{self._leaf}.keys", part(node.keys, p, p + n))
        self.writer.write(f"leaf.{self._leaf}.values", part(node.values, p, p + n))
        self.writer.write(f"leaf.{self._leaf}.hidden", node.hidden[0, p : p + n].to("cpu", self.kv_dtype))

    def finish(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


def recording_builder(path, extra_tensors: dict | None, build_metadata: dict | None):
    """The builder factory ``build_cache(leaf_states=path)`` uses."""

    def make(*args, fingerprint: str, config: HomerConfig) -> _Recorder:
        model = args[0].model
        name = getattr(model, "homer_name", None) or getattr(model.config, "_name_or_path", "") or ""
        return _Recorder(*args, path=path, extra_tensors=extra_tensors, build_metadata=build_metadata,
                         fingerprint=fingerprint, config=config, model_name=name)

    return make


# --- reading ---------------------------------------------------------------------------
class LeafStates(StoredMetadata):
    """A leaf-state file, read lazily (one leaf at a time, memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                self.metadata = dict(fh.metadata() or {})
                self.names = set(fh.keys())
        except Exception as exc:
            raise LeafStateMismatchError(f"{self.path.name} cannot be read as HOMER leaf states: {exc}") from exc
        if self.metadata.get("format") != FORMAT:
            raise LeafStateMismatchError(f"{self.path.name} is not a HOMER leaf-state file")
        if self.metadata.get("format_version") != FORMAT_VERSION:
            raise LeafStateMismatchError(f"{self.path.name} has leaf-state format version "
                                         f"{self.metadata.get('format_version')}, this version reads {FORMAT_VERSION}")
        self._prefix = None

    @classmethod
    def open(cls, path, model=None, expected_fingerprint: str | None = None,
             config: HomerConfig | None = None) -> "LeafStates":
        """Open and check: with ``model`` / ``expected_fingerprint`` the file must come from
        that model, with ``config`` its state-shaping settings must match, else
        :class:`LeafStateMismatchError`."""
        states = cls(path)
        if model is not None:
            from .fingerprint import model_fingerprint

            expected_fingerprint = model_fingerprint(model)
        if expected_fingerprint is not None:
            states.check_fingerprint(expected_fingerprint)
        if config is not None:
            states.config_for(config, model.config if model is not None else None)
        return states

    # metadata ---------------------------------------------------------------------------
    def _int(self, key: str) -> int:
        return int(self.metadata[key])

    @property
    def build_metadata(self) -> dict:
        return json.loads(self.metadata.get("build_metadata", "{}"))

    @property
    def num_leaves(self) -> int:
        return self._int("num_leaves")

    @property
    def slice_len(self) -> int:
        return self._int("slice_len")

    def check_fingerprint(self, fingerprint: str) -> None:
        if self.fingerprint != fingerprint:
            raise LeafStateMismatchError(
                f"{self.path.name} was made by model {self.metadata.get('model_name', '?')} "
                f"(fingerprint {self.fingerprint[:12]}), not by the loaded model (fingerprint {fingerprint[:12]})")

    def config_for(self, config: HomerConfig | None = None, model_config=None) -> HomerConfig:
        """The stored settings, or ``config`` after checking that the settings which shape
        the stored states (:data:`STATE_SETTINGS`) are the same."""
        stored = self.settings
        if config is None:
            if stored.get("custom_bias"):
                raise ValueError("these leaf states were built with a custom bias: pass the config with its bias")
            return HomerConfig(**{k: v for k, v in stored.items() if k != "custom_bias"})
        resolved = config.resolve(model_config) if model_config is not None else config
        diff = [k for k in STATE_SETTINGS
                if getattr(resolved, k) is not None and getattr(resolved, k) != stored.get(k)]
        if diff:
            raise LeafStateMismatchError(
                f"{self.path.name} was made with other settings: "
                + ", ".join(f"{k}={stored.get(k)!r} (not {getattr(resolved, k)!r})" for k in diff))
        return config

    def fits(self, plan) -> bool:
        """Whether a plan (the new suffix length) keeps the stored leaves."""
        return (plan.num_leaves == self.num_leaves and plan.slice_len == self.slice_len
                and plan.prefix_len == self._int("prefix_len") and plan.context_len == self._int("context_len")
                and len(plan.layers_at(0)) == self._int("leaf_layers"))

    # tensors ----------------------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt", device="cpu") as fh:
            return fh.get_tensor(name)

    def tensors(self, *names: str) -> list[torch.Tensor]:
        with safe_open(str(self.path), framework="pt", device="cpu") as fh:
            return [fh.get_tensor(name) for name in names]

    @property
    def prefix_ids(self) -> torch.Tensor:
        return self.tensor("prefix_ids")

    @property
    def context_ids(self) -> torch.Tensor:
        return self.tensor("context_ids")

    @property
    def context_units(self) -> torch.Tensor | None:
        return self.tensor("context_units") if "context_units" in self.names else None

    def extra(self, name: str) -> torch.Tensor | None:
        return self.tensor(f"extra.{name}") if f"extra.{name}" in self.names else None

    def prefix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix (keys [Lw, KV, P, d], values, hidden [P, H]), read once."""
        if self._prefix is None:
            self._prefix = tuple(self.tensors("prefix.keys", "prefix.values", "prefix.hidden"))
        return self._prefix

    def leaf(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context part of leaf ``index``: keys [Lw, KV, n, d], values, hidden [n, H]."""
        return tuple(self.tensors(f"leaf.{index}.keys", f"leaf.{index}.values", f"leaf.{index}.hidden"))

    @property
    def bytes_per_token(self) -> float:
        return self.path.stat().st_size / max(1, self._int("context_len"))


# --- the deep read ---------------------------------------------------------------------
def attention_with_past(stack: DecoderStack, layer_idx: int, hidden: torch.Tensor, rope, past_k: torch.Tensor,
                        past_v: torch.Tensor):
    """``DecoderStack.attention_half`` for new tokens after ``past`` ones: the new tokens see
    every past token and each other causally. hidden [1, n, H]; past_k/v [KV, m, d].

    Returns (hidden after the residual add, post-RoPE q [1, H, n, d], k [1, KV, n, d], v)."""
    layer = stack.layers[layer_idx]
    attn = layer.self_attn
    n, d = hidden.shape[1], stack.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, n, -1, d)
    k = attn.k_proj(x).view(1, n, -1, d)
    v = attn.v_proj(x).view(1, n, -1, d).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = rope
    q = apply_rope(q.transpose(1, 2), cos, sin)
    k = apply_rope(k.transpose(1, 2), cos, sin)
    m = past_k.shape[1]
    keys = torch.cat([past_k.unsqueeze(0).to(k.device, k.dtype), k], 2)
    values = torch.cat([past_v.unsqueeze(0).to(v.device, v.dtype), v], 2)
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    cols = torch.arange(m + n, device=q.device)
    mask = cols[None, :] <= (m + torch.arange(n, device=q.device))[:, None]  # [n, m + n]
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=stack.scaling)
    out = attn.o_proj(out.transpose(1, 2).reshape(1, n, -1))
    return hidden + out, q, k, v


class _DeepReader(_Builder):
    """A build whose leaves come from stored states: only the suffix runs the leaf layers."""

    def __init__(self, *args, states: LeafStates):
        super().__init__(*args)
        self.states = states

    def read_leaf(self, index: int, target: int) -> Node:
        stack, plan, s = self.stack, self.plan, self.plan.suffix_len
        node = self.leaf(index)  # ids, sources, reused positions (the embedding is a cheap lookup)
        pk, pv, ph = self.states.prefix()
        ck, cv, ch = self.states.leaf(index)
        device = stack.device
        past_k = torch.cat([pk, ck], 2).to(device)  # [Lw, KV, P + n, d], cache dtype
        past_v = torch.cat([pv, cv], 2).to(device)
        x = node.hidden[:, -s:]
        rope = stack.rope(x, node.positions[-s:])
        layers = plan.layers_at(0)
        self._scores = []
        for j, layer in enumerate(layers):
            x, q, k, v = attention_with_past(stack, layer, x, rope, past_k[j], past_v[j])
            node.keys.append(torch.cat([past_k[j], k[0].to(self.kv_dtype)], 1))
            node.values.append(torch.cat([past_v[j], v[0].to(self.kv_dtype)], 1))
            if len(node) > target and layer in layers[-self.score_layers:]:
                self.note_scores(node, layer, layers, q, torch.cat([past_k[j].unsqueeze(0).to(k.dtype), k], 2), target)
            if layer != layers[-1]:
                x = stack.mlp_half(layer, x)
                continue
            stored = torch.cat([ph, ch], 0).to(device, x.dtype).unsqueeze(0)
            node.hidden = torch.cat([stored, x], 1)
            if len(node) > target:
                self.prune(node, target)
            node.hidden = stack.mlp_half(layer, node.hidden)
        return node


def _as_states(leaf_states) -> LeafStates:
    return leaf_states if isinstance(leaf_states, LeafStates) else LeafStates(leaf_states)


@torch.no_grad()
def deep_read(model, leaf_states, suffix_ids, config: HomerConfig | None = None, progress: Progress | None = None,
              metadata: dict | None = None, fallback: bool = True) -> HomerCache:
    """The cache a full build with ``suffix_ids`` would give, from stored leaf states.

    ``leaf_states``: a path or :class:`LeafStates`. ``config``: default the stored settings;
    pruning settings may differ, the state-shaping ones (:data:`STATE_SETTINGS`) may not.
    When the new suffix changes the number of leaves, a full rebuild from the stored ids
    runs instead (``fallback=False``: :class:`DeepReadUnavailable`). The cache's metadata
    ``deep_read`` says which ("leaf-states" or "full-rebuild")."""
    states = _as_states(leaf_states)
    config = states.config_for(config, model.config)
    meta = states.build_metadata
    meta.update({k: str(v) for k, v in (metadata or {}).items()})

    def make(*args, fingerprint: str, config: HomerConfig) -> _Builder:
        states.check_fingerprint(fingerprint)
        plan = args[1]
        if states.fits(plan):
            meta["deep_read"] = "leaf-states"
            return _DeepReader(*args, states=states)
        if not fallback:
            raise DeepReadUnavailable(
                f"a suffix of {plan.suffix_len} tokens needs {plan.num_leaves} leaves; the stored states have "
                f"{states.num_leaves}: rebuild")
        meta["deep_read"] = "full-rebuild"
        return _Builder(*args)

    return build_cache(model, states.prefix_ids, states.context_ids, suffix_ids, config, progress, meta,
                       states.context_units, _make_builder=make)


def build_document_with_leaf_states(model, tokenizer, text: str, leaf_states, config: HomerConfig | None = None,
                                    **kwargs) -> HomerCache:
    """:func:`homer.document.build_document_cache` that also writes the leaf states to
    ``leaf_states`` (a path) for later :func:`deep_read_document` calls."""
    from .document import build_document_cache

    return build_document_cache(model, tokenizer, text, config, leaf_states=leaf_states, **kwargs)


def _set_char_offsets(cache: HomerCache, offsets: torch.Tensor | None) -> None:
    if offsets is not None:
        cache.char_offsets = torch.where(cache.sources >= 0, offsets[cache.sources.clamp(min=0)], -1)


@torch.no_grad()
def deep_read_document(model, tokenizer, leaf_states, question: str, config: HomerConfig | None = None,
                       progress: Progress | None = None, metadata: dict | None = None,
                       fallback: bool = True) -> HomerCache:
    """A question-aware cache of the document whose leaf states are stored in
    ``leaf_states``: the same prompt layout as the stored build, ``question`` in the suffix,
    metadata ``question`` set (so :class:`homer.Conversation` treats it as question-aware)."""
    from .document import document_prompt_ids
    from .prompting import DocumentPrompt

    states = _as_states(leaf_states)
    stored = states.build_metadata
    if "prompt" not in stored:
        raise LeafStateMismatchError(f"{states.path.name} holds no document prompt: use deep_read with suffix ids")
    prompt = DocumentPrompt.from_json(stored["prompt"])
    prefix_ids, suffix_ids = document_prompt_ids(tokenizer, prompt, question)
    if list(prefix_ids) != states.prefix_ids.tolist():
        raise LeafStateMismatchError("the prompt prefix differs from the stored one (another tokenizer?)")
    meta = {"question": question, **(metadata or {})}
    cache = deep_read(model, states, suffix_ids, config=config, progress=progress, metadata=meta, fallback=fallback)
    _set_char_offsets(cache, states.extra("char_offsets"))
    return cache
