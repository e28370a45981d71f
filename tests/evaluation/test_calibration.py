"""Open-set calibration with known answers: hand-chosen scores, hand-computed FNMR, threshold and F1.

The gallery holds three items, one 8-d vector each: A = e0, B = e1, C = e2. Each query is a unit
vector whose first three coordinates are its cosine scores against A, B and C exactly (the rest
of its length sits on e3), so every genuine and impostor score below is known by construction.
A stand-in embedder (the ``embedder`` hook of ``run_report``, the one the ONNX backend uses)
turns each query image, a solid PNG whose red value is the query's number, into its vector.

    query  truth  scores (A, B, C)     top    correct  genuine  impostor (best other / unknown's top)
    q1     A      (0.99, 0.01, 0.01)   0.99   yes      0.99     0.01
    q2     B      (0.203, 0.902, 0)    0.902  yes      0.902    0.203
    q3     C      (0.302, 0, 0.803)    0.803  yes      0.803    0.302
    q4     A      (0.702, 0, 0.402)    0.702  yes      0.702    0.402
    q5     B      (0.603, 0.452, 0)    0.603  no (A)   0.452    0.603
    q6     C      (0, 0.502, 0.352)    0.502  no (B)   0.352    0.502
    u1     D      (0.622, 0, 0)        0.622  unknown item       0.622
    u2     D      (0, 0.553, 0)        0.553  unknown item       0.553

Threshold grid: 201 points from min(impostor) - 0.01 = 0.0 to max(genuine) + 0.01 = 1.0, i.e. steps
of 0.005 (no score above sits on a grid point). Accepting the n best top scores (0.99, 0.902, 0.803,
0.702 | 0.622 (u), 0.603 (wrong), 0.553 (u), 0.502 (wrong)) with 6 known queries:
n=1..4: precision 1, recall n/6, F1 = 2/7, 1/2, 2/3, 4/5; n=5: P 4/5, R 2/3, F1 8/11;
n=6: 2/3; n=7: 8/13; n=8: 4/7. The best F1 is 0.8 for any threshold in (0.622, 0.702]; the
first grid point there is 0.625, the recommended threshold that --calibrate stores.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

from recognizer.data.manifest import load_manifest
from recognizer.evaluation.metrics import fnmr_at_fmr, open_set_curves, recommend_threshold
from recognizer.evaluation.report import run_report
from recognizer.gallery import Gallery

DIM = 8
FP = "fp-calibration"
ITEMS = ["A", "B", "C"]
# (truth, scores against A, B, C)
QUERIES = [
    ("A", (0.99, 0.01, 0.01)),
    ("B", (0.203, 0.902, 0.0)),
    ("C", (0.302, 0.0, 0.803)),
    ("A", (0.702, 0.0, 0.402)),
    ("B", (0.603, 0.452, 0.0)),
    ("C", (0.0, 0.502, 0.352)),
    ("D", (0.622, 0.0, 0.0)),
    ("D", (0.0, 0.553, 0.0)),
]
GENUINE = [0.99, 0.902, 0.803, 0.702, 0.452, 0.352]
IMPOSTOR = [0.01, 0.203, 0.302, 0.402, 0.603, 0.502, 0.622, 0.553]  # best wrong item; unknown's top
TOP = [0.99, 0.902, 0.803, 0.702, 0.603, 0.502, 0.622, 0.553]
CORRECT = [True, True, True, True, False, False, False, False]
KNOWN = [True] * 6 + [False] * 2


def _query_vectors() -> np.ndarray:
    v = np.zeros((len(QUERIES), DIM), np.float64)
    for i, (_, s) in enumerate(QUERIES):
        v[i, :3] = s
        v[i, 3] = np.sqrt(1.0 - sum(x * x for x in s))
    return v.astype(np.float32)


class _RedValue:
    """Preprocessing of the stand-in: an image becomes its top-left red value (the query number)."""

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.tensor([float(rgb[0, 0, 0])])


class TableEmbedder:
    """An embedder (``preprocess``, ``embedding_dim``, ``embed_batch``, ``fingerprint``) returning
    a fixed vector per query image."""

    fingerprint = FP
    embedding_dim = DIM
    preprocess = _RedValue()

    def __init__(self, table: np.ndarray):
        self.table = table

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        return self.table[batch[:, 0].round().long().numpy()]


@pytest.fixture
def calibration_case(tmp_path):
    """(gallery folder, manifest path): the hand-made gallery and the 8 query images."""
    g = Gallery.create(
        tmp_path / "g",
        {"fingerprint": FP, "embedding_dim": DIM, "preprocess": {"input_size": 8}, "config": {"backbone": "x"}},
        model_spec="",
    )
    g.add(ITEMS, np.eye(DIM, dtype=np.float32)[:3], paths=[f"{it}.png" for it in ITEMS])
    lines = ["path,item_id,role"]
    for i, (truth, _) in enumerate(QUERIES):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"q{i}.png")
        lines.append(f"q{i}.png,{truth},query")
    man = tmp_path / "queries.csv"
    man.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return g.root, man


def test_stand_in_scores_are_the_hand_chosen_ones(calibration_case):
    root, _ = calibration_case
    items, scores = Gallery.open(root).exact_item_scores(_query_vectors())
    assert items == ITEMS
    np.testing.assert_allclose(scores, [s for _, s in QUERIES], atol=1e-6)


def test_fnmr_at_fmr_by_hand():
    g, imp = np.array(GENUINE), np.array(IMPOSTOR)
    # FMR 1% of 8 impostors allows none at or above the threshold: just above the best impostor 0.622;
    # genuine 0.452 and 0.352 fall below it
    fnmr, thr = fnmr_at_fmr(g, imp, 0.01)
    assert fnmr == pytest.approx(2 / 6) and thr == np.nextafter(0.622, np.inf)
    fnmr, thr = fnmr_at_fmr(g, imp, 0.25)  # 2 of 8 impostors (0.622, 0.603) may pass: just above 0.553
    assert fnmr == pytest.approx(2 / 6) and thr == np.nextafter(0.553, np.inf)
    fnmr, thr = fnmr_at_fmr(g, imp, 0.5)  # 4 may pass: just above 0.402; only 0.352 is rejected
    assert fnmr == pytest.approx(1 / 6) and thr == np.nextafter(0.402, np.inf)
    assert (imp >= thr).mean() == 0.5  # the false-match rate there is exactly the one allowed
    fnmr, thr = fnmr_at_fmr(g, imp, 0.75)  # 6 may pass: just above 0.203; every genuine is accepted
    assert fnmr == 0.0 and thr == np.nextafter(0.203, np.inf)
    assert fnmr_at_fmr(g, imp, 1.0) == (0.0, 0.01)  # every impostor may pass: the lowest one


def test_open_set_curves_and_recommended_threshold_by_hand():
    thr = np.array([0.0, 0.5, 0.6, 0.625, 0.7, 0.71, 1.0])
    c = open_set_curves(np.array(TOP), np.array(CORRECT), np.array(KNOWN), thr)
    # accepted at each threshold: 8, 8, 6, 4, 4, 3, 0 queries, of them 4, 4, 4, 4, 4, 3, 0 correct
    # (none accepted: precision is defined as 1)
    np.testing.assert_allclose(c["precision"], [4 / 8, 4 / 8, 4 / 6, 1, 1, 1, 1])
    np.testing.assert_allclose(c["recall"], [4 / 6, 4 / 6, 4 / 6, 4 / 6, 4 / 6, 3 / 6, 0])
    np.testing.assert_allclose(c["unknown_accept"], [1, 1, 1 / 2, 0, 0, 0, 0])
    t, f1 = recommend_threshold(c)
    assert (t, f1) == (0.625, pytest.approx(0.8))  # the first of the thresholds with the best F1


def _check_calibrated(root, doc):
    os_ = doc["metrics"]["open_set"]
    assert os_["calibrated"] is True
    assert os_["recommended_threshold"] == pytest.approx(0.625, abs=1e-6)
    assert os_["f1_at_recommended"] == pytest.approx(0.8, abs=1e-6)
    assert os_["unknown_rejected_at_recommended"] == 1.0  # both unknowns' tops (0.622, 0.553) < 0.625
    assert os_["genuine_mean"] == pytest.approx(sum(GENUINE) / 6, abs=1e-6)
    assert os_["impostor_mean"] == pytest.approx(sum(IMPOSTOR) / 8, abs=1e-6)
    fnmr, thr = os_["fnmr_at_fmr_1pct"]
    assert fnmr == pytest.approx(2 / 6) and thr == pytest.approx(0.622, abs=1e-6)  # just above u1's 0.622
    assert os_["fnmr_at_fmr_0.1pct"][0] == pytest.approx(2 / 6)
    assert doc["metrics"]["top1"] == pytest.approx(4 / 6)
    assert doc["metrics"]["known_queries"] == 6 and doc["metrics"]["unknown_item_queries"] == 2
    # the 201-point grid runs from 0.0 to 1.0
    grid = doc["curves"]["threshold"]
    assert len(grid) == 201 and grid[0] == pytest.approx(0.0, abs=1e-6) and grid[-1] == pytest.approx(1.0, abs=1e-6)
    # what calibration stores in the gallery: the recommended threshold; the margin is untouched
    g = Gallery.open(root)
    assert g.threshold == pytest.approx(0.625, abs=1e-6) and g.threshold == os_["recommended_threshold"]
    assert os_["current_threshold"] == g.threshold
    assert g.margin == 0.0


def test_run_report_calibrates_to_the_hand_computed_threshold(tmp_path, calibration_case):
    root, man = calibration_case
    assert Gallery.open(root).threshold == 0.0
    doc, _ = run_report(
        root, load_manifest(man), tmp_path / "rep", calibrate=True, embedder=TableEmbedder(_query_vectors()),
        progress=False, num_workers=0, n_boot=50,
    )  # fmt: skip
    _check_calibrated(root, doc)
    # the predictions are decided with the calibrated threshold: the 4 correct answers above 0.625 only
    preds = list(csv.DictReader(open(tmp_path / "rep" / "predictions.csv")))
    assert [p["accepted"] for p in preds] == ["1", "1", "1", "1", "0", "0", "0", "0"]
    assert [p["pred_item_id"] for p in preds] == ["A", "B", "C", "A", "A", "B", "A", "B"]


def test_run_report_without_calibrate_leaves_the_gallery_alone(tmp_path, calibration_case):
    root, man = calibration_case
    doc, _ = run_report(
        root, load_manifest(man), tmp_path / "rep", embedder=TableEmbedder(_query_vectors()),
        progress=False, num_workers=0, n_boot=50,
    )  # fmt: skip
    assert doc["metrics"]["open_set"]["recommended_threshold"] == pytest.approx(0.625, abs=1e-6)
    assert "calibrated" not in doc["metrics"]["open_set"]
    assert Gallery.open(root).threshold == 0.0


def test_report_tool_calibrate_flag_stores_the_threshold(tmp_path, calibration_case, monkeypatch, capsys):
    """tools/report.py --calibrate, in process; the gallery's model is the stand-in embedder."""
    import recognizer.evaluation.report as report_mod

    root, man = calibration_case
    monkeypatch.setattr(report_mod, "load_gallery_model", lambda *a, **k: TableEmbedder(_query_vectors()))
    spec = importlib.util.spec_from_file_location("report_tool", ROOT / "tools" / "report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "rep"
    rc = tool.main(
        ["--gallery", str(root), "--manifest", str(man), "--out", str(out), "--calibrate", "--no-progress",
         "--workers", "0"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    _check_calibrated(root, json.loads((out / "metrics.json").read_text()))
