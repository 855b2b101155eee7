"""One accelerator run: HOMER's invariants on the device, then speed, memory and decoding at
Llama-2-7B shapes (random weights), each part written as soon as it finishes.

1. correctness: on tiny random Llama / Mistral / Qwen2 models in bf16 and fp16, a single-chunk
   build equals a plain forward (within a stated tolerance), depth-first equals level order,
   a re-rotated cache + stock ``generate`` equals the explicit decode loop, save → load is
   exact; and one build on the CPU vs the device (K/V max abs diff, kept positions identical).
2. speed: HOMER build vs plain prefill (plain only where it fits) next to the FLOP ratio the
   method predicts; a measured bf16 GEMM rate and the achieved TFLOP/s against it.
3. memory: peak ``torch.cuda.max_memory_allocated`` of a HOMER build and of a plain prefill
   per length (out-of-memory recorded, not fatal).
4. decode: tokens/s from a 4k-token cache, preallocated buffers vs DynamicCache.

    python -m benchmarks.gpu [--output-dir benchmarks/results]
    python -m benchmarks.gpu --dry-run        # the same code on the CPU at tiny shapes (seconds)

Writes ``<output-dir>/gpu-<part>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from benchmarks.evaluation.flops import homer_flops, plain_prefill_flops
from homer import HomerCache, HomerConfig, build_cache
from homer.fingerprint import model_fingerprint
from homer.generation import DecodeState, GenerationSettings, generate_tokens, working_cache
from homer.layers import DecoderStack
from homer.plan import ChunkPlan
from homer.tree import _Builder, build_level_order, significance_for

from .decode import kv_bytes_per_token, weight_bytes_per_token

RESULTS = Path(__file__).parent / "results"
FAMILIES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
# |single-chunk build − plain forward| allowed per dtype: the build runs its own attention
# (sdpa / flash-attn) in the model dtype, the forward the model's; both round to the dtype
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 6e-2}
P, S = 8, 8  # prefix and suffix tokens of every build

FULL = {  # Llama-2-7B shapes
    "model": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    "speed_lengths": [16_000, 32_000, 64_000],
    "plain_max": 64_000,
    "memory_homer": [16_000, 32_000, 64_000, 128_000],
    "memory_plain": [16_000, 32_000, 64_000],
    "warmup_tokens": 4_000,
    "gemm": 8192,
    "decode_cache": 4096,
    "new_tokens": 64,
    "repeats": 2,
}
DRY = {  # tiny, so that the same path runs on a CPU in seconds; window 256 → M = 128: merges happen
    "model": {
        "hidden_size": 64,
        "num_hidden_layers": 10,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 128,
        "vocab_size": 128,
        "max_position_embeddings": 256,
    },
    "speed_lengths": [256, 512, 1024],
    "plain_max": 1024,
    "memory_homer": [256, 512, 1024, 2048],
    "memory_plain": [256, 512, 1024],
    "warmup_tokens": 128,
    "gemm": 256,
    "decode_cache": 128,
    "new_tokens": 8,
    "repeats": 2,
}


def header(device: torch.device, dtype: str, dry_run: bool) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": str(device),
        "device_name": name,
        "dtype": dtype,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "flash_attn_installed": HAS_FLASH_ATTN,
        "dry_run": dry_run,
    }


def write(out_dir: Path, part: str, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu-{part}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"== {part}: {path}", flush=True)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ids(n: int, seed: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g)


def homer_config(dtype: str, **overrides) -> HomerConfig:
    return HomerConfig(significance="uncalibrated", span="token", cache_dtype=dtype, **overrides)


def guarded(fn, *args) -> dict:
    """A check's result, or its error: one failing check does not end the run."""
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - recorded in the JSON
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"[:2000]}


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- 1. correctness ---------------------------------------------------------------------------
def tiny_model(family: str, device, dtype: torch.dtype, attn: str = "sdpa", window: int = 64, layers: int = 6):
    """A random-weight GQA decoder (4 query heads, 2 kv heads), the tests' tiny model."""
    torch.manual_seed(0)
    config = FAMILIES[family](
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    return model.to(device=device, dtype=dtype).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@torch.no_grad()
def single_chunk(model, dtype: str) -> dict:
    prefix, context, suffix = ids(3, 1, 128), ids(20, 3, 128), ids(2, 2, 128)
    cache = build_cache(model, prefix, context, suffix, homer_config(dtype))
    full = torch.cat([prefix, context, suffix]).view(1, -1).to(model.device)
    out = model(full, use_cache=True)
    k = max(max_diff(cache.keys[i], layer.keys[0]) for i, layer in enumerate(out.past_key_values.layers))
    v = max(max_diff(cache.values[i], layer.values[0]) for i, layer in enumerate(out.past_key_values.layers))
    logits = max_diff(cache.last_logits, out.logits[0, -1])
    tol = TOLERANCE[dtype]
    return {
        "max_abs_diff_keys": k,
        "max_abs_diff_values": v,
        "max_abs_diff_last_logits": logits,
        "tolerance_kv": tol,
        "positions_contiguous": cache.positions.tolist() == list(range(full.shape[1])),
        "passed": k <= tol and v <= tol and cache.positions.tolist() == list(range(full.shape[1])),
    }


def _builder(model, prefix, context, suffix, dtype: str):
    stack = DecoderStack(model)
    cfg = homer_config(dtype).resolve(model.config)
    plan = ChunkPlan(
        len(prefix), len(context), len(suffix), cfg.max_chunk_len, cfg.target_len, stack.num_layers, cfg.warmup_layers
    )
    scorer = significance_for(cfg, model, model_fingerprint(model))
    return _Builder(stack, plan, scorer, prefix, context, suffix, 0, None, kv_dtype=cfg.torch_cache_dtype), plan


@torch.no_grad()
def depth_first_vs_level_order(model, dtype: str) -> dict:
    prefix, context, suffix = ids(3, 1, 128), ids(210, 6, 128), ids(2, 2, 128)
    builder, plan = _builder(model, prefix, context, suffix, dtype)
    depth_first = builder.subtree(0, plan.height, plan.root_target)
    builder, plan = _builder(model, prefix, context, suffix, dtype)
    level = build_level_order(builder, plan, len(prefix), len(suffix))
    same_tokens = torch.equal(depth_first.positions, level.positions) and torch.equal(
        depth_first.sources, level.sources
    )
    pairs = list(zip(depth_first.keys + depth_first.values, level.keys + level.values))
    exact = same_tokens and all(torch.equal(a, b) for a, b in pairs)
    diff = max(max_diff(a, b) for a, b in pairs) if same_tokens else None
    return {
        "leaves": plan.num_leaves,
        "same_kept_tokens": same_tokens,
        "bit_exact": exact,
        "max_abs_diff_kv": diff,
        "passed": exact,
    }


@torch.no_grad()
def rerotated_generate(model, dtype: str, new_tokens: int = 12) -> dict:
    built = build_cache(model, ids(3, 1, 128), ids(200, 2, 128), ids(2, 3, 128), homer_config(dtype))
    question = ids(5, 4, 128)
    model_dtype = next(model.parameters()).dtype
    state = DecodeState(
        kv=built.to_dynamic_cache(dtype=model_dtype, device=model.device, rerotate=False), position=built.next_position
    )
    explicit = list(
        generate_tokens(model, state, question.tolist(), GenerationSettings(max_new_tokens=new_tokens), set())
    )
    kv = built.to_dynamic_cache(dtype=model_dtype, device=model.device)
    full = torch.cat([built.token_ids, question]).view(1, -1).to(model.device)
    out = model.generate(
        full,
        attention_mask=torch.ones_like(full),
        past_key_values=kv,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    stock = out.sequences[0, full.shape[1] :].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(stock, explicit)) if a != b), min(len(stock), len(explicit)))
    # in 16-bit the re-rotated keys round differently from the unrotated ones, so a tie between
    # two random-model logits can break either way: where the two paths first part, the token
    # the explicit loop chose must score within the dtype's tolerance of the stock path's choice
    # (a wrong rotation moves the logits far more than that); in float32 they must be identical
    gap = None
    if agree < min(len(stock), len(explicit)):
        scores = out.scores[agree][0].float()
        gap = float(scores[stock[agree]] - scores[explicit[agree]])
    tied = gap is not None and dtype != "float32" and gap <= TOLERANCE[dtype]
    return {
        "tokens": new_tokens,
        "identical": stock == explicit,
        "leading_tokens_equal": agree,
        "logit_gap_where_they_part": gap,
        "passed": stock == explicit or tied,
    }


