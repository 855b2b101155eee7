"""HOMER settings. Every default is derived from the model (method, Notation table):
M = window / 2, T = M, W ≈ 3/8 · L; all are overridable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch

from .spans import SPAN_CHOICES

SIGNIFICANCE_CHOICES = ("calibrated", "uncalibrated", "random", "reconstruction")
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# RoPE types whose config's max_position_embeddings is already the scaled window (Llama 3.x:
# 131072 with original 8192 and factor 8 or 32; Phi-3/4's LongRoPE: 131072 with original 4096)
_WINDOW_ALREADY_SCALED = ("llama3", "longrope")


def model_window(model_config) -> int:
    """The usable context window (§8): ``max_position_embeddings``, or the original window
    times the RoPE factor when a scaling that extends it is set (YaRN, linear, dynamic NTK —
    Qwen2.5 with YaRN factor 4 on 32768: 131072). Not for RoPE types whose
    ``max_position_embeddings`` already is the scaled window (llama3, longrope), nor for RoPE
    set per layer type (Gemma 3: its 131072 already includes the global layers' factor 8)."""
    window = int(model_config.max_position_embeddings)
    rope = getattr(model_config, "rope_parameters", None) or getattr(model_config, "rope_scaling", None) or {}
    if not isinstance(rope, dict) or "rope_type" not in rope and "type" not in rope:
        return window  # none, or one per layer type
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type in ("default", *_WINDOW_ALREADY_SCALED) or not rope.get("factor"):
        return window
    original = int(rope.get("original_max_position_embeddings") or window)
    return int(original * float(rope["factor"]))


@dataclass(frozen=True)
class HomerConfig:
    """What the user may set. ``None`` means "derive from the model" (see :meth:`resolve`).

    significance: "calibrated" (the paper's, §4), "uncalibrated" (raw logits), "random"
    (ablation) or "reconstruction" (KVzip, arXiv 2505.23416: the attention a teacher-forced
    copy of each leaf chunk pays a token, scored in the leaf stage and carried up the tree,
    see :mod:`homer.reconstruction`). reconstruction_layers: that score is read at the last
    this many leaf layers (those ending at the first prune), max over them; only that
    strategy reads it. pool_width: max-pool scores over that many neighbouring tokens before
    choosing what to drop (0 = the paper's token-level pruning). span: the pruning unit,
    "token" (the paper's), "word" or "sentence" (whole units kept, see :mod:`homer.spans`).
    query_rows: score with the queries of the last r suffix tokens, each token's best over
    them (1 = the paper's last token only). bias_smoothing: average the calibration bias over
    distances within a factor 1 + this of each distance (0 = the table as calibrated, see
    :func:`homer.significance.smooth_bias`). score_layers: score at the last this many layers
    of each block and average their standardised scores (default 4; 1 = the paper's last
    layer only).
    ``bias`` overrides the calibration table looked up by model fingerprint.
    """

    max_chunk_len: int | None = None
    target_len: int | None = None
    warmup_layers: int | None = None
    significance: str = "calibrated"
    pool_width: int = 0
    span: str = "word"
    query_rows: int = 24
    bias_smoothing: float = 0.0
    score_layers: int = 4
    reconstruction_layers: int = 4
    cache_dtype: str = "float16"
    seed: int = 0
    bias: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.significance not in SIGNIFICANCE_CHOICES:
            raise ValueError(f"significance must be one of {SIGNIFICANCE_CHOICES}, got {self.significance!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {tuple(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        for name in ("max_chunk_len", "target_len"):
            value = getattr(self, name)
            if value is not None and value < 4:
                raise ValueError(f"{name} must be at least 4, got {value}")
        if self.span not in SPAN_CHOICES:
            raise ValueError(f"span must be one of {SPAN_CHOICES}, got {self.span!r}")
        if self.query_rows < 1:
            raise ValueError("query_rows must be >= 1")
        if self.score_layers < 1:
            raise ValueError("score_layers must be >= 1")
        if self.reconstruction_layers < 1:
            raise ValueError("reconstruction_layers must be >= 1")
        if self.bias_smoothing < 0:
            raise ValueError("bias_smoothing must be >= 0")
        if self.pool_width < 0:
            raise ValueError("pool_width must be >= 0")
        if self.warmup_layers is not None and self.warmup_layers < 0:
            raise ValueError("warmup_layers must be >= 0")

    @classmethod
    def paper(cls, **overrides) -> "HomerConfig":
        """The paper's method exactly: single tokens scored by the last token's query (§4).
        The defaults differ in three measured ways (README, "Results"): whole words are kept
        or dropped together, a token scores its best over the last 24 suffix queries, and
        the scores of a block's last 4 layers are averaged."""
        return cls(**{"span": "token", "query_rows": 1, "score_layers": 1, **overrides})

    def resolve(self, model_config) -> "HomerConfig":
        """A copy with every ``None`` replaced by the model-derived default."""
        layers = int(model_config.num_hidden_layers)
        m = self.max_chunk_len or model_window(model_config) // 2
        t = self.target_len or m
        w = self.warmup_layers if self.warmup_layers is not None else round(3 * layers / 8)
        if w >= layers:
            raise ValueError(f"warmup_layers={w} leaves no layer for merging (the model has {layers})")
        return replace(self, max_chunk_len=m, target_len=t, warmup_layers=w)

    def settings(self) -> dict:
        """The settings that define a cache (JSON-serialisable; no bias tensor)."""
        data = asdict(self)
        data.pop("bias")
        for name, off in (("bias_smoothing", 0.0), ("score_layers", 1)):
            if data[name] == off:  # absent = off: caches built before the setting keep their key
                data.pop(name)
        if self.significance != "reconstruction":  # only that strategy reads it
            data.pop("reconstruction_layers")
        data["custom_bias"] = self.bias is not None
        return data

    def settings_json(self) -> str:
        return json.dumps(self.settings(), sort_keys=True)

    @property
    def torch_cache_dtype(self) -> torch.dtype:
        return CACHE_DTYPES[self.cache_dtype]
