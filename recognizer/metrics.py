"""Item-level scoring and accuracy, numpy in, numpy out.

A gallery holds several vectors per item; an item's score for a query is the best cosine
similarity over its vectors (max aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def item_scores(
    queries: np.ndarray, gallery: np.ndarray, gallery_items: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Cosine scores per item: returns ``(items, Q x I matrix)``, each item's max over its vectors.

    Inputs must be L2-normalised float32 (``Q x D`` and ``G x D``).
    """
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    items = sorted(set(gallery_items))
    col = {it: j for j, it in enumerate(items)}
    sims = queries @ gallery.T  # Q x G
    out = np.full((queries.shape[0], len(items)), -np.inf, dtype=np.float32)
    cols = np.array([col[it] for it in gallery_items])
    for j in range(len(items)):
        out[:, j] = sims[:, cols == j].max(axis=1)
    return items, out


def topk_hits(scores: np.ndarray, items: Sequence[str], truths: Sequence[str], k: int) -> np.ndarray:
    """Boolean per query: is the true item among the ``k`` highest-scoring items?"""
    col = {it: j for j, it in enumerate(items)}
    truth_idx = np.array([col.get(t, -1) for t in truths])
    k = min(k, scores.shape[1])
    top = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < scores.shape[1]
        else np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    )
    return (top == truth_idx[:, None]).any(axis=1) & (truth_idx >= 0)


def constrained_top1(
    scores: np.ndarray, items: Sequence[str], truths: Sequence[str], candidates: Sequence[Sequence[str]]
) -> np.ndarray:
    """Boolean per query: is the truth the best-scoring item within that query's candidate set?"""
    col = {it: j for j, it in enumerate(items)}
    hits = np.zeros(len(truths), dtype=bool)
    for q, (t, cands) in enumerate(zip(truths, candidates, strict=True)):
        idx = [col[c] for c in cands if c in col]
        if idx:
            best = idx[int(np.argmax(scores[q, idx]))]
            hits[q] = items[best] == t
    return hits
