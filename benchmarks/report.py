"""Markdown tables of the committed benchmark results (pasted into the README).

python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def needle_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        f"Needle in essays, {data['model']}, {data['prompt_format']}; {data['decoding']}.",
        "",
        "| method | tokens | correct / n | accuracy | 95 % CI | mean seconds per answer |",
        "|---|---|---|---|---|---|",
    ]
    for c in data["cells"]:
        lines.append(
            f"| {c['method']} | {c['tokens']} | {c['correct']} / {c['n']} | {c['accuracy']:.0%} | "
            f"{c['ci95'][0]:.0%}–{c['ci95'][1]:.0%} | {c['mean_seconds']} |"
        )
    return "\n".join(lines)


def memory_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [
        f"Peak memory of a HOMER build ({data['model']}, {data['device']}, each length in a fresh process).",
        "",
        "| input tokens | leaves | cache tokens | peak RSS above weights (MiB) | build (s) |",
        "|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['tokens']} | {r['leaves']} | {r['cache_tokens']} | {r['peak_rss_above_weights_mib']} "
            f"| {r['build_seconds']} |"
        )
    lines.append(f"\nPeak at the longest ÷ peak at the shortest input: **{data['peak_ratio_longest_to_shortest']}**.")
    return "\n".join(lines)


def main() -> None:
    for name, render in (("needle.json", needle_table), ("memory.json", memory_table)):
        path = RESULTS / name
        if path.exists():
            print(render(path), end="\n\n")


if __name__ == "__main__":
    main()
