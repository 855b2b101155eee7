"""The evaluation harness runs every method end to end (tiny model, one short sample)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_retrieval_harness_runs_every_method(model_dir, tmp_path, task):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.retrieval",
        "--model",
        str(model_dir),
        "--task",
        task,
        "--lengths",
        "1500",
        "--samples",
        "1",
        "--methods",
        "plain",
        "clipped",
        "linear",
        "yarn",
        "homer",
        "homer+yarn",
        "--variants",
        "paper:uncalibrated:0",
        "pooled:uncalibrated:7",
        "words:significance=uncalibrated,span=word,query_rows=3",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "smoke.jsonl").read_text().splitlines()]
    methods = {row["method"] for row in rows}
    assert {
        "plain",
        "clipped",
        "linearx2",
        "yarnx2",
        "homer[paper]-question-aware",
        "homer[pooled]-document-first",
        "homer+yarn[paper]-document-first",
        "homer[words]-document-first",
    } <= methods
    summary = json.loads((tmp_path / "smoke.json").read_text())
    assert {c["method"] for c in summary["cells"]} == methods
    assert all(0 <= c["ci95"][0] <= c["accuracy"] <= c["ci95"][1] <= 1 for c in summary["cells"])
    assert all(0 <= row["answer_kept"] <= 1 for row in rows if row["method"].startswith("homer"))
    assert all(row["answer_kept"] is None for row in rows if not row["method"].startswith("homer"))


def test_answer_kept_counts_the_answer_tokens_the_cache_spared():
    from types import SimpleNamespace

    import torch
    from conftest import tiny_tokenizer

    from benchmarks.evaluation.haystack import answer_kept

    tokenizer = tiny_tokenizer()  # one token per character
    document = "abc 1234 def"
    assert answer_kept(SimpleNamespace(sources=torch.arange(12)), tokenizer, document, "1234") == 1.0
    assert answer_kept(SimpleNamespace(sources=torch.tensor([-1, 0, 1, 4, 5, 9])), tokenizer, document, "1234") == 0.5
    assert answer_kept(SimpleNamespace(sources=torch.tensor([0, 1, 2])), tokenizer, document, "1234") == 0.0
    assert answer_kept(SimpleNamespace(sources=torch.arange(12)), tokenizer, document, "9999") is None


@pytest.mark.e2e
def test_speed_benchmark_reports_ratios(model_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.speed",
        "--model",
        str(model_dir),
        "--lengths",
        "1500",
        "--follow-up",
        "3000",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    (row,) = result["build_vs_prefill"]
    assert row["leaves"] > 1 and 0 < row["predicted_flop_ratio"] < 1 and row["measured_ratio"] > 0
    follow = result["follow_up"]
    assert follow["cache_tokens"] <= 512 and follow["file_over_bound"] >= 1 and follow["decoded_tokens"] >= 1


@pytest.mark.e2e
def test_perplexity_benchmark_compares_homer_with_the_last_window(model_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.perplexity",
        "--model",
        str(model_dir),
        "--lengths",
        "1500",
        "--samples",
        "1",
        "--span",
        "64",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    (row,) = result["rows"]
    assert row["cache_tokens"] <= 512 and row["homer_ppl"] > 1 and row["last_window_ppl"] > 1


def test_perplexity_of_an_uncompressed_cache_equals_the_plain_model():
    """With one chunk and T ≥ length nothing is pruned: both sides score the same context."""
    from conftest import random_ids

    from benchmarks.perplexity import homer_nll, last_window_nll
    from homer import HomerConfig

    model = tiny_model("llama", window=1024)
    before, span = random_ids(300, 1).tolist(), random_ids(40, 2).tolist()
    h, cache_len = homer_nll(model, before, span, HomerConfig(cache_dtype="float32"))
    assert cache_len == 300
    assert abs(h - last_window_nll(model, before, span, 300)) < 1e-4


def test_one_command_plans_every_step_and_refuses_unknown_ones():
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--dry-run", "--samples", "2"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    for step in (
        "passkey",
        "needle",
        "ablation",
        "sweep",
        "perplexity",
        "speed",
        "memory",
        "roofline",
        "decode",
        "citations",
        "deep-read",
        "app-book",
        "plots",
        "report",
    ):
        assert f"== {step}:" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown steps" in bad.stderr


@pytest.mark.e2e
def test_needle_trace_follows_the_number_through_every_block(model_dir):
    cmd = [sys.executable, "-m", "benchmarks.trace_needle", "--model", str(model_dir), "--tokens", "1500"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    *blocks, summary = lines
    assert summary["blocks_holding_it"] == len(blocks) >= 1
    assert blocks[0]["layers"][0] == 0 and all(0 <= r <= 1 for b in blocks for r in b["rank_by_layer"].values())
    assert summary["kept_in_cache"] == blocks[-1]["kept"]


@pytest.mark.e2e
def test_focus_page_benchmark_checks_the_listed_sources_against_the_planted_pages(model_dir, tmp_path):
    out = tmp_path / "pages.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.focus_pages",
        "--model",
        str(model_dir),
        "--seeds",
        "0",
        "--pages",
        "6",
        "--facts",
        "3",
        "--max-new-tokens",
        "2",
        "--output",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len({r["page"] for r in rows}) == 3
    for row in rows:  # BM25 finds each planted fact's distinctive words on its page
        assert row["any_source_right"] and row["sources"] and all(1 <= p <= 6 for p in row["sources"])
    summary = json.loads(out.read_text())["documents"]["all"]
    assert summary["a_source_on_the_fact_page"] == {"right": 3, "n": 3, "rate": 1.0}


@pytest.mark.e2e
def test_retrieval_recall_measures_the_models_own_vectors_and_calibrates_heads(model_dir, tmp_path):
    out = tmp_path / "recall.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.retrieval_recall",
        "--sets",
        "haystack",
        "--methods",
        "bm25",
        "--tokens",
        "3000",
        "--squad-questions",
        "4",
        "--hotpot-items",
        "4",
        "--model",
        str(model_dir),
        "--key-layers",
        "1,3",
        "--key-kinds",
        "key,query",
        "--calibrate-heads",
        "2",
        "--calibration-tokens",
        "3000",
        "--calibration-squad",
        "4",
        "--calibration-hotpot",
        "4",
        "--output",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    calibration = result["head_calibration"]
    assert {k: len(v) for k, v in calibration["chosen"].items()} == {"key": 2, "query": 2}
    assert len(calibration["per_head"]) == 2 * 2 + 2 * 4  # kv heads and query heads of two layers
    hay = result["sets"]["haystack"]
    expected = {"bm25"} | {
        f"{p}model-{k}-{m}" for p in ("", "bm25+") for k in ("key", "query") for m in ("L1", "L3", "top2")
    }
    assert set(hay["recall"]) == expected
    assert hay["model_vectors"]["bytes_per_token_per_layer"] == 2 * 16 * 2  # kv heads * head dim * fp16
    for method, got in hay["recall"].items():
        assert got["all"]["questions"] == hay["squad_questions"] + hay["hotpotqa_questions"], method
        assert 0 <= got["all"]["at_1"] <= got["all"]["at_3"] <= got["all"]["at_5"] <= 1, method


@pytest.mark.e2e
def test_reconstruction_probe_fits_and_scores_held_out_chunks(model_dir, tmp_path):
    from benchmarks.reconstruction_probe import predict, ridge, spearman

    x = torch.randn(200, 5)
    w = ridge(x, x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.25, strength=0.0)
    assert torch.allclose(w, torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25]), atol=1e-4)
    assert spearman(predict(w, x), -predict(w, x)) == pytest.approx(-1.0)
    out = tmp_path / "probe.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.reconstruction_probe",
        "--model",
        str(model_dir),
        "--chunk",
        "64",
        "--train",
        "4",
        "--test",
        "2",
        "--plan-tokens",
        "2000",
        "--output",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    first, last = result["leaf_layers"]
    assert result["band"] and all(first <= layer <= last for layer in result["band"])
    assert set(result["layers"]) == {str(layer) for layer in result["band"]}
    for got in result["layers"].values():
        assert -1 <= got["spearman_min"] <= got["spearman_median"] <= 1 and 0 <= got["top10_overlap_median"] <= 1
