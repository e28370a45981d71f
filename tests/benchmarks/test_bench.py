"""The benchmark tool runs end to end at quick sizes and writes its JSON and table (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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


def test_embedding_scaling_commit_and_protocol_suites_at_quick_sizes(tmp_path, tiny_catalog):
    from benchmarks.run import markdown_table
    from benchmarks.suites import commit, embedding, scaling
    from recognizer.evaluation.protocols import evaluate_protocols, protocols_markdown

    e = embedding.run(model="lite0@64", n_images=16, photo_size=96, batch=8)
    assert e["images"] == 16 and e["enrolled_vectors"] == 16
    for k in ("bare_timm_images_per_second", "tools_embed_images_per_second", "enroll_images_per_second"):
        assert e[k] > 0
    assert e["tools_vs_bare_timm"] == e["tools_embed_images_per_second"] / e["bare_timm_images_per_second"]
    s = scaling.run(sizes=(500, 2000), per_item=10, dim=32)  # each size probed in a fresh process
    assert [r["vectors"] for r in s["table"]] == [500, 2000]
    assert all(r["gallery_rss_mb"] >= 0 and r["exact_ms_per_query_1"] > 0 for r in s["table"])
    assert "exponent_exact_ms_per_query_1" in s
    c = commit.run(sizes=(200, 1000), dim=16, photos=2, repeats=2)
    assert list(c["sizes"]) == ["200", "1000"] and c["sizes"]["1000"]["add_one_item_ms"] > 0
    md = markdown_table({"machine": {"cpu_count": 2, "platform": "x"}, "suites": {"scaling": s, "commit": c}})
    assert "| vectors | exact_ms_per_query_1 |" in md
    assert "| sizes | vectors | add_one_item_ms |" in md and "| growth |" in md
    # the protocol evaluation on the tiny catalog: the off-the-shelf model against itself at another size
    p = evaluate_protocols(
        {"a": "lite0@64", "b": "lite0@96"}, {"one-shot": str(tiny_catalog), "again": str(tiny_catalog)}, None
    )
    cells = p["protocols"]["one-shot"]
    assert p["protocols"]["again"]["b"]["top1"] == cells["b"]["top1"]  # query embeddings reused, same answer
    assert cells["a"]["gallery_vectors"] == 16 and cells["a"]["queries"] == 16  # 8 photos x the 2 default views
    assert 0 <= cells["b"]["top1"] <= 1 and "mcnemar_p" in cells["b"]["vs_baseline"]
    assert "| one-shot | b |" in protocols_markdown(p)
    # score modes compared on the same gallery and query embeddings; one photo per item: probe ~ prototype
    p = evaluate_protocols(
        {"a": "lite0@64"}, {"one-shot": str(tiny_catalog)}, None, score_modes=("max", "probe")
    )
    cells = p["protocols"]["one-shot"]
    assert list(cells) == ["a [max]", "a [probe]"] and cells["a [probe]"]["score_mode"] == "probe"
    assert abs(cells["a [probe]"]["top1"] - cells["a [max]"]["top1"]) <= 0.125
    assert "vs_baseline" in cells["a [probe]"] and "| one-shot | a [probe] |" in protocols_markdown(p)


def test_unknown_suite_names_the_valid_ones(tmp_path):
    from benchmarks.run import QUICK, SUITES, run_bench

    assert set(QUICK) == set(SUITES) and {"commit", "gallery", "deploy"} <= set(SUITES)
    with pytest.raises(ValueError, match=r"unknown suite\(s\) \['nope'\]; choose from gallery, commit"):
        run_bench(["gallery", "nope"], tmp_path)
    assert not list(tmp_path.iterdir())  # nothing run, nothing written


def test_enrol_views_suite_on_real_photos():
    """Quick run on 20 held-out grocery queries: one row per enrolment, twice the vectors with two views."""
    from conftest import shared_path

    from benchmarks.common import MANIFESTS
    from benchmarks.run import QUICK
    from benchmarks.suites import enrol_views

    root = shared_path("grocery")
    doc = enrol_views.run(
        data_root=root, protocols={"iconic only": str(MANIFESTS / "grocery_unseen.csv")}, **QUICK["enrol_views"]
    )
    rows = {r["enrolled_as"]: r for r in doc["rows"]}
    assert set(rows) == {"whole", "whole+crop:0.6"} and rows["whole"]["queries"] == 20
    assert rows["whole+crop:0.6"]["vectors"] == 2 * rows["whole"]["vectors"] == 38
    assert all(0.0 <= r["top1"] <= r["top1_within_candidates"] <= 1.0 for r in rows.values())


def test_camera_table_summary_is_the_mean_and_worst_over_seeds():
    from benchmarks.suites.camera_table import summarize

    row = {"config": "default", "scene": "hand", "frame_ms_p50": 20.0, "frame_ms_p95": 30.0}
    rows = [dict(row, recall=0.9, wrong_label_frames=0.0, switches_max=0, seed=0),
            dict(row, recall=1.0, wrong_label_frames=0.04, switches_max=3, seed=1)]  # fmt: skip
    (s,) = summarize(rows)
    assert s["seeds"] == 2 and s["recall_mean"] == 0.95 and s["recall_min"] == 0.9
    assert s["wrong_mean"] == 0.02 and s["wrong_max"] == 0.04 and s["switches_max"] == 3 and s["switches_max_mean"] == 1.5
