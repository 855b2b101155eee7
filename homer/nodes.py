"""The merge tree's nodes and the merge of two siblings (HOMER, Song et al., ICLR 2024, §5–§6).

A :class:`Node` holds its tokens' current hidden states and every layer's K/V run so far;
:meth:`Node.keep` is propagative refinement (§5), :func:`merge_nodes` the merge (§6), and
:func:`build_level_order` the reference order of the whole tree (§3) that the depth-first build
(:mod:`homer.tree`) must reproduce exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Node:
    """A node of the merge tree: its tokens' current hidden states and every stored layer's
    K/V. Invariant: every list entry holds the same tokens in the same order (§5)."""

    hidden: torch.Tensor  # [1, n, hidden]
    positions: torch.Tensor  # [n] reused position ids
    token_ids: torch.Tensor  # [n]
    sources: torch.Tensor  # [n] context index, −1 for affixes
    keys: list  # per layer run so far: [KV, n, d]
    values: list
    carried: torch.Tensor | None = None  # [n] leaf-stage scores, for strategies that carry them

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def keep(self, index: torch.Tensor) -> None:
        """Propagative refinement (§5): drop the same tokens from every stored layer."""
        device_index = index.to(self.hidden.device)
        self.hidden = self.hidden.index_select(1, device_index)
        self.positions = self.positions.index_select(0, index)
        self.token_ids = self.token_ids.index_select(0, index)
        self.sources = self.sources.index_select(0, index)
        if self.carried is not None:
            self.carried = self.carried.index_select(0, index)
        self.keys = [k.index_select(1, device_index) for k in self.keys]
        self.values = [v.index_select(1, device_index) for v in self.values]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything the node holds, as named tensors (a checkpoint, :mod:`homer.checkpoints`)."""
        tensors = {
            "hidden": self.hidden,
            "positions": self.positions,
            "token_ids": self.token_ids,
            "sources": self.sources,
        }
        if self.carried is not None:
            tensors["carried"] = self.carried
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = k, v
        return tensors

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], device) -> "Node":
        """The node :meth:`state_tensors` gave, its hidden states and K/V on ``device``."""
        layers = sum(1 for name in tensors if name.startswith("keys."))
        return cls(
            hidden=tensors["hidden"].to(device),
            positions=tensors["positions"],
            token_ids=tensors["token_ids"],
            sources=tensors["sources"],
            carried=tensors.get("carried"),
            keys=[tensors[f"keys.{i}"].to(device) for i in range(layers)],
            values=[tensors[f"values.{i}"].to(device) for i in range(layers)],
        )


def _merge_tensor(left: torch.Tensor, right: torch.Tensor, p: int, s: int, dim: int) -> torch.Tensor:
    """[mean(prefixes), left context, right context, mean(suffixes)] along ``dim`` (§6)."""
    nl, nr = left.shape[dim], right.shape[dim]
    lp, lc, ls = left.split([p, nl - p - s, s], dim)
    rp, rc, rs = right.split([p, nr - p - s, s], dim)

    def mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a.float() + b.float()) / 2).to(a.dtype)

    return torch.cat([mean(lp, rp), lc, rc, mean(ls, rs)], dim)


def merge_nodes(left: Node, right: Node, prefix_len: int, suffix_len: int) -> Node:
    """Merge two siblings; position ids are concatenated, not renumbered (§6)."""
    p, s = prefix_len, suffix_len

    def ids(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a[:p], a[p : len(a) - s], b[p:]])

    return Node(
        hidden=_merge_tensor(left.hidden, right.hidden, p, s, dim=1),
        positions=ids(left.positions, right.positions),
        token_ids=ids(left.token_ids, right.token_ids),
        sources=ids(left.sources, right.sources),
        carried=None if left.carried is None or right.carried is None else ids(left.carried, right.carried),
        keys=[_merge_tensor(a, b, p, s, dim=1) for a, b in zip(left.keys, right.keys)],
        values=[_merge_tensor(a, b, p, s, dim=1) for a, b in zip(left.values, right.values)],
    )


def build_level_order(builder, plan, prefix_len: int, suffix_len: int) -> Node:
    """The root built level by level — every leaf, then every merge of each height — with the
    targets the depth-first build gives each node: the reference order the method describes
    (§3), which the depth-first ``builder.subtree`` must reproduce exactly (checked by the
    engine tests and the GPU benchmark)."""
    targets = {(plan.height, 0): plan.root_target}
    for height in range(plan.height, 0, -1):
        for first in range(0, plan.num_leaves, 2**height):
            left, right = plan.child_targets(first, height)
            targets[(height - 1, first)] = left
            targets[(height - 1, first + 2 ** (height - 1))] = right
    nodes = []
    for leaf in range(plan.num_leaves):
        node = builder.leaf(leaf)
        builder.run_block(node, plan.layers_at(0), targets[(0, leaf)])
        nodes.append(node)
    for height in range(1, plan.height + 1):
        merged = []
        for j in range(0, len(nodes), 2):
            node = merge_nodes(nodes[j], nodes[j + 1], prefix_len, suffix_len)
            builder.run_block(node, plan.layers_at(height), targets[(height, j * 2 ** (height - 1))])
            merged.append(node)
        nodes = merged
    (root,) = nodes
    return root