def save_load(model, dtype: str) -> dict:
    cache = build_cache(model, ids(3, 1, 128), ids(200, 2, 128), ids(2, 3, 128), homer_config(dtype))
    with tempfile.TemporaryDirectory() as tmp:
        loaded = HomerCache.load(cache.save(Path(tmp) / "doc.homer.safetensors"), model=model)
    exact = all(torch.equal(loaded.tensors()[name], t) for name, t in cache.tensors().items())
    return {
        "bit_exact": exact,
        "metadata_equal": loaded.metadata == cache.metadata,
        "passed": exact and loaded.metadata == cache.metadata,
    }


@torch.no_grad()
def cpu_vs_device(device, dtypes: list[str]) -> dict:
    """One merging build of the tiny Llama on the CPU (float32) and on the device per dtype."""
    prefix, context, suffix = ids(3, 1, 128), ids(210, 6, 128), ids(2, 2, 128)
    reference = build_cache(tiny_model("llama", "cpu", torch.float32), prefix, context, suffix, homer_config("float32"))
    rows = {}
    for dtype in ["float32", *dtypes]:
        model = tiny_model("llama", device, getattr(torch, dtype))
        cache = build_cache(model, prefix, context, suffix, homer_config("float32"))
        same = torch.equal(cache.positions, reference.positions) and torch.equal(cache.sources, reference.sources)
        rows[dtype] = {
            "kept_tokens_identical": same,
            "cache_tokens": len(cache),
            "max_abs_diff_keys": max_diff(cache.keys, reference.keys) if same else None,
            "max_abs_diff_values": max_diff(cache.values, reference.values) if same else None,
            "kept_overlap": len(set(cache.sources.tolist()) & set(reference.sources.tolist())) / len(reference),
        }
    return {"reference": "cpu float32", "builds": rows}


