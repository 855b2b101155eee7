"""The HOMER build (method §2–§7): leaves → pruning with propagative refinement → merges,
depth-first, to a root whose cache is returned. ``build_cache`` is a pure function of
(model, ids, config): no global state, safe to run in several threads.

Owns the builder and its hooks (:class:`_Builder`, which
:mod:`homer.answering.deep_read` extends) and the choice of builder a build uses: with
``leaf_states`` the builder also records the leaf states (:mod:`homer.leaf_states`); with
``checkpoints`` it saves every finished subtree and resumes from them
(:mod:`homer.checkpoints`); with a ``deadline`` as well, it stops once the deadline is
spent, right after a checkpoint (:class:`~homer.checkpoints.BuildSliceEnded`). The merge tree's
nodes and the merge itself are :mod:`homer.nodes`; saving and resuming subtrees is
:mod:`homer.subtree_checkpoints`."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable

import torch

from .cache import HomerCache
from .checkpoints import BuildCheckpoints, Checkpointer, build_digest
from .config import HomerConfig
from .fingerprint import model_fingerprint
from .layers import DecoderStack
from .leaf_states import LeafStateRecording
from .nodes import Node, build_level_order, merge_nodes
from .plan import ChunkPlan
from .reconstruction import Reconstruction, model_repeat_prompt_ids
from .significance import Calibrated, RandomScore, Significance, Uncalibrated, keep_indices
from .subtree_checkpoints import SubtreeCheckpoints

__all__ = ["Node", "Progress", "build_cache", "build_level_order", "merge_nodes", "significance_for"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (steps done, steps total, message)


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


class _Builder(SubtreeCheckpoints):
    """One build's state: the model view, the plan, the scorer and the progress counter; saving
    and resuming finished subtrees is :class:`~homer.subtree_checkpoints.SubtreeCheckpoints`."""

    def __init__(
        self,
        stack: DecoderStack,
        plan: ChunkPlan,
        scorer: Significance,
        prefix,
        context,
        suffix,
        seed: int,
        progress: Progress | None,
        pool_width: int = 0,
        kv_dtype: torch.dtype = torch.float32,
        units: torch.Tensor | None = None,
        query_rows: int = 1,
        score_layers: int = 1,
    ):
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

    def leaf(self, index: int) -> Node:
        """Leaf i = prefix ++ slice_i ++ suffix with reused position ids (§2)."""
        start, end = self.plan.slice_bounds(index)
        ids = torch.cat([self.prefix, self.context[start:end], self.suffix])
        sources = torch.cat(
            [
                torch.full((len(self.prefix),), -1, dtype=torch.long),
                torch.arange(start, end, dtype=torch.long),
                torch.full((len(self.suffix),), -1, dtype=torch.long),
            ]
        )
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

    def layer_scores(
        self, node: Node, layer: int, q: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Every token's significance at ``layer`` by the last ``query_rows`` suffix queries (§4),
        as float32 on the CPU."""
        rows = min(self.query_rows, self.plan.suffix_len)
        return (
            self.scorer.score(
                layer,
                q[0, :, -rows:, :],
                k[0],
                node.positions.to(k.device),
                self.stack.scaling,
                generator or self.generator,
            )
            .float()
            .cpu()
        )

    def note_scores(self, node: Node, layer: int, layers: range, q: torch.Tensor, k: torch.Tensor, target: int) -> None:
        """At each of the last ``score_layers`` layers of a block that will prune, score the
        node's tokens with the last ``query_rows`` suffix queries (§4; q: [1, H, rows, d] whose
        last rows are the suffix's, k: [1, KV, len(node), d]). With one layer (the paper's) the
        scores are used as they are; with several, each layer's context scores are
        standardised (z-scores) and :meth:`prune` averages them: a single layer's ranking is
        noisy (a needle at the 98th percentile in one layer can sit at the 30th in the next)."""
        if len(node) <= target or layer not in layers[-self.score_layers :] or self._carries(node):
            return
        scores = self.layer_scores(node, layer, q, k)
        if self.score_layers > 1:
            p, s = self.plan.prefix_len, self.plan.suffix_len
            context = scores[p : len(node) - s]
            scores = (scores - context.mean()) / context.std().clamp_min(1e-6)
        self._scores.append(scores)

    def _carries(self, node: Node) -> bool:
        """Whether the node is (or will be, being a leaf) scored by carried scores."""
        return node.carried is not None or (
            self.scorer.carries_scores and len(node.keys) <= len(self.plan.layers_at(0))
        )

    def carry_scores(self, node: Node) -> None:
        """A leaf at its last layer, with a strategy that carries scores (KVzip's
        reconstruction, :mod:`homer.reconstruction`): score its tokens once from the leaf
        layers' K/V; the tree then carries them with the tokens, like the positions."""
        if self.scorer.carries_scores and node.carried is None and len(node.keys) == len(self.plan.layers_at(0)):
            node.carried = self.scorer.leaf_scores(
                self.stack,
                node.keys,
                node.values,
                node.positions,
                node.token_ids,
                self.plan.prefix_len,
                self.plan.suffix_len,
            )

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
        return _RecordingBuilder(
            *args,
            path=path,
            extra_tensors=extra_tensors,
            build_metadata=build_metadata,
            fingerprint=fingerprint,
            config=config,
            model_name=name,
        )

    return make


def _as_ids(ids) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1).cpu()


@torch.no_grad()
def build_cache(
    model,
    prefix_ids,
    context_ids,
    suffix_ids,
    config: HomerConfig | None = None,
    progress: Progress | None = None,
    metadata: dict | None = None,
    context_units=None,
    leaf_states=None,
    leaf_state_tensors: dict | None = None,
    checkpoints: Checkpointer | None = None,
    deadline: float | Callable[[], bool] | None = None,
    _make_builder=None,
) -> HomerCache:
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
        prefix_len=len(prefix),
        context_len=len(context),
        suffix_len=len(suffix),
        max_chunk_len=config.max_chunk_len,
        target_len=config.target_len,
        num_layers=stack.num_layers,
        warmup_layers=config.warmup_layers,
    )
    units = None
    if config.span != "token" and context_units is None:
        warnings.warn(
            f"span={config.span!r} needs context_units (homer.spans.span_ids; build_document_cache "
            "makes them): pruning single tokens",
            stacklevel=2,
        )
    elif config.span != "token":
        units = _as_ids(context_units)
        if len(units) != len(context):
            raise ValueError("context_units must give one unit id per context token")
    fingerprint = model_fingerprint(model)
    scorer = significance_for(config, model, fingerprint)
    builder_args = (
        stack,
        plan,
        scorer,
        prefix,
        context,
        suffix,
        config.seed,
        progress,
        config.pool_width,
        config.torch_cache_dtype,
        units,
        config.query_rows,
        config.score_layers,
    )
    if _make_builder is None:
        builder = _Builder(*builder_args)
    else:
        builder = _make_builder(*builder_args, fingerprint=fingerprint, config=config)
    if checkpoints is not None:
        kind = "build" if type(builder) in (_Builder, _RecordingBuilder) else type(builder).__qualname__
        digest = build_digest(
            fingerprint=fingerprint,
            settings_json=config.settings_json(),
            scorer=scorer,
            prefix=prefix,
            context=context,
            suffix=suffix,
            units=units,
            model_dtype=stack.dtype,
            device_type=f"{stack.device.type}:{kind}",
        )
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
