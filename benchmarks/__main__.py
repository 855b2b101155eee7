"""Every evaluation and benchmark in one command; JSON results and plots in benchmarks/results.

    python -m benchmarks                    # the full plan of the evaluation issue (days on a CPU)
    python -m benchmarks --samples 8        # fewer samples per retrieval cell
    python -m benchmarks --only passkey ablation plots report
    python -m benchmarks --model ID --device cuda   # a bigger model on a GPU

Each step runs in its own process (a failing step is reported, the others still run), in
this order: passkey, needle, ablation, sweep, perplexity, speed, memory, roofline, decode,
citations, deep-read, app-book, plots, report. ``--dry-run`` prints the commands only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time

BASELINES = ["plain", "clipped", "linear", "dynamic", "yarn", "homer", "homer+yarn"]
# the paper's method and the product's default side by side (see the README's results)
VARIANTS = ["paper:calibrated:0", "product:calibrated:0:word:24"]


def steps(args) -> dict[str, list[str]]:
    model = ["--model", args.model] if args.model else []
    device = ["--device", args.device] if args.device else []
    n = ["--samples", str(args.samples)]
    retrieval = ["benchmarks.retrieval", *model, *device, *n]
    return {
        "passkey": [
            *retrieval,
            "--task",
            "passkey",
            "--prompt-style",
            "completion",
            "--lengths",
            "4000",
            "8000",
            "16000",
            "32000",
            "64000",
            "--methods",
            *BASELINES,
            "--variants",
            *VARIANTS,
        ],
        "needle": [
            *retrieval,
            "--task",
            "needle",
            "--lengths",
            "4000",
            "16000",
            "32000",
            "--methods",
            *BASELINES,
            "--variants",
            *VARIANTS,
        ],
        "ablation": [
            *retrieval,
            "--task",
            "passkey",
            "--prompt-style",
            "completion",
            "--lengths",
            "32000",
            "--name",
            "ablation",
            "--protocols",
            "question-aware",
            "--variants",
            "calibrated:calibrated:0",
            "uncalibrated:uncalibrated:0",
            "random:random:0",
        ],
        "sweep": [
            *retrieval,
            "--task",
            "needle",
            "--lengths",
            "16000",
            "--name",
            "sweep",
            "--variants",
            *[f"w{w}:warmup_layers={w},span=word,query_rows=24" for w in (6, 11, 16)],
            *[f"m{m}:max_chunk_len={m},span=word,query_rows=24" for m in (2048, 3072)],
        ],
        "perplexity": ["benchmarks.perplexity", *model, *device],
        "speed": ["benchmarks.speed", *model, *device],
        "memory": ["benchmarks.memory", *model, *device],
        "roofline": ["benchmarks.roofline", *model],
        "decode": ["benchmarks.decode", *model, *device],
        "citations": ["benchmarks.citations", *model],
        "deep-read": ["benchmarks.deep_read", *model],
        "app-book": ["benchmarks.app_book", *(["--model", args.model] if args.model else [])],
        "plots": ["benchmarks.plots"],
        "report": ["benchmarks.report"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--samples", type=int, default=50, help="samples per retrieval cell (the plan: 50)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    plan = steps(args)
    unknown = set(args.only or []) - set(plan)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {list(plan)}")
    failed = []
    for name, command in plan.items():
        if args.only and name not in args.only:
            continue
        line = [sys.executable, "-m", *command]
        print(f"== {name}: {shlex.join(line[1:])}", flush=True)
        if args.dry_run:
            continue
        started = time.perf_counter()
        code = subprocess.call(line)
        print(
            f"== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if code:
            failed.append(name)
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
