"""The shape of a HOMER build, computed before any tensor exists (method §2, §3, §4, §6).

Pure integer arithmetic: chunking to a power of two, reused position ids, the layer
schedule and every node's target length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    prefix_len: int  # P
    context_len: int  # C
    suffix_len: int  # S
    max_chunk_len: int  # M
    target_len: int  # T
    num_layers: int  # L
    warmup_layers: int  # W

    def __post_init__(self):
        if self.suffix_len < 1:
            raise ValueError("the suffix must hold at least one token: its last token is the scoring query")
        if self.usable_len < 2:
            raise ValueError(
                f"max_chunk_len={self.max_chunk_len} leaves no room for context next to "
                f"prefix ({self.prefix_len}) + suffix ({self.suffix_len}) tokens"
            )
        if self.target_len < self.prefix_len + self.suffix_len:
            raise ValueError(f"target_len={self.target_len} is shorter than prefix + suffix")
        if self.block_layers < 1:
            raise ValueError(
                f"the merge tree has height {self.height}, which needs at least {self.height + 1} layers "
                f"after the {self.warmup_layers} warm-up layers; the model has {self.num_layers}. "
                "Use a larger max_chunk_len or fewer warmup_layers."
            )

    # §2 chunking -----------------------------------------------------------------------
    @property
    def usable_len(self) -> int:  # E = M − P − S
        return self.max_chunk_len - self.prefix_len - self.suffix_len

    @property
    def height(self) -> int:  # h = ceil(log2 ceil(C / E))
        n0 = max(1, math.ceil(self.context_len / self.usable_len))
        return 0 if n0 == 1 else math.ceil(math.log2(n0))

    @property
    def num_leaves(self) -> int:  # N = 2^h
        return 2**self.height

    @property
    def slice_len(self) -> int:  # c = ceil(C / N)
        return max(1, math.ceil(self.context_len / self.num_leaves))

    def slice_bounds(self, leaf: int) -> tuple[int, int]:
        """Context token range [start, end) of a leaf; only the last may be shorter."""
        c = self.slice_len
        return min(leaf * c, self.context_len), min((leaf + 1) * c, self.context_len)

    def leaf_positions(self, leaf: int) -> list[int]:
        """Reused position ids of a leaf: prefix 0..P−1, slice from P, suffix at P + c (§2.4)."""
        start, end = self.slice_bounds(leaf)
        p, s = self.prefix_len, self.suffix_len
        c = self.slice_len if self.num_leaves > 1 else self.context_len
        return [*range(p), *range(p, p + end - start), *range(p + c, p + c + s)]

    @property
    def last_position(self) -> int:
        c = self.slice_len if self.num_leaves > 1 else self.context_len
        return self.prefix_len + c + self.suffix_len - 1

    # §3 layer schedule -----------------------------------------------------------------
    @property
    def block_layers(self) -> int:  # B
        return (self.num_layers - self.warmup_layers) // (self.height + 1)

    @property
    def leftover_layers(self) -> int:  # R
        return (self.num_layers - self.warmup_layers) - self.block_layers * (self.height + 1)

    def layers_at(self, height: int) -> range:
        """Layers run by a node at ``height`` (0 = leaves); leaves include warm-up and leftover."""
        w, r, b = self.warmup_layers, self.leftover_layers, self.block_layers
        if height == 0:
            return range(0, w + r + b)
        return range(w + r + height * b, w + r + (height + 1) * b)

    # §4 / §6 targets -------------------------------------------------------------------
    @property
    def node_target(self) -> int:  # D = P + floor(E/2) + S
        return self.prefix_len + self.usable_len // 2 + self.suffix_len

    @property
    def root_target(self) -> int:  # T* = min(T, P + C + S)
        return min(self.target_len, self.prefix_len + self.context_len + self.suffix_len)

    def raw_len(self, first_leaf: int, height: int) -> int:
        """Tokens (affixes included) of the subtree's leaves before any pruning."""
        start, _ = self.slice_bounds(first_leaf)
        _, end = self.slice_bounds(first_leaf + 2**height - 1)
        return self.prefix_len + (end - start) + self.suffix_len

    def child_targets(self, first_leaf: int, height: int) -> tuple[int, int]:
        """Targets of the two children of the node at ``height`` whose first leaf is
        ``first_leaf`` (§6): normally (D, D); when the right child is shorter than D it keeps
        all its r tokens and the left child gets M − (r − P − S), so the merge holds M."""
        d = self.node_target
        right = self.raw_len(first_leaf + 2 ** (height - 1), height - 1)
        if right < d:
            return self.max_chunk_len - (right - self.prefix_len - self.suffix_len), right
        return d, d
