"""Saving and resuming a build's finished subtrees (:mod:`homer.checkpoints`), and builds in
slices: a build given the checkpoints of an earlier, stopped build of the same input loads every
finished subtree instead of building it, and a build with a deadline stops right after a
checkpoint once the deadline is spent (:class:`~homer.checkpoints.BuildSliceEnded`).

:class:`SubtreeCheckpoints` is a part of the builder (:class:`homer.tree._Builder`), kept apart
from the method's own steps; it uses the builder's ``plan``, ``stack``, ``generator``,
``progress``, ``checkpoints``, ``should_stop`` and step counters."""

from __future__ import annotations

import logging
import time

import torch

from .checkpoints import BuildSliceEnded
from .nodes import Node

log = logging.getLogger("homer.tree")


class SubtreeCheckpoints:
    """The builder's checkpoint and slice bookkeeping (see the module docstring)."""

    @property
    def resume_message(self) -> str | None:
        """ "resumed at leaf 9/32" (1-based: the next leaf when this run started computing)
        when the build loaded finished subtrees from its checkpoints, else None."""
        if not self.leaves_reused:
            return None
        n = self.plan.num_leaves
        if self.resumed_at is None or self.resumed_at >= n:
            return f"resumed with all {n} leaves done"
        return f"resumed at leaf {self.resumed_at + 1}/{n}"

    def _computing(self) -> None:
        """Called before every leaf and merge this run computes."""
        if self._compute_started is None:
            self._compute_started = time.perf_counter()
        if self.resumed_at is None:
            self.resumed_at = self._frontier
            if self.leaves_reused:
                log.info("%s (from checkpoints)", self.resume_message)
                if self.progress is not None:
                    self.progress(self.steps_done, self.steps_total, self.resume_message)

    @staticmethod
    def checkpoint_key(first_leaf: int, height: int) -> str:
        return f"leaves-{first_leaf}-{first_leaf + 2**height - 1}"

    def save_checkpoint(self, node: Node, first_leaf: int, height: int) -> None:
        """Save a finished subtree (with the generator state after it) and drop its children's."""
        if self.checkpoints is None:
            return
        tensors = {**node.state_tensors(), "generator": self.generator.get_state()}
        self.checkpoints.save(
            self.checkpoint_key(first_leaf, height),
            tensors,
            {"first_leaf": first_leaf, "height": height, "length": len(node)},
        )
        if height > 0 and self.checkpoints.saving:
            half = 2 ** (height - 1)
            self.checkpoints.discard(self.checkpoint_key(first_leaf, height - 1))
            self.checkpoints.discard(self.checkpoint_key(first_leaf + half, height - 1))

    def load_checkpoint(self, first_leaf: int, height: int, target: int) -> Node | None:
        """The finished subtree from the checkpoints, or None (none, or one that does not fit)."""
        if self.checkpoints is None:
            return None
        key = self.checkpoint_key(first_leaf, height)
        entry = self.checkpoints.load(key)
        if entry is None:
            return None
        tensors, _ = entry
        try:
            node = Node.from_state(tensors, self.stack.device)
            generator = tensors["generator"]
            self._check_checkpoint(node, first_leaf, height, target)
        except (KeyError, ValueError, RuntimeError) as exc:
            log.warning("checkpoint %s does not fit this build (%s): ignored, that part is built again", key, exc)
            self.checkpoints.discard(key)
            return None
        leaves = 2**height
        if not self.resume_leaves(first_leaf, leaves):
            return None
        self.generator.set_state(generator)
        self.leaves_reused += leaves
        self._frontier = max(self._frontier, first_leaf + leaves)
        self.steps_done += 2 * leaves - 1
        return node

    def _check_checkpoint(self, node: Node, first_leaf: int, height: int, target: int) -> None:
        n, layers = len(node), self.plan.layers_at(height).stop
        hidden_size = int(self.stack.embed_tokens.weight.shape[1])
        start, _ = self.plan.slice_bounds(first_leaf)
        _, end = self.plan.slice_bounds(first_leaf + 2**height - 1)
        shape = (self.stack.num_kv_heads, n, self.stack.head_dim)
        if not (0 < n <= target) or len(node.keys) != layers or len(node.values) != layers:
            raise ValueError(f"{n} tokens and {len(node.keys)} layers, expected at most {target} and {layers}")
        if tuple(node.hidden.shape) != (1, n, hidden_size) or node.hidden.dtype != self.stack.dtype:
            raise ValueError("hidden states of another shape or dtype")
        if any(tuple(t.shape) != shape or t.dtype != self.kv_dtype for t in node.keys + node.values):
            raise ValueError("K/V of another shape or dtype")
        for t in (node.positions, node.token_ids, node.sources):
            if tuple(t.shape) != (n,) or t.dtype != torch.long:
                raise ValueError("positions, ids or sources of another shape")
        context = node.sources[self.plan.prefix_len : n - self.plan.suffix_len]
        if len(context) and (int(context.min()) < start or int(context.max()) >= end):
            raise ValueError("tokens from outside its leaves")
        if node.carried is not None and tuple(node.carried.shape) != (n,):
            raise ValueError("carried scores of another shape")

    def end_slice_if_due(self, height: int) -> None:
        """After a computed subtree was saved and reported: once the deadline is spent, stop
        here (:class:`BuildSliceEnded`) — unless this was the root, or the checkpoints no
        longer save (stopping would then lose the work)."""
        if self.should_stop is None or height >= self.plan.height:
            return
        if self.checkpoints is None or not self.checkpoints.saving or not self.should_stop():
            return
        seconds = time.perf_counter() - (self._compute_started or time.perf_counter())
        log.info(
            "build slice ended after leaf %d/%d (%d leaves computed in %.1f s)",
            self._frontier,
            self.plan.num_leaves,
            self.leaves_computed,
            seconds,
        )
        raise BuildSliceEnded(
            self._frontier, self.plan.num_leaves, self.steps_done, self.steps_total, self.leaves_computed, seconds
        )

    def resume_leaves(self, first_leaf: int, count: int) -> bool:
        """Hook: called when leaves ``first_leaf`` … ``+ count − 1`` are about to be taken from a
        checkpoint; False keeps them from being skipped (the leaf-state recording uses it)."""
        return True
