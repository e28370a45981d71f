from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from recognizer.data.manifest import load_manifest
from recognizer.enroll import enroll_manifest
from recognizer.gallery import Gallery
from recognizer.session import open_or_create_gallery


@pytest.fixture
def two_galleries(tmp_path, tiny_catalog, tiny_model):
    """Two galleries of the tiny catalog minus one item (so its queries are 'unknown'), two models."""
    import torch

    from recognizer.models.model import build_model

    m = load_manifest(tiny_catalog)
    rows = [r for r in m.select(role="gallery") if r.item_id != "item0007"]
    dirs = []
    for i, model in enumerate([tiny_model, None]):
        if model is None:
            torch.manual_seed(7)
            model = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False).eval()
        mdir = model.save(tmp_path / f"model{i}")
        g, model = open_or_create_gallery(tmp_path / f"g{i}", str(mdir))
        enroll_manifest(g, model, m, rows, progress=False, num_workers=0)
        dirs.append(g.root)
    return dirs


def test_report_tool_end_to_end(tmp_path, tiny_catalog, two_galleries):
    g0, g1 = two_galleries
    out = tmp_path / "rep"
    r = subprocess.run(
        [sys.executable, "tools/report.py", "--gallery", str(g0), "--manifest", str(tiny_catalog), "--out", str(out),
         "--compare", str(g1), "--calibrate", "--no-progress", "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "| top-1 (all items) |" in r.stdout and "McNemar p =" in r.stdout
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert m["items"] == 7 and m["known_queries"] == 14 and m["unknown_item_queries"] == 2
    assert 0 <= m["top1_ci95"][0] <= m["top1"] <= m["top1_ci95"][1] <= 1
    assert set(m["candidates"]) == {"2", "5", "all"}
    assert m["open_set"]["calibrated"] and m["open_set"]["unknown_rejected_at_recommended"] is not None
    assert Gallery.open(g0).threshold == pytest.approx(m["open_set"]["recommended_threshold"])
    assert doc["comparison"]["queries"] == 14
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Worst confusions" in html and "McNemar" in html
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(preds) == 16 and preds[0].keys() == {
        "path",
        "item_id",
        "pred_item_id",
        "score",
        "accepted",
        "topk_ids",
        "topk_scores",
    }


def test_report_rejects_unknown_candidate_ids(tmp_path, tiny_catalog, two_galleries):
    q = tmp_path / "q.csv"
    q.write_text("path,item_id,role,candidates\nwild/item0001_00.jpg,item0001,query,item0001;no-such-item\n")
    r = subprocess.run(
        [sys.executable, "tools/report.py", "--gallery", str(two_galleries[0]), "--manifest", str(q), "--data-root",
         str(tiny_catalog.parent), "--out", str(tmp_path / "rep"), "--no-progress", "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and "no-such-item" in r.stderr


def test_identical_galleries_compare_as_no_difference(tmp_path, tiny_catalog, two_galleries):
    from recognizer.evaluation.report import run_report

    m = load_manifest(tiny_catalog)
    doc, summary = run_report(
        two_galleries[0], m, tmp_path / "r", compare_dir=two_galleries[0], progress=False, num_workers=0
    )
    c = doc["comparison"]
    assert c["mcnemar_p"] == 1.0 and c["top1_diff_b_minus_a"] == 0 and not c["significant_at_0.05"]
    assert np.isfinite(doc["metrics"]["map_at_r"])
