"""Metric code on small hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from recognizer.data.candidates import random_candidate_sets
from recognizer.evaluation import metrics as M

# 4 queries x 3 items; truths 0, 1, 2, 0
SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # truth 0 at rank 0
        [0.8, 0.7, 0.1],  # truth 1 at rank 1
        [0.5, 0.6, 0.3],  # truth 2 at rank 2
        [0.4, 0.4, 0.1],  # truth 0 tied with item 1: ties count for the truth
    ],
    np.float32,
)
TRUTH = np.array([0, 1, 2, 0])


def test_ranks_and_cmc():
    assert M.truth_ranks(SCORES, TRUTH).tolist() == [0, 1, 2, 0]
    assert M.cmc_curve(SCORES, TRUTH, 3).tolist() == [0.5, 0.75, 1.0]


def test_candidate_hits():
    sets = [np.array([0, 1]), np.array([1, 2]), np.array([2, 0]), np.array([1, 0])]
    # q1: within {1,2} item 1 wins (0.7 > 0.1); q2: within {2,0} item 0 (0.5) beats truth 2 (0.3)
    # q3: argmax over [item1 0.4, item0 0.4] picks the first listed: item 1 -> miss
    assert M.candidate_hits(SCORES, TRUTH, sets).tolist() == [True, True, False, False]


def test_random_candidate_sets_hold_truth_and_are_distinct():
    rng = np.random.default_rng(0)
    sets = random_candidate_sets(np.array([0, 4, 9]), 10, 5, rng)
    for t, s in zip([0, 4, 9], sets, strict=True):
        assert t in s and len(set(s.tolist())) == 5 and s.max() < 10


def test_map_at_r_by_hand():
    # gallery vectors: labels [0, 0, 1]; one query of item 0 whose ranking is v2(item1), v0, v1
    sims = np.array([[0.5, 0.4, 0.9]])
    labels = np.array([0, 0, 1])
    # R = 2: top-2 = [v2 (wrong), v0 (right)] -> precision at the hit = 1/2 -> AP@R = (1/2)/2 = 0.25
    assert M.average_precision_at_r(sims, labels, np.array([0]))[0] == pytest.approx(0.25)
    assert M.recall_at_k(sims, labels, np.array([0]), (1, 2)) == {1: 0.0, 2: 1.0}


def test_fnmr_at_fmr_by_hand():
    impostor = np.array([0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0, 0.0])
    genuine = np.array([0.95, 0.8, 0.6, 0.45])
    # FMR 10%: one impostor (0.9) may pass; threshold just above 0.5 -> genuine 0.45 fails -> FNMR 0.25
    fnmr, thr = M.fnmr_at_fmr(genuine, impostor, 0.10)
    assert 0.5 < thr < 0.51 and fnmr == 0.25
    # FMR 0: threshold just above 0.9 -> only 0.95 passes
    fnmr, thr = M.fnmr_at_fmr(genuine, impostor, 0.0)
    assert fnmr == 0.75


def test_open_set_curves_and_recommendation():
    top = np.array([0.9, 0.8, 0.3, 0.7, 0.2])
    correct = np.array([True, True, False, False, False])
    known = np.array([True, True, True, False, False])  # last two are unknown items
    c = M.open_set_curves(top, correct, known, np.array([0.0, 0.75, 0.95]))
    assert c["precision"].tolist() == pytest.approx([2 / 5, 1.0, 1.0])
    assert c["recall"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert c["unknown_accept"].tolist() == [1.0, 0.0, 0.0]
    thr, f1 = M.recommend_threshold(c)
    assert thr == 0.75 and f1 == pytest.approx(0.8)


def test_bootstrap_and_paired_tests():
    hits = np.array([1] * 80 + [0] * 20)
    lo, hi = M.bootstrap_ci(hits, seed=1)
    assert lo < 0.8 < hi and 0.7 < lo and hi < 0.9
    a = np.array([1] * 50 + [0] * 50, bool)
    b = np.array([1] * 50 + [1] * 10 + [0] * 40, bool)  # B right on 10 more, never worse
    n01, n10, p = M.mcnemar_exact(a, b)
    assert (n01, n10) == (0, 10) and p == pytest.approx(2 / 2**10)
    assert M.mcnemar_exact(a, a)[2] == 1.0
    diff, lo, hi = M.paired_bootstrap_diff(a, b, seed=0)
    assert diff == pytest.approx(0.1) and 0 < lo < 0.1 < hi


def test_per_item_and_confusions():
    truth = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "a", "a", "c"]
    hits = np.array([t == p for t, p in zip(truth, pred, strict=True)])
    assert M.per_item_accuracy(truth, hits) == [("b", 0.0, 2), ("a", 0.5, 2), ("c", 1.0, 1)]
    assert M.confused_pairs(truth, pred) == [("b", "a", 2), ("a", "b", 1)]


def test_top1_accuracy():
    assert M.top1_accuracy(["a", "b", "c", "a"], ["a", "c", "c", "b"]) == 0.5
    assert M.top1_accuracy(np.array([0, 1]), np.array([0, 1])) == 1.0
    assert np.isnan(M.top1_accuracy([], []))
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        M.top1_accuracy(["a", "b"], ["a"])
