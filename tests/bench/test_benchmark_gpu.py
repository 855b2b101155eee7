import pytest

"""The accelerator benchmark runs end to end on the CPU at tiny shapes (no timings asserted)."""

import json

from benchmarks import gpu

PARTS = ("correctness", "speed", "memory", "decode")


def numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


@pytest.mark.slow
def test_dry_run_writes_every_part(tmp_path):
    assert gpu.main(["--dry-run", "--output-dir", str(tmp_path)]) == 0
    results = {part: json.loads((tmp_path / f"gpu-{part}.json").read_text()) for part in PARTS}
    for part, result in results.items():
        assert "error" not in result, (part, result["error"])
        assert result["dry_run"] and result["torch"] and result["device_name"] and result["dtype"], part
        assert numbers(result), part
    correctness = results["correctness"]
    assert correctness["checks_total"] == 3 * 2 * 4 and correctness["checks_passed"] == correctness["checks_total"]
    assert correctness["cpu_vs_device"]["builds"]["float32"]["kept_tokens_identical"]
    speed = results["speed"]
    assert speed["gemm"]["tflop_per_s"] > 0
    assert all(
        r["homer_build_s"] > 0 and r["plain_prefill_s"] > 0 and 0 < r["predicted_flop_ratio"] for r in speed["rows"]
    )
    assert max(r["leaves"] for r in speed["rows"]) > 1  # HOMER actually merges at these shapes
    memory = results["memory"]
    assert all("peak_bytes" in r for r in memory["homer"] + memory["plain"])
    decode = results["decode"]
    assert decode["dynamic_tokens_per_s"] > 0 and decode["preallocated_tokens_per_s"] > 0 and decode["same_tokens"]
