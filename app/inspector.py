"""What survived into a cache: kept-token density per page (PDFs), per section (EPUB, DOCX,
HTML: labelled by the document's :class:`homer.reading.locations.LocationMap`) or per stretch of the
text, and the shape of the merge tree that produced it — computed from the stored cache
(``sources``, ``char_offsets``, its settings) and the document's page map."""

from __future__ import annotations

import bisect

import torch

from homer.cache import HomerCache
from homer.document import tokenize_document
from homer.plan import ChunkPlan
from homer.reading.locations import SECTION_SEPARATOR, LocationMap


def tree_shape(cache: HomerCache) -> dict:
    """The merge tree of a cache, recomputed from its settings (method §2–§6): leaves,
    height, tokens kept per node at every level and the layers each level ran."""
    settings = cache.settings
    context_len = int(cache.metadata.get("context_len") or int((cache.sources >= 0).sum()))
    plan = ChunkPlan(
        prefix_len=cache.prefix_len,
        context_len=context_len,
        suffix_len=cache.suffix_len,
        max_chunk_len=int(settings["max_chunk_len"]),
        target_len=int(settings["target_len"]),
        num_layers=cache.num_layers,
        warmup_layers=int(settings["warmup_layers"]),
    )
    levels = []
    for height in range(plan.height + 1):
        nodes = 2 ** (plan.height - height)
        raw = plan.raw_len(0, height)
        kept = len(cache) if height == plan.height else min(raw, plan.node_target)  # the root: what was stored
        layers = plan.layers_at(height)
        levels.append(
            {"height": height, "nodes": nodes, "tokens_kept": kept, "layers": [layers.start, layers.stop - 1]}
        )
    return {
        "leaves": plan.num_leaves,
        "height": plan.height,
        "cache_tokens": len(cache),
        "context_tokens": context_len,
        "kept_context_tokens": int((cache.sources >= 0).sum()),
        "prefix_tokens": cache.prefix_len,
        "suffix_tokens": cache.suffix_len,
        "max_chunk_len": plan.max_chunk_len,
        "target_len": plan.target_len,
        "warmup_layers": plan.warmup_layers,
        "layers": cache.num_layers,
        "block_layers": plan.block_layers,
        "slice_tokens": plan.slice_len,
        "levels": levels,
    }


def page_token_counts(text: str, page_starts: list[int], tokenizer) -> list[int]:
    """Tokens of the document on each page (the tokenizer that built the cache)."""
    _, starts = tokenize_document(tokenizer, text)  # as the build encodes it (control-token strings as text)
    counts = [0] * len(page_starts)
    for start in starts:
        counts[max(0, bisect.bisect_right(page_starts, start) - 1)] += 1
    return counts


def kept_density(
    cache: HomerCache,
    page_starts: list[int] | None = None,
    page_tokens: list[int] | None = None,
    bins: int = 40,
    locations: LocationMap | None = None,
) -> dict:
    """Kept-token density. Per page when the document has pages, the cache records character
    offsets and ``page_tokens`` is given (per section, labelled by its heading, when
    ``locations`` is a sectioned :class:`homer.reading.locations.LocationMap`); else per equal stretch
    of the context (``bins``). Returns unit, labels, kept, total and density (kept / total)
    lists."""
    sources = cache.sources[cache.sources >= 0]
    if page_starts and len(page_starts) > 1 and page_tokens and cache.char_offsets is not None:
        offsets = cache.char_offsets[cache.char_offsets >= 0].tolist()
        kept = [0] * len(page_starts)
        for offset in offsets:
            kept[max(0, bisect.bisect_right(page_starts, offset) - 1)] += 1
        sectioned = locations is not None and locations.sectioned and len(locations) == len(page_starts)
        labels = [locations.label(i + 1) if sectioned else str(i + 1) for i in range(len(page_starts))]
        total = list(page_tokens)
        unit = "section" if sectioned else "page"
    else:
        context_len = int(cache.metadata.get("context_len") or (int(sources.max()) + 1 if len(sources) else 1))
        bins = max(1, min(bins, context_len))
        edges = [round(i * context_len / bins) for i in range(bins + 1)]
        index = torch.bucketize(sources, torch.tensor(edges[1:-1]), right=True)
        kept = torch.bincount(index, minlength=bins).tolist()
        total = [edges[i + 1] - edges[i] for i in range(bins)]
        labels = [f"{edges[i]}" for i in range(bins)]
        unit = "token"
    density = [k / t if t else 0.0 for k, t in zip(kept, total)]
    return {"unit": unit, "labels": labels, "kept": kept, "total": total, "density": density}


