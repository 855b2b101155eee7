"""Resumable builds: what a checkpointed build costs, and what a resume saves.

On the embedded model, one document cut into 32 leaves (a small ``max_chunk_len`` keeps it
cheap on a CPU): a plain one-shot build; the same build with checkpoints (the overhead of
saving every finished subtree, and the most checkpoint bytes on disk at once); a build
stopped after leaf ``--stop-leaf`` (an exception from its progress callback, as a killed
worker would stop); and its resume from the checkpoints — leaves computed, seconds, and
whether the cache equals the one-shot build's bit for bit (torch.equal on every tensor).

    python -m benchmarks.resume --tokens 6000 --max-chunk-len 256 --stop-leaf 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.evaluation.haystack import needle_document
from homer import HomerConfig, build_document_cache
from homer.checkpoints import DirectoryCheckpointer
from homer.models import load_model

RESULTS = Path(__file__).parent / "results"


class _Stop(Exception):
    pass


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) if folder.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume")
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--max-chunk-len", type=int, default=256)
    parser.add_argument("--stop-leaf", type=int, default=16, help="stop the first build after this many leaves")
    parser.add_argument("--output", default=str(RESULTS / "resume.json"))
    args = parser.parse_args(argv)

    model, tokenizer = load_model()
    text = needle_document(tokenizer, args.tokens, depth=0.5, seed=0).document
    config = HomerConfig(max_chunk_len=args.max_chunk_len, significance="uncalibrated")

    started = time.perf_counter()
    plain = build_document_cache(model, tokenizer, text, config)
    plain_seconds = time.perf_counter() - started
    leaves = int(plain.metadata["num_leaves"])

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "full"
        peak = [0]

        def watch(done, total, message):
            peak[0] = max(peak[0], _folder_bytes(folder))

        started = time.perf_counter()
        checked = build_document_cache(
            model, tokenizer, text, config, checkpoints=DirectoryCheckpointer(folder), progress=watch
        )
        checked_seconds = time.perf_counter() - started
        root_bytes = _folder_bytes(folder)

        folder = Path(tmp) / "stopped"
        checkpoints = DirectoryCheckpointer(folder)

        def stop(done, total, message):
            if message.startswith("read chunk ") and int(message.split()[2].split("/")[0]) >= args.stop_leaf:
                raise _Stop

        started = time.perf_counter()
        try:
            build_document_cache(model, tokenizer, text, config, checkpoints=checkpoints, progress=stop)
            raise SystemExit("the build was not stopped: use a smaller --stop-leaf")
        except _Stop:
            stopped_seconds = time.perf_counter() - started
        kept = sorted(checkpoints.keys())
        started = time.perf_counter()
        resumed = build_document_cache(model, tokenizer, text, config, checkpoints=checkpoints)
        resumed_seconds = time.perf_counter() - started

    identical = all(torch.equal(t, resumed.tensors()[name]) for name, t in plain.tensors().items())
    out = {
        "task": "resumable build: one-shot vs stopped and resumed",
        "model": getattr(model, "homer_name", ""),
        "machine": f"{torch.get_num_threads()} CPU threads (shared with other jobs)"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "context_tokens": int(plain.metadata["context_len"]),
        "leaves": leaves,
        "settings": json.loads(config.settings_json()),
        "one_shot_seconds": round(plain_seconds, 2),
        "checkpointed_one_shot_seconds": round(checked_seconds, 2),
        "checkpoint_overhead": round(checked_seconds / plain_seconds - 1, 3),
        "checkpoint_bytes_peak": peak[0],
        "checkpoint_bytes_after_build": root_bytes,
        "stopped_after_leaf": args.stop_leaf,
        "stopped_seconds": round(stopped_seconds, 2),
        "checkpoints_kept_when_stopped": kept,
        "resumed": resumed.metadata["resumed"],
        "resumed_leaves_computed": int(resumed.metadata["leaves_computed"]),
        "one_shot_leaves_computed": int(checked.metadata["leaves_computed"]),
        "resumed_seconds": round(resumed_seconds, 2),
        "resumed_over_one_shot_seconds": round(resumed_seconds / plain_seconds, 3),
        "bit_identical_to_one_shot": identical,
        "checkpointed_bit_identical_to_plain": all(
            torch.equal(t, checked.tensors()[name]) for name, t in plain.tensors().items()
        ),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