def correctness(device, dtypes: list[str], attn: str) -> dict:
    checks = {}
    for family in FAMILIES:
        for dtype in dtypes:
            row = {}
            model = guarded(tiny_model, family, device, getattr(torch, dtype), attn)
            if isinstance(model, dict):
                checks[f"{family}/{dtype}"] = model
                continue
            row["single_chunk_equals_plain_forward"] = guarded(single_chunk, model, dtype)
            row["depth_first_equals_level_order"] = guarded(depth_first_vs_level_order, model, dtype)
            row["rerotated_generate_equals_explicit_loop"] = guarded(rerotated_generate, model, dtype)
            row["save_load_exact"] = guarded(save_load, model, dtype)
            checks[f"{family}/{dtype}"] = row
            print(family, dtype, {k: v.get("passed", v.get("error")) for k, v in row.items()}, flush=True)
    passed = [c.get("passed") for row in checks.values() for c in row.values() if isinstance(c, dict)]
    return {
        "model_attention": attn,
        "homer_build_attention": "flash_attn" if HAS_FLASH_ATTN and device.type == "cuda" else "sdpa",
        "tolerance_kv": {d: TOLERANCE[d] for d in dtypes},
        "checks": checks,
        "checks_passed": sum(bool(p) for p in passed),
        "checks_total": len(passed),
        "cpu_vs_device": guarded(cpu_vs_device, device, dtypes),
    }


# --- 2-4. 7B shapes ------------------------------------------------------------------------------
def big_model(shape: dict, device, dtype: torch.dtype, attn: str):
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def plan_of(model, context: int, config: HomerConfig) -> ChunkPlan:
    cfg = config.resolve(model.config)
    return ChunkPlan(
        P, context, S, cfg.max_chunk_len, cfg.target_len, model.config.num_hidden_layers, cfg.warmup_layers
    )


