"""The compact cache HOMER produces (method §7): per-layer K/V of ~T tokens with their reused
position ids, saved as safetensors (no pickle) and turned into a transformers DynamicCache.

Owns :class:`HomerCache`, its file format and the checks a file passes before it is used.
A model's dimensions come from :mod:`homer.model_shape`; answering from a cache
(``HomerCache.stream_answer``) hands over to :mod:`homer.generation`.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half

from .model_shape import known_model_shape, model_shape

FORMAT = "homer-cache"
FORMAT_VERSION = "1"


class CacheMismatchError(ValueError):
    """A cache file was made for another model (or is not a HOMER cache)."""


class CacheStructureError(CacheMismatchError):
    """A cache file's tensors do not fit together (or do not fit the model): a missing tensor,
    a wrong dtype, shapes that disagree, positions out of range. Such a file is never used."""


# What a HOMER cache file holds: name -> (rank, allowed safetensors dtypes). keys/values are
# [L, KV, T, d]; the per-token tensors are [T]; last_logits [V]; inv_freq [d/2].
_FLOATS = ("F16", "BF16", "F32")
_LAYOUT = {
    "keys": (4, _FLOATS),
    "values": (4, _FLOATS),
    "positions": (1, ("I64",)),
    "token_ids": (1, ("I64",)),
    "sources": (1, ("I64",)),
    "last_logits": (1, _FLOATS),
    "inv_freq": (1, _FLOATS),
}
_OPTIONAL = {"char_offsets": (1, ("I64",))}
MAX_POSITION = 2**31 - 1
_WINDOW_FACTOR = 4  # positions are reused within the window; allow room for scaled RoPE configs


def check_cache_layout(
    name: str, specs: dict[str, tuple[str, list[int]]], meta: dict, shape: dict | None = None
) -> tuple[int, int]:
    """Refuse a cache whose tensor headers do not fit together (or the model's ``shape``,
    see :func:`model_shape`), from names, dtypes and shapes alone (nothing is read).
    ``specs``: tensor name -> (safetensors dtype, shape). Returns (prefix_len, suffix_len)."""

    def refuse(reason: str):
        raise CacheStructureError(f"{name} is not a consistent HOMER cache: {reason}")

    missing = [t for t in _LAYOUT if t not in specs]
    if missing:
        refuse(f"missing tensor(s) {', '.join(missing)}")
    for tensor, (rank, dtypes) in {**_LAYOUT, **{k: v for k, v in _OPTIONAL.items() if k in specs}}.items():
        dtype, dims = specs[tensor]
        if dtype not in dtypes:
            refuse(f"{tensor} is stored as {dtype}, expected {' or '.join(dtypes)}")
        if len(dims) != rank:
            refuse(f"{tensor} has {len(dims)} dimension(s), expected {rank}")
    layers, kv_heads, tokens, head_dim = specs["keys"][1]
    if specs["values"][1] != specs["keys"][1]:
        refuse(f"values have shape {list(specs['values'][1])}, keys {list(specs['keys'][1])}")
    if specs["values"][0] != specs["keys"][0]:
        refuse(f"values are {specs['values'][0]}, keys {specs['keys'][0]}")
    if min(layers, kv_heads, tokens, head_dim) < 1:
        refuse(f"keys have an empty dimension {list(specs['keys'][1])}")
    for tensor in ("positions", "token_ids", "sources", "char_offsets"):
        if tensor in specs and specs[tensor][1][0] != tokens:
            refuse(f"{tensor} has {specs[tensor][1][0]} entries for {tokens} cached tokens")
    if head_dim % 2 or specs["inv_freq"][1][0] != head_dim // 2:
        refuse(f"inv_freq has {specs['inv_freq'][1][0]} entries for head dimension {head_dim}")
    try:
        prefix_len, suffix_len = int(meta["prefix_len"]), int(meta["suffix_len"])
    except (KeyError, TypeError, ValueError):
        refuse("prefix_len / suffix_len missing or not integers")
    if prefix_len < 0 or suffix_len < 0 or prefix_len + suffix_len > tokens:
        refuse(f"prefix {prefix_len} and suffix {suffix_len} tokens do not fit in {tokens} cached tokens")
    if shape is not None:
        for what, found in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if found != shape[what]:
                refuse(f"{found} {what.replace('_', ' ')}, the model has {shape[what]}")
        if specs["last_logits"][1][0] != shape["vocab"]:
            refuse(f"last_logits has {specs['last_logits'][1][0]} entries, the model's vocabulary {shape['vocab']}")
    return prefix_len, suffix_len


def check_cache_values(name: str, tensors: dict[str, torch.Tensor], shape: dict | None = None) -> None:
    """The O(T) checks on the loaded per-token tensors: positions, token ids and source
    indices within range (a position out of range would rotate keys to garbage)."""

    def refuse(reason: str):
        raise CacheStructureError(f"{name} is not a consistent HOMER cache: {reason}")

    positions = tensors["positions"]
    limit = MAX_POSITION
    if shape is not None and shape.get("window"):
        limit = min(limit, shape["window"] * _WINDOW_FACTOR)
    if int(positions.min()) < 0 or int(positions.max()) > limit:
        refuse(f"positions run from {int(positions.min())} to {int(positions.max())}, outside 0..{limit}")
    token_ids = tensors["token_ids"]
    vocab = shape["vocab"] if shape is not None else MAX_POSITION + 1
    if int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab:
        refuse(f"token ids run from {int(token_ids.min())} to {int(token_ids.max())}, outside 0..{vocab - 1}")
    for tensor in ("sources", "char_offsets"):
        if tensor in tensors and int(tensors[tensor].min()) < -1:
            refuse(f"{tensor} has entries below -1")
    for tensor in ("inv_freq", "last_logits"):
        if not bool(torch.isfinite(tensors[tensor]).all()):
            refuse(f"{tensor} holds non-finite numbers")


def writer_tag() -> str:
    """``host-pid`` of this process as temp file names carry it: the host name without dots
    or colons, the same form as the store's ``owner_token`` with ``:`` → ``-``."""
    host = socket.gethostname().replace(".", "_").replace(":", "_") or "host"
    return f"{host}-{os.getpid()}"


