"""The soak benchmark's short versions against a real SmolLM2 server (150 requests in CI, 500 with
the slow tests): no 5xx, no leaked KV block, no thread or descriptor growth, the greedy probe always
the same, and a clean exit on SIGTERM. The full run (5,000 requests) is `python benchmarks/soak.py`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("num_requests", [150, pytest.param(500, marks=pytest.mark.slow)])
def test_soak(tmp_path, num_requests):
    out = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--requests", str(num_requests), "--out", str(out)]
    subprocess.run(command, check=True, timeout=900, cwd=ROOT)
    result = json.loads(out.read_text())
    counts = result["status_counts"]
    assert result["requests"] >= num_requests and result["num_5xx"] == 0, counts
    assert not {"transport_error", "stream_cut", "stream_error"} & counts.keys(), result["errors"]
    assert counts.get("200", 0) > num_requests * 2 // 5
    assert counts.get("400", 0) > 0 and counts.get("disconnected", 0) > 0
    assert result["kv_blocks_leaked"] == 0
    assert result["threads_growth"] == 0 and result["fds_growth"] <= 2
    assert result["rss_growth_last_half_pct"] < 5.0  # (the 3 % target is the full run's)
    assert result["probe_texts_distinct"] == 1
    assert result["server_alive_after"] and result["server_exit_code"] == 0  # drained on SIGTERM
