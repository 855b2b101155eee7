import pytest

"""The decoding-speed and roofline benchmarks run end to end on a tiny model (no timings asserted)."""

import json
import subprocess
import sys


@pytest.mark.e2e
def test_decode_benchmark_compares_both_paths(model_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.decode",
        "--model",
        str(model_dir),
        "--document-tokens",
        "1500",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["cache_tokens"] <= 512 and result["same_tokens"]
    assert result["dynamic_tokens_per_s"] > 0 and result["preallocated_tokens_per_s"] > 0
    assert min(result["bandwidth_bound_tokens_per_s"].values()) > 0 and result["preallocated_over_bound"] > 0


@pytest.mark.e2e
def test_roofline_benchmark_reports_the_ratio_and_a_profile(model_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.roofline",
        "--model",
        str(model_dir),
        "--tokens",
        "1500",
        "--threads",
        "1",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["matmul_peak"]["gflop_per_s"] > 0 and result["build"]["leaves"] > 1
    assert result["build"]["roofline_ratio"] > 0 and 0 < result["build"]["attention_share_of_flops"] < 1
    profile = result["profile"]
    assert profile["top_ops"] and 0 < profile["matmul_share"] <= 1
