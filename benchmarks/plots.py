"""Plots of the committed results: accuracy by depth × length per method (heat maps),
peak memory vs input length (log x-axis) and the shipped calibration bias curves (the
raw-logit recency trend each layer's significance score has removed, method §4). Writes PNG
files next to the JSON.

    python -m benchmarks.plots
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def retrieval_heatmaps(name: str = "needle") -> Path | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    methods = sorted(data["by_depth"])
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        cells = data["by_depth"][method]
        lengths = sorted(cells, key=int)
        depths = sorted({d for by_len in cells.values() for d in by_len}, key=float)
        grid = [
            [
                (cells[length].get(d, [0, 0])[0] / cells[length][d][1]) if d in cells[length] else float("nan")
                for length in lengths
            ]
            for d in depths
        ]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{int(n) // 1000}k" for n in lengths])
        ax.set_yticks(range(len(depths)), depths)
        ax.set_title(method.replace("homer", "HOMER"), fontsize=8)
        ax.set_xlabel("tokens")
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    out = RESULTS / f"{name}-depth.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def memory_plot() -> Path | None:
    path = RESULTS / "memory.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["tokens"] for r in rows], [r["peak_rss_above_weights_mib"] for r in rows], "o-", label="HOMER build")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("input tokens (log scale)")
    ax.set_ylabel("peak RSS above weights (MiB)")
    ax.set_title("Peak memory vs input length (embedded model, CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    out = RESULTS / "memory.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def bias_curves(layers_shown: int = 6) -> Path | None:
    """bias[ℓ][d] against the distance d from the scoring query, for every table that ships
    in ``homer/data`` (one panel each): evenly spaced layers, log distance axis."""
    from homer.calibration import _packaged_dir, load_bias
    from homer.significance import smooth_bias

    tables = sorted(_packaged_dir().glob("bias-*-M*.safetensors"))
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 3.4), squeeze=False)
    for ax, path in zip(axes[0], tables):
        bias = load_bias(path).float()
        smoothed = smooth_bias(bias, 0.1)
        layers, m = bias.shape
        distance = range(1, m)
        for layer in sorted({round(i * (layers - 1) / (layers_shown - 1)) for i in range(layers_shown)}):
            (line,) = ax.plot(distance, bias[layer, 1:].tolist(), lw=0.6, alpha=0.5, label=f"layer {layer}")
            ax.plot(distance, smoothed[layer, 1:].tolist(), lw=1.4, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("distance from the scoring query d (tokens, log scale)")
        ax.set_ylabel("bias: mean max-head logit")
        ax.set_title(
            f"calibration bias, M = {m} ({path.stem.split('-')[1][:8]}…); bold: bias_smoothing 0.1", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    out = RESULTS / "bias-curves.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    for out in (retrieval_heatmaps(), memory_plot(), bias_curves()):
        if out:
            print(out)


if __name__ == "__main__":
    main()