def timed(fn, device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


@torch.no_grad()
def homer_build(model, context: int, dtype: str):
    vocab = model.config.vocab_size
    return build_cache(model, ids(P, 1, vocab), ids(context, context, vocab), ids(S, 2, vocab), homer_config(dtype))


@torch.no_grad()
def plain_prefill(model, tokens: int) -> None:
    x = ids(tokens, tokens, model.config.vocab_size).view(1, -1).to(model.device)
    out = model(input_ids=x, use_cache=True, logits_to_keep=1)
    del out


@torch.no_grad()
def gemm_rate(n: int, device, dtype: torch.dtype, repeats: int = 10) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return {"n": n, "dtype": str(dtype), "tflop_per_s": 2 * n**3 / best / 1e12}


def speed(model, shape: dict, device, dtype: str) -> dict:
    timed(lambda: homer_build(model, shape["warmup_tokens"], dtype), device)  # kernels, allocator
    timed(lambda: plain_prefill(model, shape["warmup_tokens"]), device)
    gemm = gemm_rate(shape["gemm"], device, getattr(torch, dtype))
    rows = []
    for context in shape["speed_lengths"]:
        plan = plan_of(model, context, homer_config(dtype))
        flops, plain = homer_flops(model.config, plan), plain_prefill_flops(model.config, P + context + S)
        row = {
            "tokens": P + context + S,
            "leaves": plan.num_leaves,
            "predicted_flop_ratio": flops / plain,
            "homer_tflop": flops / 1e12,
            "plain_tflop": plain / 1e12,
        }
        try:
            seconds = timed(lambda: homer_build(model, context, dtype), device)
            row.update(
                homer_build_s=seconds,
                homer_tflop_per_s=flops / seconds / 1e12,
                homer_over_gemm=flops / seconds / 1e12 / gemm["tflop_per_s"],
            )
        except Exception as error:  # noqa: BLE001
            row["homer_error"] = "out of memory" if is_oom(error) else repr(error)[:500]
        if context <= shape["plain_max"]:
            try:
                seconds = timed(lambda: plain_prefill(model, P + context + S), device)
                row.update(
                    plain_prefill_s=seconds,
                    plain_tflop_per_s=plain / seconds / 1e12,
                    plain_over_gemm=plain / seconds / 1e12 / gemm["tflop_per_s"],
                )
                if "homer_build_s" in row:
                    row["measured_ratio"] = row["homer_build_s"] / seconds
            except Exception as error:  # noqa: BLE001
                row["plain_error"] = "out of memory" if is_oom(error) else repr(error)[:500]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"gemm": gemm, "rows": rows}


class Peak:
    """Peak memory of one call: ``torch.cuda.max_memory_allocated`` on CUDA, else the process
    RSS sampled every 5 ms (a coarse stand-in); both above what was allocated before."""

    def __init__(self, device):
        self.device = device

    def measure(self, fn) -> dict:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak, "peak_above_start_bytes": peak - base, "method": "cuda max_memory_allocated"}
        import psutil

        process = psutil.Process()
        base = process.memory_info().rss
        peak, done = [base], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            fn()
        finally:
            done.set()
            watcher.join()
        return {"peak_bytes": peak[0], "peak_above_start_bytes": peak[0] - base, "method": "process RSS (sampled)"}


def memory(model, shape: dict, device, dtype: str) -> dict:
    peak = Peak(device)
    rows = {"homer": [], "plain": []}
    for kind, lengths in (("homer", shape["memory_homer"]), ("plain", shape["memory_plain"])):
        for context in lengths:
            run = (
                (lambda c=context: homer_build(model, c, dtype))
                if kind == "homer"
                else (lambda c=context: plain_prefill(model, P + c + S))
            )
            row = {"tokens": P + context + S}
            try:
                row.update(peak.measure(run))
                row["peak_gib"] = row["peak_bytes"] / 2**30
            except Exception as error:  # noqa: BLE001
                row["error"] = "out of memory" if is_oom(error) else repr(error)[:500]
            rows[kind].append(row)
            print(kind, json.dumps(row), flush=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"weight_bytes": weights, "homer": rows["homer"], "plain": rows["plain"]}


