"""The leaf-state file a build can store for later query-aware deep reads
(:mod:`homer.answering.deep_read`): its format, the settings that shape it, the streaming writer and
the builder mix-in that write it during ``build_cache(leaf_states=path)`` (leaf by leaf,
atomically), and :class:`LeafStates`, which reads it back lazily.

Tensors, in this order: ``prefix_ids``, ``context_ids``, ``context_units`` (span builds),
``extra.<name>`` (e.g. the document's character offsets), ``prefix.keys`` / ``.values`` /
``.hidden`` (once, from leaf 0), then ``leaf.<i>.keys`` / ``.values`` / ``.hidden`` for every
leaf: K/V at the leaf layers, hidden states after the last leaf layer's attention.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from .cache import CacheMismatchError, StoredMetadata
from .config import HomerConfig

log = logging.getLogger(__name__)

FORMAT = "homer-leaf-states"
FORMAT_VERSION = "1"
# settings that shape the stored states; the others (target, significance, …) act after them
STATE_SETTINGS = ("max_chunk_len", "warmup_layers", "cache_dtype", "span")
_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


class LeafStateMismatchError(CacheMismatchError):
    """A leaf-state file was made for another model or other settings (or is not one)."""


# --- writing, during a build -----------------------------------------------------------
class _StreamingSafetensors:
    """A safetensors file written tensor by tensor in a fixed, declared order: the header
    (names, dtypes, shapes, offsets) is known up front, the data is appended as it comes.
    Written to a temp file in the same folder, fsynced and renamed on :meth:`close`."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, torch.dtype, tuple]], metadata: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header, offset = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, 0
        self.offsets = []  # where each tensor's data starts, after the header
        for name, dtype, shape in specs:
            self.offsets.append(offset)
            size = torch.tensor([], dtype=dtype).element_size()
            for dim in shape:
                size *= int(dim)
            header[name] = {
                "dtype": _ST_DTYPES[dtype],
                "shape": [int(d) for d in shape],
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.specs = list(specs)
        self.next = 0
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.fh = os.fdopen(fd, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)
        self.data_start = 8 + len(raw)

    def index(self, name: str) -> int:
        """The position of tensor ``name`` in the declared order."""
        return next(i for i, (want, _, _) in enumerate(self.specs) if want == name)

    def rewind(self, index: int) -> None:
        """Forget every tensor from the ``index``-th on (they are written again)."""
        self.fh.flush()
        self.fh.seek(self.data_start + self.offsets[index])
        self.fh.truncate()
        self.next = index

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want, dtype, shape = self.specs[self.next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise RuntimeError(
                f"leaf states: expected {want} {dtype} {tuple(shape)}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
            )
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


class LeafStateRecording:
    """Mixed into the tree builder (:class:`homer.tree._Builder`, before it in the bases): a
    normal build that also writes every leaf's states (context K/V at the leaf layers and
    hidden state after the last leaf layer's attention; the prefix's once, from leaf 0).
    It uses the builder's ``plan``, ``stack``, ``kv_dtype``, ``units`` and ``checkpoints`` and
    its hooks (``read_leaf``, ``before_prune``, ``resume_leaves``, ``finish``, ``abort``); nodes
    are :class:`homer.tree.Node`.

    Resuming (``build_cache(checkpoints=...)``): every leaf's recorded states are also saved
    as checkpoint entry ``states-<i>``, and a leaf the build takes from a checkpointed subtree
    has its states copied from there into the file, in order; when one is missing or
    unreadable, the file is rewound to that subtree's first leaf and the subtree is built
    again, so the file is always the one-shot build's. These entries are kept until the
    checkpoints are cleared (after the cache is stored)."""

    def __init__(
        self,
        *args,
        path,
        extra_tensors: dict | None,
        build_metadata: dict | None,
        fingerprint: str,
        config: HomerConfig,
        model_name: str,
    ):
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
        specs += [
            ("prefix.keys", dtype, (layers, kv, p, d)),
            ("prefix.values", dtype, (layers, kv, p, d)),
            ("prefix.hidden", dtype, (p, hidden)),
        ]
        for i in range(plan.num_leaves):
            start, end = plan.slice_bounds(i)
            n = end - start
            specs += [
                (f"leaf.{i}.keys", dtype, (layers, kv, n, d)),
                (f"leaf.{i}.values", dtype, (layers, kv, n, d)),
                (f"leaf.{i}.hidden", dtype, (n, hidden)),
            ]
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_fingerprint": fingerprint,
            "model_name": model_name,
            "settings": config.settings_json(),
            "rope_parameters": json.dumps(getattr(stack.config, "rope_parameters", None), default=str),
            "prefix_len": p,
            "context_len": plan.context_len,
            "suffix_len": plan.suffix_len,
            "num_leaves": plan.num_leaves,
            "slice_len": plan.slice_len,
            "leaf_layers": layers,
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

    def read_leaf(self, index: int, target: int):
        self._leaf = index
        try:
            return super().read_leaf(index, target)
        finally:
            self._leaf = None

    def before_prune(self, node, layers: range) -> None:
        if self._leaf is None:
            return
        p, s = self.plan.prefix_len, self.plan.suffix_len
        n = len(node) - p - s

        def part(tensors: list, a: int, b: int) -> torch.Tensor:
            return torch.stack([t[:, a:b] for t in tensors]).to("cpu", self.kv_dtype)

        i = self._leaf
        states = {}
        if i == 0:
            states["prefix.keys"] = part(node.keys, 0, p)
            states["prefix.values"] = part(node.values, 0, p)
            states["prefix.hidden"] = node.hidden[0, :p].to("cpu", self.kv_dtype)
        states[f"leaf.{i}.keys"] = part(node.keys, p, p + n)
        states[f"leaf.{i}.values"] = part(node.values, p, p + n)
        states[f"leaf.{i}.hidden"] = node.hidden[0, p : p + n].to("cpu", self.kv_dtype)
        for name, tensor in states.items():
            self.writer.write(name, tensor)
        if self.checkpoints is not None:
            self.checkpoints.save(f"states-{i}", states, {"leaf": i})

    def resume_leaves(self, first_leaf: int, count: int) -> bool:
        """Copy the checkpointed states of leaves ``first_leaf`` … into the file (see the class
        docstring); False, with the file rewound, when one of them cannot be used."""
        first_name = "prefix.keys" if first_leaf == 0 else f"leaf.{first_leaf}.keys"
        mark = self.writer.index(first_name)
        if self.writer.next != mark:  # not where this subtree's states go: build it
            return False
        for i in range(first_leaf, first_leaf + count):
            entry = self.checkpoints.load(f"states-{i}")
            names = (["prefix.keys", "prefix.values", "prefix.hidden"] if i == 0 else []) + [
                f"leaf.{i}.keys",
                f"leaf.{i}.values",
                f"leaf.{i}.hidden",
            ]
            try:
                if entry is None:
                    raise LookupError("no checkpoint of them")
                for name in names:
                    if name not in entry[0]:
                        raise LookupError(f"their checkpoint has no {name}")
                    self.writer.write(name, entry[0][name])
            except (LookupError, RuntimeError) as exc:
                self.writer.rewind(mark)
                log.warning(
                    "the recorded leaf states of leaf %d cannot be taken from the checkpoints (%s): "
                    "leaves %d-%d are built again",
                    i + 1,
                    exc,
                    first_leaf + 1,
                    first_leaf + count,
                )
                return False
        return super().resume_leaves(first_leaf, count)

    def finish(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


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
            raise LeafStateMismatchError(
                f"{self.path.name} has leaf-state format version "
                f"{self.metadata.get('format_version')}, this version reads {FORMAT_VERSION}"
            )
        self._prefix = None

    @classmethod
    def open(
        cls, path, model=None, expected_fingerprint: str | None = None, config: HomerConfig | None = None
    ) -> "LeafStates":
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
                f"(fingerprint {self.fingerprint[:12]}), not by the loaded model (fingerprint {fingerprint[:12]})"
            )

    def config_for(self, config: HomerConfig | None = None, model_config=None) -> HomerConfig:
        """The stored settings, or ``config`` after checking that the settings which shape
        the stored states (:data:`STATE_SETTINGS`) are the same."""
        stored = self.settings
        if config is None:
            if stored.get("custom_bias"):
                raise ValueError("these leaf states were built with a custom bias: pass the config with its bias")
            return HomerConfig(**{k: v for k, v in stored.items() if k != "custom_bias"})
        resolved = config.resolve(model_config) if model_config is not None else config
        diff = [k for k in STATE_SETTINGS if getattr(resolved, k) is not None and getattr(resolved, k) != stored.get(k)]
        if diff:
            raise LeafStateMismatchError(
                f"{self.path.name} was made with other settings: "
                + ", ".join(f"{k}={stored.get(k)!r} (not {getattr(resolved, k)!r})" for k in diff)
            )
        return config

    def fits(self, plan) -> bool:
        """Whether a plan (the new suffix length) keeps the stored leaves."""
        return (
            plan.num_leaves == self.num_leaves
            and plan.slice_len == self.slice_len
            and plan.prefix_len == self._int("prefix_len")
            and plan.context_len == self._int("context_len")
            and len(plan.layers_at(0)) == self._int("leaf_layers")
        )

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