def density_figure(data: dict, title: str = ""):
    """A bar chart of kept-token density (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    n = len(data["density"])
    ax.bar(range(n), [d * 100 for d in data["density"]], width=0.85, color="#3b7dd8")
    average = 100 * sum(data["kept"]) / max(sum(data["total"]), 1)
    ax.axhline(average, color="#d8573b", linestyle="--", linewidth=1, label=f"average {average:.1f} %")
    step = max(1, n // 12)
    ax.set_xticks(range(0, n, step))
    sections = data["unit"] == "section"
    ax.set_xticklabels(
        [_tick(data["labels"][i]) if sections else data["labels"][i] for i in range(0, n, step)],
        rotation=30 if sections else 0,
        ha="right" if sections else "center",
        fontsize=8,
    )
    ax.set_xlabel(data["unit"] if data["unit"] in ("page", "section") else "position in the document (token)")
    ax.set_ylabel("tokens kept (%)")
    ax.set_title(title or "Which parts of the text survived into the cache", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.margins(x=0.01)
    fig.tight_layout()
    return fig


def _tick(label: str, limit: int = 18) -> str:
    """A section's label short enough for an axis tick (its deepest heading)."""
    label = label.rsplit(SECTION_SEPARATOR, 1)[-1]
    return label if len(label) <= limit else label[: limit - 1].rstrip() + "…"


def tree_figure(shape: dict):
    """The merge tree: one row per level (leaves at the bottom), a box per node with the
    tokens it keeps, wide levels drawn as one band."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    levels = shape["levels"]
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.85 * len(levels)), dpi=100)
    max_drawn = 32
    for level in levels:
        y = level["height"]
        nodes = level["nodes"]
        if nodes > max_drawn:
            ax.add_patch(FancyBboxPatch((0.02, y - 0.3), 0.96, 0.6, boxstyle="round,pad=0.01", color="#9cc0ef"))
            ax.text(0.5, y, f"{nodes} nodes × {level['tokens_kept']} tokens", ha="center", va="center", fontsize=8)
        else:
            width = 0.96 / nodes
            for i in range(nodes):
                x = 0.02 + i * width
                ax.add_patch(
                    FancyBboxPatch(
                        (x + width * 0.08, y - 0.3),
                        width * 0.84,
                        0.6,
                        boxstyle="round,pad=0.005",
                        color="#3b7dd8" if level["height"] == shape["height"] else "#9cc0ef",
                    )
                )
                if nodes <= 16:
                    ax.text(
                        x + width / 2,
                        y,
                        str(level["tokens_kept"]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if level["height"] == shape["height"] else "black",
                    )
        first, last = level["layers"]
        name = "root" if level["height"] == shape["height"] else ("leaves" if level["height"] == 0 else f"level {y}")
        ax.text(1.01, y, f"{name}: layers {first}–{last}", va="center", fontsize=8)
    ax.set_xlim(0, 1.3)
    ax.set_ylim(-0.6, len(levels) - 0.4)
    ax.axis("off")
    ax.set_title(
        f"Merge tree: {shape['leaves']} leaves, height {shape['height']}, "
        f"{shape['context_tokens']} document tokens → {shape['cache_tokens']} cached",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def summary_markdown(shape: dict, data: dict) -> str:
    kept = shape["kept_context_tokens"]
    lines = [
        f"**{shape['context_tokens']:,}** document tokens → **{shape['cache_tokens']:,}** cache tokens "
        f"({kept:,} from the document, {shape['prefix_tokens']} prompt prefix, {shape['suffix_tokens']} suffix) — "
        f"{100 * kept / max(shape['context_tokens'], 1):.1f} % of the text kept.",
        f"Tree: **{shape['leaves']}** leaves of ≈ {shape['slice_tokens']} tokens, height **{shape['height']}**; "
        f"M = {shape['max_chunk_len']}, T = {shape['target_len']}, W = {shape['warmup_layers']} warm-up layers "
        f"of {shape['layers']}, {shape['block_layers']} layers per merge level.",
    ]
    if data["unit"] in ("page", "section"):
        densest = max(range(len(data["density"])), key=lambda i: data["density"][i])
        lines.append(
            f"Densest {data['unit']}: {data['labels'][densest]} ({100 * data['density'][densest]:.1f} % kept)."
        )
    return "\n\n".join(lines)


def inspect(store, cache_row: dict, cache: HomerCache, tokenizer=None) -> tuple[dict, dict]:
    """``(tree shape, density data)`` for a stored cache."""
    doc = store.document(cache_row["document_id"])
    locations = store.location_map(doc["id"])
    page_starts = list(locations.starts)
    page_tokens = None
    if len(page_starts) > 1 and tokenizer is not None:
        page_tokens = page_token_counts(store.document_text(doc["id"]), page_starts, tokenizer)
    return tree_shape(cache), kept_density(cache, page_starts, page_tokens, locations=locations)