@torch.no_grad()
def read_bandwidth(device, megabytes: int) -> float:
    x = torch.ones(megabytes * 2**20 // 2, device=device, dtype=torch.bfloat16)
    x.sum()
    best = min(timed(lambda: x.sum(), device) for _ in range(5))
    return x.numel() * 2 / best


def decode(model, shape: dict, device, dtype: str) -> dict:
    n = shape["decode_cache"]  # one leaf of n tokens: the cache holds all of them
    vocab = model.config.vocab_size
    with torch.no_grad():
        cache = build_cache(
            model,
            ids(P, 1, vocab),
            ids(n - P - S, 5, vocab),
            ids(S, 2, vocab),
            homer_config(dtype, max_chunk_len=n, target_len=n),
        )
    question = ids(8, 9, vocab).tolist()
    runs = {"dynamic": [], "preallocated": []}
    for _ in range(shape["repeats"]):
        for kind in runs:  # alternate the two paths
            state = DecodeState(kv=working_cache(cache, model, kind), position=cache.next_position)
            tokens = generate_tokens(
                model, state, question, GenerationSettings(max_new_tokens=shape["new_tokens"]), set()
            )
            first = [next(tokens)]
            started = time.perf_counter()
            rest = list(tokens)
            sync(device)
            seconds = time.perf_counter() - started
            runs[kind].append(
                {
                    "tokens_per_s": len(rest) / seconds,
                    "tokens": first + rest,
                    "kv_dtype": str(state.kv.layers[0].keys.dtype),
                }
            )
            del state
    best = {kind: max(r["tokens_per_s"] for r in rows) for kind, rows in runs.items()}
    bandwidth = read_bandwidth(device, 4096 if device.type == "cuda" else 64)
    weights = weight_bytes_per_token(model)
    kv = kv_bytes_per_token(model, n + shape["new_tokens"] / 2)
    bound = bandwidth / (weights + kv)
    return {
        "cache_tokens": len(cache),
        "new_tokens": shape["new_tokens"],
        "repeats": shape["repeats"],
        "dynamic_tokens_per_s": best["dynamic"],
        "preallocated_tokens_per_s": best["preallocated"],
        "speedup": best["preallocated"] / best["dynamic"],
        "same_tokens": all(r["tokens"] == runs["dynamic"][0]["tokens"] for rows in runs.values() for r in rows),
        "all_runs_tokens_per_s": {k: [r["tokens_per_s"] for r in rows] for k, rows in runs.items()},
        "kv_dtype": {k: rows[0]["kv_dtype"] for k, rows in runs.items()},
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes_per_token": weights,
        "kv_bytes_per_token": kv,
        "bandwidth_bound_tokens_per_s": bound,
        "preallocated_over_bound": best["preallocated"] / bound,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help=f"default: {RESULTS} (a temporary folder with --dry-run)"
    )
    parser.add_argument("--parts", nargs="+", default=["correctness", "speed", "memory", "decode"])
    args = parser.parse_args(argv)
    if args.dry_run:
        device, shape = torch.device("cpu"), DRY
        dtypes, big_dtype, attn = ["float32", "bfloat16"], "float32", "sdpa"
        out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="homer-gpu-dry-"))
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device; use --dry-run")
        device, shape = torch.device("cuda"), FULL
        dtypes, big_dtype = ["bfloat16", "float16"], "bfloat16"
        attn = "flash_attention_2" if HAS_FLASH_ATTN else "sdpa"
        out_dir = args.output_dir or RESULTS
    started = time.perf_counter()
    written = []
    if "correctness" in args.parts:
        t = time.perf_counter()
        result = {**header(device, ",".join(dtypes), args.dry_run), **correctness(device, dtypes, attn)}
        result["wall_s"] = time.perf_counter() - t
        written.append(write(out_dir, "correctness", result))
    big_parts = [p for p in ("speed", "memory", "decode") if p in args.parts]
    if big_parts:
        t = time.perf_counter()
        model = big_model(shape["model"], device, getattr(torch, big_dtype), attn)
        model_s = time.perf_counter() - t
        for part, fn in (("speed", speed), ("memory", memory), ("decode", decode)):
            if part not in big_parts:
                continue
            t = time.perf_counter()
            result = {
                **header(device, big_dtype, args.dry_run),
                "model_config": shape["model"],
                "model_attention": attn,
                "model_build_s": model_s,
                "prefix_suffix_tokens": [P, S],
            }
            result.update(guarded(fn, model, shape, device, big_dtype))
            result["wall_s"] = time.perf_counter() - t
            written.append(write(out_dir, part, result))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"done in {time.perf_counter() - started:.1f} s: {', '.join(str(p) for p in written)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
