"""Evaluation metrics, numpy in and numpy out, each small enough to check by hand.

Conventions: ``scores`` is a ``Q x I`` item-score matrix (higher is better) and
``truth`` a length-``Q`` array of the true item's column. Ranks count the items scoring
strictly higher than the truth, so ties are resolved in the truth's favour.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def truth_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """0-based rank of the true item per query (0 = top-1)."""
    t = scores[np.arange(len(truth)), truth]
    return (scores > t[:, None]).sum(axis=1)


def cmc_curve(scores: np.ndarray, truth: np.ndarray, max_k: int) -> np.ndarray:
    """Cumulative match characteristic: entry ``k-1`` is the share of queries with the truth in the top k."""
    ranks = truth_ranks(scores, truth)
    return np.array([(ranks < k).mean() for k in range(1, max_k + 1)])


def candidate_hits(scores: np.ndarray, truth: np.ndarray, candidates: Sequence[np.ndarray]) -> np.ndarray:
    """Per query: is the truth the best-scoring item within its candidate columns?"""
    hits = np.zeros(len(truth), dtype=bool)
    for q, cols in enumerate(candidates):
        cols = np.asarray(cols)
        hits[q] = cols[int(np.argmax(scores[q, cols]))] == truth[q]
    return hits


def top1_accuracy(truth: Sequence, predicted: Sequence) -> float:
    """Share of queries whose predicted item is the true one (NaN for no queries).

    ``truth`` and ``predicted`` are aligned labels (item ids or columns), one per query. A
    prediction is one label, so a tie is decided by whoever made it (an ``argmax`` takes the
    first); :func:`truth_ranks` on scores counts a tie for the truth instead.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    if not len(truth):
        return float("nan")
    return float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)]))


def topk_accuracy(truth: Sequence, topk: Sequence[Sequence]) -> float:
    """Share of queries whose true item is among their ranked predictions (NaN for no queries)."""
    if len(truth) != len(topk):
        raise ValueError(f"{len(truth)} true labels but {len(topk)} prediction lists")
    return float(np.mean([t in list(k) for t, k in zip(truth, topk, strict=True)])) if len(truth) else float("nan")

def average_precision_at_r(sims: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """mAP@R per query (Musgrave et al., 2020): R = the number of gallery vectors of the true item.

    ``sims`` is ``Q x N`` over gallery vectors, ``labels`` the item column of each vector.
    """
    out = np.zeros(len(truth))
    for q in range(len(truth)):
        rel = labels == truth[q]
        r = int(rel.sum())
        if r == 0:
            continue
        top = np.argsort(-sims[q], kind="stable")[:r]
        hit = rel[top]
        prec = np.cumsum(hit) / np.arange(1, r + 1)
        out[q] = float((prec * hit).sum() / r)
    return out


def recall_at_k(
    sims: np.ndarray, labels: np.ndarray, truth: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """Vector-level Recall@K: share of queries with a vector of the true item among the K nearest."""
    order = np.argsort(-sims, axis=1, kind="stable")[:, : max(ks)]
    hit = labels[order] == truth[:, None]
    return {k: float(hit[:, :k].any(axis=1).mean()) for k in ks}


def fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> tuple[float, float]:
    """(FNMR, threshold) at the lowest threshold whose false-match rate is at most ``fmr``.

    A match is declared when score >= threshold. ``genuine`` are the true item's scores,
    ``impostor`` the best wrong item's scores.
    """
    imp = np.sort(np.asarray(impostor))[::-1]
    if len(imp) == 0:
        return float("nan"), float("nan")
    allowed = int(math.floor(fmr * len(imp)))  # impostors that may score >= threshold
    thr = float(np.nextafter(imp[allowed], np.inf)) if allowed < len(imp) else float(imp[-1])
    return float((np.asarray(genuine) < thr).mean()), thr


def open_set_curves(
    top_scores: np.ndarray, correct: np.ndarray, known: np.ndarray, thresholds: np.ndarray
) -> dict[str, np.ndarray]:
    """Precision, recall and unknown-acceptance against the threshold.

    A query is accepted when its top score >= threshold. Precision = correct accepted /
    accepted; recall = correct accepted / known queries; ``unknown_accept`` = share of
    queries of unenrolled items that were (wrongly) accepted.
    """
    acc = top_scores[None, :] >= thresholds[:, None]
    good = acc & (correct & known)[None, :]
    n_acc = acc.sum(axis=1)
    precision = np.where(n_acc > 0, good.sum(axis=1) / np.maximum(n_acc, 1), 1.0)
    recall = good.sum(axis=1) / max(1, int(known.sum()))
    unk = ~known
    unknown_accept = acc[:, unk].mean(axis=1) if unk.any() else np.full(len(thresholds), np.nan)
    return {
        "threshold": thresholds,
        "precision": precision,
        "recall": recall,
        "unknown_accept": unknown_accept,
    }


def recommend_threshold(curves: dict[str, np.ndarray]) -> tuple[float, float]:
    """The threshold with the best F1 of precision and recall; returns (threshold, F1)."""
    p, r = curves["precision"], curves["recall"]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    i = int(np.argmax(f1))
    return float(curves["threshold"][i]), float(f1[i])


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over the same queries, with its paired percentile bootstrap interval."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)
    return float(d.mean()), lo, hi


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired outcomes: (only A right, only B right, two-sided p-value)."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    n01 = int((a & ~b).sum())
    n10 = int((~a & b).sum())
    n = n01 + n10
    if n == 0:
        return n01, n10, 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return n01, n10, float(min(1.0, 2 * tail))


def per_item_accuracy(truth_items: Sequence[str], hits: np.ndarray) -> list[tuple[str, float, int]]:
    """``(item, accuracy, queries)`` sorted worst first."""
    tot: Counter[str] = Counter(truth_items)
    ok: Counter[str] = Counter(t for t, h in zip(truth_items, hits, strict=True) if h)
    rows = [(it, ok[it] / n, n) for it, n in tot.items()]
    return sorted(rows, key=lambda r: (r[1], -r[2], r[0]))


def confused_pairs(
    truth_items: Sequence[str], pred_items: Sequence[str], top: int = 20
) -> list[tuple[str, str, int]]:
    """The most frequent ``(true item, predicted item, count)`` mistakes."""
    c = Counter((t, p) for t, p in zip(truth_items, pred_items, strict=True) if t != p)
    return [(t, p, n) for (t, p), n in c.most_common(top)]
