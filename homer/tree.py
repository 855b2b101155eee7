"""The HOMER build (method §2–§7): leaves → pruning with propagative refinement → merges,
depth-first, to a root whose cache is returned. ``build_cache`` is a pure function of
(model, ids, config): no global state, safe to run in several threads.

Owns the merge tree (:class:`Node`), the builder and its hooks (:class:`_Builder`, which
:mod:`homer.answering.deep_read` extends) and the choice of builder a build uses: with
``leaf_states`` the builder also records the leaf states (:mod:`homer.leaf_states`); with
``checkpoints`` it saves every finished subtree and resumes from them
(:mod:`homer.checkpoints`); with a ``deadline`` as well, it stops once the deadline is
spent, right after a checkpoint (:class:`~homer.checkpoints.BuildSliceEnded`)."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import HomerCache
from .checkpoints import BuildCheckpoints, BuildSliceEnded, Checkpointer, build_digest
from .config import HomerConfig
from .fingerprint import model_fingerprint
from .layers import DecoderStack
from .leaf_states import LeafStateRecording
from .plan import ChunkPlan
from .reconstruction import Reconstruction, model_repeat_prompt_ids
from .significance import Calibrated, RandomScore, Significance, Uncalibrated, keep_indices

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (steps done, steps total, message)


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
        tensors = {"hidden": self.hidden, "positions": self.positions, "token_ids": self.token_ids,
                   "sources": self.sources}
        if self.carried is not None:
            tensors["carried"] = self.carried
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = k, v
        return tensors

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], device) -> "Node":
        """The node :meth:`state_tensors` gave, its hidden states and K/V on ``device``."""
        layers = sum(1 for name in tensors if name.startswith("keys."))
        return cls(hidden=tensors["hidden"].to(device), positions=tensors["positions"], token_ids=tensors["token_ids"],
                   sources=tensors["sources"], carried=tensors.get("carried"),
                   keys=[tensors[f"keys.{i}"].to(device) for i in range(layers)],
                   values=[tensors[f"values.{i}"].to(device) for i in range(layers)])


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


def significance_for(config: HomerConfig, model, fingerprint: str) -> Significance:
    """The scoring strategy named by ``config.significance``; a calibrated build without a
    bias table falls back to uncalibrated scores and says so once."""
    if config.significance == "random":
        return RandomScore()
    if config.significance == "uncalibrated":
        return Uncalibrated()
    if config.significance == "reconstruction":
        return Reconstruction(model_repeat_prompt_ids(model), config.reconstruction_layers)
    bias = config.bias
    if bias is None:
        from .calibration import find_bias

        bias = find_bias(fingerprint, config.max_chunk_len)
    if bias is None:
        warnings.warn(
            "No calibration bias for this model and max_chunk_len: using uncalibrated scores. "
            "Run `homer calibrate` to create one.",
            stacklevel=3,
        )
        return Uncalibrated()
    return Calibrated(bias)


class _Builder:
    """One build's state: the model view, the plan, the scorer and the progress counter."""

    def __init__(self, stack: DecoderStack, plan: ChunkPlan, scorer: Significance, prefix, context, suffix,
                 seed: int, progress: Progress | None, pool_width: int = 0,
                 kv_dtype: torch.dtype = torch.float32, units: torch.Tensor | None = None,
                 query_rows: int = 1, score_layers: int = 1):
        self.stack, self.plan, self.scorer = stack, plan, scorer
        self.kv_dtype = kv_dtype
        self.pool_width = pool_width
        self.units = units  # pruning unit of every context token, or None: single tokens
        self.query_rows = query_rows
        self.score_layers = max(int(score_layers), 1)
        self._scores: list[torch.Tensor] = []  # this block's per-layer scores (see note_scores)
        self.prefix, self.context, self.suffix = prefix, context, suffix
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress
        # a progress callback may carry a ``pause()``: called before every layer, so a caller
        # can hold a build back for a moment (the app: while a question is answered on the same
        # cores, so its first token waits for one layer, not a whole leaf)
        self.pause = getattr(progress, "pause", None)
        self.steps_total = 2 * plan.num_leaves - 1
        self.steps_done = 0
        self.checkpoints: BuildCheckpoints | None = None  # set by build_cache(checkpoints=...)
        self.leaves_computed = 0
        self.leaves_reused = 0  # leaves inside subtrees loaded from checkpoints
        self.resumed_at: int | None = None  # the next leaf when this run first computed (0-based)
        self._frontier = 0  # leaves finished so far (loaded or computed), in depth-first order
        self.should_stop: Callable[[], bool] | None = None  # set by build_cache(deadline=...)
        self._compute_started: float | None = None  # when this run computed its first step

    def _tick(self, message: str) -> None:
        self.steps_done += 1
        if self.progress is not None:
            self.progress(self.steps_done, self.steps_total, message)

    @property
    def resume_message(self) -> str | None:
        """"resumed at leaf 9/32" (1-based: the next leaf when this run started computing)
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

    # checkpoints (homer.checkpoints) ----------------------------------------------------
    @staticmethod
    def checkpoint_key(first_leaf: int, height: int) -> str:
        return f"leaves-{first_leaf}-{first_leaf + 2**height - 1}"

    def save_checkpoint(self, node: Node, first_leaf: int, height: int) -> None:
        """Save a finished subtree (with the generator state after it) and drop its children's."""
        if self.checkpoints is None:
            return
        tensors = {**node.state_tensors(), "generator": self.generator.get_state()}
        self.checkpoints.save(self.checkpoint_key(first_leaf, height), tensors,
                              {"first_leaf": first_leaf, "height": height, "length": len(node)})
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
        log.info("build slice ended after leaf %d/%d (%d leaves computed in %.1f s)", self._frontier,
                 self.plan.num_leaves, self.leaves_computed, seconds)
        raise BuildSliceEnded(self._frontier, self.plan.num_leaves, self.steps_done, self.steps_total,
                              self.leaves_computed, seconds)

    def resume_leaves(self, first_leaf: int, count: int) -> bool:
        """Hook: called when leaves ``first_leaf`` … ``+ count − 1`` are about to be taken from a
        checkpoint; False keeps them from being skipped (the leaf-state recording uses it)."""
        return True

    def leaf(self, index: int) -> Node:
        """Leaf i = prefix ++ slice_i ++ suffix with reused position ids (§2)."""
        start, end = self.plan.slice_bounds(index)
        ids = torch.cat([self.prefix, self.context[start:end], self.suffix])
        sources = torch.cat([
            torch.full((len(self.prefix),), -1, dtype=torch.long),
            torch.arange(start, end, dtype=torch.long),
            torch.full((len(self.suffix),), -1, dtype=torch.long),
        ])
        positions = torch.tensor(self.plan.leaf_positions(index), dtype=torch.long)
        return Node(self.stack.embed(ids), positions, ids, sources, [], [])

    def run_block(self, node: Node, layers: range, target: int) -> None:
        """Run ``layers`` on the node; prune once at the last layer, between attention and
        MLP, if the node is longer than its target (§4)."""
        rope = self.stack.rope(node.hidden, node.positions)
        self._scores = []
        for layer in layers:
            if self.pause is not None:
                self.pause()
            hidden, q, k, v = self.stack.attention_half(layer, node.hidden, rope)
            # finished layers are only stored, never recomputed: keep them in the cache dtype
            node.keys.append(k[0].to(self.kv_dtype))
            node.values.append(v[0].to(self.kv_dtype))
            node.hidden = hidden
            if layer == layers[-1] and (self.plan.num_leaves > 1 or len(node) > target):
                self.carry_scores(node)
            self.note_scores(node, layer, layers, q, k, target)
            if layer == layers[-1]:
                self.before_prune(node, layers)
                if len(node) > target:
                    self.prune(node, target)
            node.hidden = self.stack.mlp_half(layer, node.hidden)

    def layer_scores(self, node: Node, layer: int, q: torch.Tensor, k: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Every token's significance at ``layer`` by the last ``query_rows`` suffix queries (§4),
        as float32 on the CPU."""
        rows = min(self.query_rows, self.plan.suffix_len)
        return self.scorer.score(layer, q[0, :, -rows:, :], k[0], node.positions.to(k.device), self.stack.scaling,
                                 generator or self.generator).float().cpu()

    def note_scores(self, node: Node, layer: int, layers: range, q: torch.Tensor, k: torch.Tensor,
                    target: int) -> None:
        """At each of the last ``score_layers`` layers of a block that will prune, score the
        node's tokens with the last ``query_rows`` suffix queries (§4; q: [1, H, rows, d] whose
        last rows are the suffix's, k: [1, KV, len(node), d]). With one layer (the paper's) the
        scores are used as they are; with several, each layer's context scores are
        standardised (z-scores) and :meth:`prune` averages them: a single layer's ranking is
        noisy (a needle at the 98th percentile in one layer can sit at the 30th in the next)."""
        if len(node) <= target or layer not in layers[-self.score_layers:] or self._carries(node):
            return
        scores = self.layer_scores(node, layer, q, k)
        if self.score_layers > 1:
            p, s = self.plan.prefix_len, self.plan.suffix_len
            context = scores[p : len(node) - s]
            scores = (scores - context.mean()) / context.std().clamp_min(1e-6)
        self._scores.append(scores)

    def _carries(self, node: Node) -> bool:
        """Whether the node is (or will be, being a leaf) scored by carried scores."""
        return node.carried is not None or (self.scorer.carries_scores and len(node.keys) <= len(self.plan.layers_at(0)))

    def carry_scores(self, node: Node) -> None:
        """A leaf at its last layer, with a strategy that carries scores (KVzip's
        reconstruction, :mod:`homer.reconstruction`): score its tokens once from the leaf
        layers' K/V; the tree then carries them with the tokens, like the positions."""
        if self.scorer.carries_scores and node.carried is None and len(node.keys) == len(self.plan.layers_at(0)):
            node.carried = self.scorer.leaf_scores(self.stack, node.keys, node.values, node.positions,
                                                   node.token_ids, self.plan.prefix_len, self.plan.suffix_len)

    def prune(self, node: Node, target: int) -> None:
        """Keep ``target`` tokens: the best by the tokens' carried scores, if they have them,
        else by the scores :meth:`note_scores` gathered in this block."""
        self.carry_scores(node)  # a leaf of a builder that prunes without run_block (homer.answering.deep_read)
        if node.carried is not None:
            scores = node.carried
        else:
            scores = torch.stack(self._scores).mean(0) if len(self._scores) > 1 else self._scores[0]
        self._scores = []
        p, s = self.plan.prefix_len, self.plan.suffix_len
        units = None if self.units is None else self.units[node.sources[p : len(node) - s]]
        node.keep(keep_indices(scores, p, s, target, self.pool_width, units))

    # hooks for the leaf-state recording and homer.answering.deep_read (no-ops here) -------------
    def before_prune(self, node: Node, layers: range) -> None:
        """Called at the last layer of every block, after attention, before pruning."""

    def finish(self) -> None:
        """Called once the root is built."""

    def abort(self) -> None:
        """Called when the build fails."""

    def read_leaf(self, index: int, target: int) -> Node:
        """The leaf stage of leaf ``index``: its block of layers, pruned to ``target``."""
        node = self.leaf(index)
        self.run_block(node, self.plan.layers_at(0), target)
        return node

    def subtree(self, first_leaf: int, height: int, target: int) -> Node:
        """Depth-first: left subtree, right subtree, merge, then this node's block (§6). With
        checkpoints, a finished subtree is loaded instead of built, and every subtree built
        is saved before its progress is reported."""
        node = self.load_checkpoint(first_leaf, height, target)
        if node is not None:
            return node
        if height == 0:
            self._computing()
            node = self.read_leaf(first_leaf, target)
            self.leaves_computed += 1
            self._frontier = max(self._frontier, first_leaf + 1)
            self.save_checkpoint(node, first_leaf, 0)
            self._tick(f"read chunk {first_leaf + 1}/{self.plan.num_leaves}")
            self.end_slice_if_due(0)
            return node
        left_target, right_target = self.plan.child_targets(first_leaf, height)
        left = self.subtree(first_leaf, height - 1, left_target)
        right = self.subtree(first_leaf + 2 ** (height - 1), height - 1, right_target)
        self._computing()
        node = merge_nodes(left, right, self.plan.prefix_len, self.plan.suffix_len)
        del left, right
        self.run_block(node, self.plan.layers_at(height), target)
        self.save_checkpoint(node, first_leaf, height)
        self._tick(f"merged level {height}")
        self.end_slice_if_due(height)
        return node


