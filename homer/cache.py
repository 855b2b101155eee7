"""The compact cache HOMER produces (method §7): per-layer K/V of ~T tokens with their reused
position ids, saved as safetensors (no pickle) and turned into a transformers DynamicCache.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DynamicCache

from transformers.models.llama.modeling_llama import rotate_half

FORMAT = "homer-cache"
FORMAT_VERSION = "1"


class CacheMismatchError(ValueError):
    """A cache file was made for another model (or is not a HOMER cache)."""


def rotate_keys(keys: torch.Tensor, inv_freq: torch.Tensor, offset: int) -> torch.Tensor:
    """Rotate post-RoPE keys [..., d] by a constant position offset — pure rotation by
    inv_freq (no YaRN attention factor), computed in float32 (§7)."""
    if offset == 0:
        return keys
    angles = float(offset) * inv_freq.to(keys.device, torch.float64)
    emb = torch.cat([angles, angles])
    cos, sin = emb.cos().float(), emb.sin().float()
    k = keys.float()
    return (k * cos + rotate_half(k) * sin).to(keys.dtype)


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
    def to_dynamic_cache(self, dtype: torch.dtype | None = None, device=None, rerotate: bool = True,
                         config=None) -> DynamicCache:
        """A fresh DynamicCache (the stored tensors are never shared or mutated).

        With ``rerotate`` (default) every key is rotated by δ = (len − 1) − last_position, so
        the next position is ``len(self)`` and stock ``model.generate`` continues correctly.
        Without it, positions stay as built and the caller continues at ``next_position``."""
        dtype = dtype or torch.float32
        offset = (len(self) - 1) - self.last_position if rerotate else 0
        cache = DynamicCache(config=config)
        for layer in range(self.num_layers):
            k = rotate_keys(self.keys[layer].unsqueeze(0).float(), self.inv_freq, offset)
            v = self.values[layer].unsqueeze(0)
            cache.update(k.to(device=device, dtype=dtype).contiguous(), v.to(device=device, dtype=dtype).contiguous(), layer)
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
        """Write atomically: temp file in the same folder → fsync → rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: str(v) for k, v in self.metadata.items()}
        meta.update(format=FORMAT, format_version=FORMAT_VERSION,
                    prefix_len=str(self.prefix_len), suffix_len=str(self.suffix_len))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    def load(cls, path: str | os.PathLike, model=None, expected_fingerprint: str | None = None,
             device: str = "cpu") -> "HomerCache":
        """Load a cache file (memory-mapped). With ``model`` or ``expected_fingerprint`` the
        file must have been built by that model, else :class:`CacheMismatchError`."""
        path = Path(path)
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
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except CacheMismatchError:
            raise
        except Exception as exc:  # truncated / corrupt file: say so plainly
            raise CacheMismatchError(f"{path.name} cannot be read as a HOMER cache: {exc}") from exc
        if model is not None:
            from .fingerprint import model_fingerprint

            expected_fingerprint = model_fingerprint(model)
        found = meta.get("model_fingerprint", "")
        if expected_fingerprint is not None and found != expected_fingerprint:
            raise CacheMismatchError(
                f"{path.name} was built by model {meta.get('model_name', '?')} "
                f"(fingerprint {found[:12]}), not by the loaded model (fingerprint {expected_fingerprint[:12]})"
            )
        prefix_len, suffix_len = int(meta.pop("prefix_len")), int(meta.pop("suffix_len"))
        meta.pop("format"), meta.pop("format_version")
        return cls(
            keys=tensors["keys"], values=tensors["values"], positions=tensors["positions"],
            token_ids=tensors["token_ids"], sources=tensors["sources"], prefix_len=prefix_len,
            suffix_len=suffix_len, last_logits=tensors["last_logits"], inv_freq=tensors["inv_freq"],
            char_offsets=tensors.get("char_offsets"), metadata=meta,
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