def rotate_keys(keys: torch.Tensor, inv_freq: torch.Tensor, offset: int, rotary_dim: int | None = None) -> torch.Tensor:
    """Rotate post-RoPE keys [..., d] by a constant position offset — pure rotation by
    inv_freq (no YaRN attention factor), computed in float32 (§7). ``rotary_dim``: only the
    first that many dimensions carry RoPE (partial rotary, Phi-4-mini), rotated by the first
    rotary_dim / 2 frequencies; the rest pass through."""
    if offset == 0:
        return keys
    rotary_dim = rotary_dim or keys.shape[-1]
    angles = float(offset) * inv_freq[: rotary_dim // 2].to(keys.device, torch.float64)
    emb = torch.cat([angles, angles])
    cos, sin = emb.cos().float(), emb.sin().float()
    k = keys.float()
    rotated, passed = k[..., :rotary_dim], k[..., rotary_dim:]
    rotated = rotated * cos + rotate_half(rotated) * sin
    return torch.cat([rotated, passed], -1).to(keys.dtype)


class StoredMetadata:
    """The model fingerprint and build settings read from a file's ``metadata`` dict (of
    str → str), shared by :class:`HomerCache` and the deep-read leaf states."""

    @property
    def fingerprint(self) -> str:
        return self.metadata.get("model_fingerprint", "")

    @property
    def settings(self) -> dict:
        return json.loads(self.metadata.get("settings", "{}"))


@dataclass
class HomerCache(StoredMetadata):
    """The output of a HOMER build.

    keys/values: [L, KV, T, d]; positions: reused position ids [T]; token_ids: the kept
    tokens [T]; sources: index of each kept token in the context (−1 for prefix/suffix);
    char_offsets: character offset in the source document (−1 where unknown);
    last_logits: logits of the last suffix token (the first answer token of a question-aware
    build); inv_freq: the model's RoPE frequencies; metadata: fingerprint, settings, …"""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    token_ids: torch.Tensor
    sources: torch.Tensor
    prefix_len: int
    suffix_len: int
    last_logits: torch.Tensor
    inv_freq: torch.Tensor
    char_offsets: torch.Tensor | None = None
    metadata: dict = field(default_factory=dict)

    # --- shape and positions ---------------------------------------------------------
    def __len__(self) -> int:
        return int(self.keys.shape[2])

    @property
    def num_layers(self) -> int:
        return int(self.keys.shape[0])

    @property
    def last_position(self) -> int:
        """Position id of the last cached token; generation continues at +1 (§7)."""
        return int(self.positions[-1])

    @property
    def next_position(self) -> int:
        return self.last_position + 1

    # --- transformers interop ----------------------------------------------------------
    def to_dynamic_cache(
        self, dtype: torch.dtype | None = None, device=None, rerotate: bool = True, config=None
    ) -> DynamicCache:
        """A fresh DynamicCache (the stored tensors are never shared or mutated).

        With ``rerotate`` (default) every key is rotated by δ = (len − 1) − last_position, so
        the next position is ``len(self)`` and stock ``model.generate`` continues correctly.
        Without it, positions stay as built and the caller continues at ``next_position``.
        A model whose RoPE base differs per layer type (Gemma 3) keeps only one ``inv_freq``
        here: its cache is not re-rotated (ValueError); continue at ``next_position``."""
        dtype = dtype or torch.float32
        offset = (len(self) - 1) - self.last_position if rerotate else 0
        if offset and self.metadata.get("rope_by_layer_type"):
            raise ValueError(
                "this model's RoPE differs per layer type: its cache cannot be re-rotated with one "
                "inv_freq; use rerotate=False and continue at next_position"
            )
        rotary_dim = int(self.metadata.get("rotary_dim") or 0) or None
        cache = DynamicCache(config=config)
        for layer in range(self.num_layers):
            k = rotate_keys(self.keys[layer].unsqueeze(0).float(), self.inv_freq, offset, rotary_dim)
            v = self.values[layer].unsqueeze(0)
            cache.update(
                k.to(device=device, dtype=dtype).contiguous(), v.to(device=device, dtype=dtype).contiguous(), layer
            )
        return cache

    # --- persistence -------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "keys": self.keys.contiguous(),
            "values": self.values.contiguous(),
            "positions": self.positions.to(torch.int64).contiguous(),
            "token_ids": self.token_ids.to(torch.int64).contiguous(),
            "sources": self.sources.to(torch.int64).contiguous(),
            "last_logits": self.last_logits.float().contiguous(),
            "inv_freq": self.inv_freq.float().contiguous(),
        }
        if self.char_offsets is not None:
            out["char_offsets"] = self.char_offsets.to(torch.int64).contiguous()
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: temp file in the same folder → fsync → rename. The temp name
        carries the writer's ``host-pid`` (:func:`writer_tag`), so a killed writer's leftover
        is known as stale as soon as that process is gone."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: str(v) for k, v in self.metadata.items()}
        meta.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            prefix_len=str(self.prefix_len),
            suffix_len=str(self.suffix_len),
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(self.tensors(), tmp, metadata=meta)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model=None,
        expected_fingerprint: str | None = None,
        device: str = "cpu",
        config=None,
    ) -> "HomerCache":
        """Load a cache file (memory-mapped). With ``model`` or ``expected_fingerprint`` the
        file must have been built by that model, else :class:`CacheMismatchError`.

        The file's structure is checked before its tensors are read (required tensors, dtypes,
        ranks, equal token counts, prefix/suffix lengths), against the model's dimensions too
        when the model (``model``, ``config``, or a fingerprint computed in this process) is
        known; then positions and ids are range-checked. Any failure is a
        :class:`CacheStructureError` (one line): such a file is never used."""
        path = Path(path)
        if model is not None:
            from .fingerprint import model_fingerprint

            expected_fingerprint = model_fingerprint(model)
            config = config if config is not None else model.config
        shape = model_shape(config) if config is not None else known_model_shape(expected_fingerprint)
        try:
            with safe_open(str(path), framework="pt", device=device) as fh:
                meta = dict(fh.metadata() or {})
                if meta.get("format") != FORMAT:
                    raise CacheMismatchError(f"{path.name} is not a HOMER cache file")
                if meta.get("format_version") != FORMAT_VERSION:
                    raise CacheMismatchError(
                        f"{path.name} has cache format version {meta.get('format_version')}, "
                        f"this version reads {FORMAT_VERSION}"
                    )
                found = meta.get("model_fingerprint", "")
                if expected_fingerprint is not None and found != expected_fingerprint:
                    raise CacheMismatchError(
                        f"{path.name} was built by model {meta.get('model_name', '?')} "
                        f"(fingerprint {found[:12]}), not by the loaded model "
                        f"(fingerprint {expected_fingerprint[:12]})"
                    )
                specs = {}
                for name in fh.keys():
                    view = fh.get_slice(name)
                    specs[name] = (view.get_dtype(), list(view.get_shape()))
                prefix_len, suffix_len = check_cache_layout(path.name, specs, meta, shape)
                tensors = {name: fh.get_tensor(name) for name in (*_LAYOUT, *_OPTIONAL) if name in specs}
        except CacheMismatchError:
            raise
        except Exception as exc:  # truncated / corrupt file: say so plainly
            reason = " ".join(str(exc).split())[:200]
            raise CacheMismatchError(f"{path.name} cannot be read as a HOMER cache: {reason}") from exc
        check_cache_values(path.name, tensors, shape)
        for key in ("prefix_len", "suffix_len", "format", "format_version"):
            meta.pop(key, None)
        return cls(
            keys=tensors["keys"],
            values=tensors["values"],
            positions=tensors["positions"],
            token_ids=tensors["token_ids"],
            sources=tensors["sources"],
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            last_logits=tensors["last_logits"],
            inv_freq=tensors["inv_freq"],
            char_offsets=tensors.get("char_offsets"),
            metadata=meta,
        )

    # --- conversation ------------------------------------------------------------------
    def stream_answer(self, model, tokenizer, question: str, **generation):
        """Stream the answer to one question (a fresh conversation on a clone of this cache)."""
        from .generation import Conversation

        yield from Conversation(self, model, tokenizer).ask(question, **generation)

    def info(self) -> dict:
        """A short human summary."""
        return {
            "tokens": len(self),
            "layers": self.num_layers,
            "context_tokens": int(self.metadata.get("context_len", 0)),
            "kept_context_tokens": int((self.sources >= 0).sum()),
            "last_position": self.last_position,
            "dtype": str(self.keys.dtype).replace("torch.", ""),
            "bytes": sum(t.numel() * t.element_size() for t in self.tensors().values()),
            **{k: v for k, v in self.metadata.items() if k != "settings"},
            "settings": self.settings,
        }