class _RecordingBuilder(LeafStateRecording, _Builder):
    """A normal build that also writes its leaf states (``build_cache(leaf_states=path)``)."""


def recording_builder(path, extra_tensors: dict | None, build_metadata: dict | None):
    """The builder factory ``build_cache(leaf_states=path)`` uses."""

    def make(*args, fingerprint: str, config: HomerConfig) -> _RecordingBuilder:
        model = args[0].model
        name = getattr(model, "homer_name", None) or getattr(model.config, "_name_or_path", "") or ""
        return _RecordingBuilder(*args, path=path, extra_tensors=extra_tensors, build_metadata=build_metadata,
                                 fingerprint=fingerprint, config=config, model_name=name)

    return make


def _as_ids(ids) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()


@torch.no_grad()
def build_cache(model, prefix_ids, context_ids, suffix_ids, config: HomerConfig | None = None,
                progress: Progress | None = None, metadata: dict | None = None,
                context_units=None, leaf_states=None, leaf_state_tensors: dict | None = None,
                checkpoints: Checkpointer | None = None, deadline: float | Callable[[], bool] | None = None,
                _make_builder=None) -> HomerCache:
    """Build a HOMER cache from token ids (the method itself).

    prefix_ids: e.g. system prompt + chat header (with BOS if the model uses one);
    context_ids: the long document; suffix_ids: non-empty, its last token is the scoring
    query. ``progress(done, total, message)`` is called after every leaf and merge.
    ``context_units``: a unit id per context token, needed when ``config.span`` is not
    "token" (:func:`homer.spans.span_ids` makes them; ``build_document_cache`` does it).
    ``leaf_states``: a file path; when given, the leaf-stage states are also written there
    (atomically, leaf by leaf; :mod:`homer.leaf_states`) so a later question can rebuild
    fast — see :mod:`homer.answering.deep_read`; ``leaf_state_tensors``: extra tensors stored in that file.
    ``checkpoints``: a :class:`homer.checkpoints.Checkpointer` (e.g. a
    :class:`~homer.checkpoints.DirectoryCheckpointer`): every finished subtree is saved there,
    and a build given the checkpoints of an earlier, stopped build of the same input, settings
    and model resumes from them; the cache is bit for bit the one-shot build's. Leaf-state
    recording resumes too (each leaf's recorded states are checkpointed with it), and so do
    reconstruction scores (carried by the saved nodes) and random scores (the generator state
    is saved). The checkpoints are left in place (the root's included, in case the caller
    stops before storing the cache): clear them once the cache is stored. The cache's
    metadata then says ``leaves_computed`` and ``resumed`` ("resumed at leaf 9/32" or "").
    ``deadline`` (with ``checkpoints``): a ``time.monotonic()`` time, or a function returning
    True when the build should stop; once it is spent the build stops right after the next
    finished subtree is checkpointed and raises :class:`homer.checkpoints.BuildSliceEnded`
    (leaves done and total, the time this call computed); calling again with the same
    checkpoints goes on — a build in slices, bit for bit the one-shot cache. Every call
    computes at least one leaf or merge, so slices always advance.
    ``_make_builder`` (internal, for :mod:`homer.answering.deep_read`): makes the builder from
    :class:`_Builder`'s arguments plus ``fingerprint`` and ``config`` keywords."""
    if deadline is not None and checkpoints is None:
        raise ValueError("a build with a deadline needs checkpoints to go on from")
    if leaf_states is not None:
        _make_builder = recording_builder(leaf_states, leaf_state_tensors, metadata)
    started = time.perf_counter()
    stack = DecoderStack(model)
    config = (config or HomerConfig()).resolve(model.config)
    prefix, context, suffix = _as_ids(prefix_ids), _as_ids(context_ids), _as_ids(suffix_ids)
    plan = ChunkPlan(
        prefix_len=len(prefix), context_len=len(context), suffix_len=len(suffix),
        max_chunk_len=config.max_chunk_len, target_len=config.target_len,
        num_layers=stack.num_layers, warmup_layers=config.warmup_layers,
    )
    units = None
    if config.span != "token" and context_units is None:
        warnings.warn(f"span={config.span!r} needs context_units (homer.spans.span_ids; build_document_cache "
                      "makes them): pruning single tokens", stacklevel=2)
    elif config.span != "token":
        units = _as_ids(context_units)
        if len(units) != len(context):
            raise ValueError("context_units must give one unit id per context token")
    fingerprint = model_fingerprint(model)
    scorer = significance_for(config, model, fingerprint)
    builder_args = (stack, plan, scorer, prefix, context, suffix, config.seed, progress, config.pool_width,
                    config.torch_cache_dtype, units, config.query_rows, config.score_layers)
    if _make_builder is None:
        builder = _Builder(*builder_args)
    else:
        builder = _make_builder(*builder_args, fingerprint=fingerprint, config=config)
    if checkpoints is not None:
        kind = "build" if type(builder) in (_Builder, _RecordingBuilder) else type(builder).__qualname__
        digest = build_digest(fingerprint=fingerprint, settings_json=config.settings_json(), scorer=scorer,
                              prefix=prefix, context=context, suffix=suffix, units=units, model_dtype=stack.dtype,
                              device_type=f"{stack.device.type}:{kind}")
        builder.checkpoints = BuildCheckpoints(checkpoints, digest)
    if deadline is not None:
        builder.should_stop = deadline if callable(deadline) else (lambda: time.monotonic() >= deadline)
    try:
        root = builder.subtree(0, plan.height, plan.root_target)
        if builder.resumed_at is None and builder.leaves_reused:  # the root came from a checkpoint
            log.info("%s (from checkpoints)", builder.resume_message)
            if progress is not None:
                progress(builder.steps_done, builder.steps_total, builder.resume_message)
        builder.finish()
    except BaseException:
        builder.abort()
        raise
    last_logits = stack.logits(root.hidden[:, -1:, :])[0, -1].float().cpu()  # one row only (§7)

    dtype = config.torch_cache_dtype
    meta = {
        "model_fingerprint": fingerprint,
        "model_name": getattr(model, "homer_name", None) or getattr(model.config, "_name_or_path", "") or "",
        "settings": config.settings_json(),
        "significance_used": scorer.name,
        "span_used": config.span if units is not None else "token",
        "rope_parameters": json.dumps(getattr(model.config, "rope_parameters", None), default=str),
        **stack.rope_metadata(),  # partial rotary / RoPE per layer type: what re-rotation needs (homer.cache)
        "context_len": str(len(context)),
        "num_leaves": str(plan.num_leaves),
        "build_seconds": f"{time.perf_counter() - started:.3f}",
    }
    if checkpoints is not None:
        meta["leaves_computed"] = str(builder.leaves_computed)
        meta["resumed"] = builder.resume_message or ""
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    return HomerCache(
        keys=torch.stack(root.keys).to("cpu", dtype),
        values=torch.stack(root.values).to("cpu", dtype),
        positions=root.positions.clone(),
        token_ids=root.token_ids.clone(),
        sources=root.sources.clone(),
        prefix_len=plan.prefix_len,
        suffix_len=plan.suffix_len,
        last_logits=last_logits,
        inv_freq=stack.inv_freq,
        metadata=meta,
    )
