"""Calibration of the significance score (method §4): bias[ℓ][d] = mean over calibration
chunks of max_h(q_last · k_{last−d}) · scaling at layer ℓ. Shape [L, M], stored as
safetensors with the model fingerprint; ``build_cache`` finds it by fingerprint and M."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .fingerprint import model_fingerprint
from .layers import DecoderStack
from .paths import calibration_dir
from .significance import last_query_logits


def bias_filename(fingerprint: str, max_chunk_len: int) -> str:
    return f"bias-{fingerprint}-M{max_chunk_len}.safetensors"


def _packaged_dir() -> Path:
    return Path(str(resources.files("homer") / "data"))


def find_bias(fingerprint: str, max_chunk_len: int, folders: Iterable[Path] | None = None) -> torch.Tensor | None:
    """The bias table for this model and M: the user's calibration folder first, then the
    tables that ship with the package. Without a table for M, the first M distances of the
    nearest table for a larger M serve (the statistic per distance is the same). None when
    there is none."""
    folders = [Path(f) for f in (folders or (calibration_dir(), _packaged_dir()))]
    for folder in folders:
        path = folder / bias_filename(fingerprint, max_chunk_len)
        if path.exists():
            return load_bias(path, fingerprint)
    larger = []
    for folder in folders:
        for path in folder.glob(f"bias-{fingerprint}-M*.safetensors"):
            m = path.stem.rsplit("-M", 1)[-1]
            if m.isdigit() and int(m) > max_chunk_len:
                larger.append((int(m), path))
    if larger:
        return load_bias(min(larger)[1], fingerprint)[:, :max_chunk_len].contiguous()
    return None


def load_bias(path: Path, fingerprint: str | None = None) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if fingerprint is not None and meta.get("model_fingerprint") != fingerprint:
            raise ValueError(f"{Path(path).name} was calibrated for another model")
        return fh.get_tensor("bias")


STATISTICS = ("mean", "median")


@torch.no_grad()
def calibrate(
    model,
    chunks: Iterable[torch.Tensor],
    max_chunk_len: int,
    progress: Callable[[int, int, str], None] | None = None,
    prefix_ids=None,
    suffix_ids=None,
    statistic: str = "mean",
) -> torch.Tensor:
    """bias[ℓ][d]: the last token's logit at distance d, per layer, over calibration chunks
    of M tokens at positions 0..M−1, with the same statistic the build uses (§4).

    With ``prefix_ids``/``suffix_ids`` every chunk is laid out like a build-time leaf —
    prefix + M−P−S context tokens + the real suffix — so the last query is the one the build
    scores with. ``statistic``: "mean" (the paper's) or "median" (robust to the few chunks
    where one token draws all the attention)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}")
    stack = DecoderStack(model)
    prefix = torch.as_tensor(prefix_ids if prefix_ids is not None else [], dtype=torch.long).reshape(-1)
    suffix = torch.as_tensor(suffix_ids if suffix_ids is not None else [], dtype=torch.long).reshape(-1)
    room = max_chunk_len - len(prefix) - len(suffix)
    if room < 1:
        raise ValueError("the prefix and suffix leave no room for context in a chunk")
    chunks = [torch.as_tensor(c, dtype=torch.long).reshape(-1)[:room] for c in chunks]
    chunks = [torch.cat([prefix, c, suffix]) for c in chunks if len(c) == room]
    if not chunks:
        raise ValueError(f"calibration needs at least one chunk of {room} context tokens")
    per_chunk = torch.zeros(len(chunks), stack.num_layers, max_chunk_len, dtype=torch.float32)
    positions = torch.arange(max_chunk_len)
    for i, ids in enumerate(chunks):
        hidden = stack.embed(ids)
        rope = stack.rope(hidden, positions)
        for layer in range(stack.num_layers):
            hidden, q, k, _ = stack.attention_half(layer, hidden, rope)
            logits = last_query_logits(q[0, :, -1, :], k[0], stack.scaling).float().cpu()  # index j
            per_chunk[i, layer] = logits.flip(0)  # index d = last − j
            hidden = stack.mlp_half(layer, hidden)
        if progress is not None:
            progress(i + 1, len(chunks), f"calibration chunk {i + 1}/{len(chunks)}")
    if statistic == "median":
        return per_chunk.median(dim=0).values
    return per_chunk.double().mean(dim=0).float()


def save_bias(
    bias: torch.Tensor, model, max_chunk_len: int, folder: Path | None = None, details: dict | None = None
) -> Path:
    """Store the table as ``bias-<fingerprint>-M<M>.safetensors`` (no pickle)."""
    fingerprint = model_fingerprint(model)
    folder = Path(folder or calibration_dir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / bias_filename(fingerprint, max_chunk_len)
    meta = {
        "model_fingerprint": fingerprint,
        "max_chunk_len": str(max_chunk_len),
        "rope": json.dumps(getattr(model.config, "rope_parameters", None), default=str),
        **{k: str(v) for k, v in (details or {}).items()},
    }
    save_file({"bias": bias.contiguous()}, str(path), metadata=meta)
    return path
