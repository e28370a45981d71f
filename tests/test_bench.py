"""The benchmark tool runs end to end at quick sizes and writes its JSON and table (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_quick_writes_json_and_table(tmp_path):
    r = subprocess.run(
        [sys.executable, "tools/bench.py", "--quick", "--out", str(tmp_path), "--suite", "gallery", "--suite", "training"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    g, t = doc["suites"]["gallery"], doc["suites"]["training"]
    assert g["vectors"] == 20_000 and g["ivf_recall_at_10_fresh_queries"] >= 0.9
    assert g["constrained10_ms_per_query"] > 0 and g["exact_ms_per_query_1"] > 0
    assert t["n_classes"] == 100 and t["cached_head_samples_per_second"] > 0 and t["arcface_weight_mb"] > 0
    assert "| constrained_speedup_vs_full_scan |" in (tmp_path / "bench.md").read_text()
