"""Approximate search for large galleries: an IVF index tuned to a measured recall.

Numpy in, FAISS index out. ``nprobe`` is not guessed: it is doubled until recall@10
against exact search, on queries made by perturbing gallery vectors the way a new photo
of an enrolled item differs from its enrollment photos, reaches the target.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def perturbed_queries(vecs: np.ndarray, n: int, rng: np.random.Generator, cosine: float = 0.9) -> np.ndarray:
    """``n`` unit queries, each at about ``cosine`` similarity from a random gallery vector."""
    d = vecs.shape[1]
    sigma = math.sqrt((1.0 / cosine**2 - 1.0) / d)
    src = vecs[rng.choice(len(vecs), size=min(n, len(vecs)), replace=False)]
    q = src + rng.normal(0.0, sigma, src.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k list found in the approximate one."""
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))


def build_ivf(
    vecs: np.ndarray, *, seed: int = 0, target_recall: float = 0.995, k: int = 10, n_eval: int = 500
) -> tuple[Any, dict[str, float]]:
    """IVF-Flat (inner product) over ``vecs`` with ids = row positions, and its tuning record.

    The target sits above the promised 0.99 because tuning on a few hundred queries is
    itself a noisy estimate; the benchmark re-measures recall on fresh queries.
    """
    import faiss

    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n, d = vecs.shape
    nlist = int(min(65536, max(8, round(2 * math.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = vecs[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(sample)
    index.add(vecs)
    index.quantizer_trains_alone = 0
    q = perturbed_queries(vecs, n_eval, rng)
    kk = min(k, n)
    _, exact = faiss.knn(q, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, approx = index.search(q, kk)
        recall = recall_at_k(approx, exact)
        if recall >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nlist, nprobe * 2)
    return index, {"nlist": nlist, "nprobe": nprobe, "recall_at_10": recall, "n_eval": len(q)}
