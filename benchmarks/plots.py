"""Plots of the committed results: accuracy by depth × length per method (heat maps) and
peak memory vs input length (log x-axis). Writes PNG files next to the JSON.

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
        grid = [[(cells[length].get(d, [0, 0])[0] / cells[length][d][1]) if d in cells[length] else float("nan")
                 for length in lengths] for d in depths]
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


def main() -> None:
    for out in (retrieval_heatmaps(), memory_plot()):
        if out:
            print(out)


if __name__ == "__main__":
    main()
