"""Suite ``gallery``: a gallery of ``n_items x per_item`` synthetic clustered vectors (default
10,000 x 100 = 1M x 256).

Add throughput, open time, the vector files on disk, exact full search at 1 and 64 queries
(against FAISS's own brute force on the same matrix), 10-candidate constrained search against the
full scan, and IVF speed and recall against exact search.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common import clustered_vectors, median_time, peak_rss_mb

QUICK = {"n_items": 1000, "per_item": 20}


def run(
    n_items: int = 10_000, per_item: int = 100, dim: int = 256, seed: int = 0, workdir: str | None = None
) -> dict[str, Any]:
    """The gallery suite (see the module docstring)."""
    import faiss

    from recognizer.gallery import Gallery
    from recognizer.gallery.ann import perturbed_queries, recall_at_k

    res: dict[str, Any] = {
        "n_items": n_items,
        "per_item": per_item,
        "dim": dim,
        "vectors": n_items * per_item,
    }
    vecs = clustered_vectors(n_items, per_item, dim, seed)
    items = [f"item{i:05d}" for i in range(n_items) for _ in range(per_item)]
    hashes = [str(i) for i in range(len(vecs))]
    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="bench_gallery_"))
    try:
        desc = {
            "fingerprint": "bench",
            "embedding_dim": dim,
            "preprocess": {"input_size": 224},
            "config": {"backbone": "bench"},
        }
        g = Gallery.create(tmp / "g", desc, ann_threshold=10**12)
        t0 = time.perf_counter()
        g.add(items, vecs, hashes=hashes)
        res["add_seconds"] = time.perf_counter() - t0
        res["add_vectors_per_second"] = len(vecs) / res["add_seconds"]
        t0 = time.perf_counter()
        new = clustered_vectors(1, 10, dim, seed + 1)
        g.add(["new-item"] * 10, new, hashes=[f"new{i}" for i in range(10)])
        res["enroll_one_item_seconds"] = time.perf_counter() - t0  # 10 photos into the full gallery
        t0 = time.perf_counter()
        g = Gallery.open(tmp / "g", ann_threshold=10**12)
        res["open_seconds"] = time.perf_counter() - t0
        res["vector_files_mb"] = sum(p.stat().st_size for p in g.segment_files()) / 2**20
        res["segments"] = g.storage()["segments"]
        table, _ = g.vector_table()  # the gallery's own matrix, for FAISS's brute force on the same vectors

        rng = np.random.default_rng(seed + 2)
        q64 = perturbed_queries(vecs, 64, rng)
        q1 = q64[:1]
        reps = 5 if len(vecs) >= 200_000 else 20
        # exact full search, item level (the gallery) vs. FAISS brute-force kNN on the same matrix
        res["exact_ms_per_query_1"] = 1000 * median_time(lambda: g.search(q1, k=10), reps)
        res["exact_ms_per_query_64"] = 1000 * median_time(lambda: g.search(q64, k=10), max(2, reps // 2)) / 64
        old = faiss.cvar.distance_compute_blas_threshold
        res["faiss_knn_ms_per_query_1"] = 1000 * median_time(
            lambda: faiss.knn(q1, table, 100, metric=faiss.METRIC_INNER_PRODUCT), reps
        )
        faiss.cvar.distance_compute_blas_threshold = 4
        try:
            res["faiss_knn_ms_per_query_64"] = (
                1000
                * median_time(
                    lambda: faiss.knn(q64, table, 100, metric=faiss.METRIC_INNER_PRODUCT), max(2, reps // 2)
                )
                / 64
            )
        finally:
            faiss.cvar.distance_compute_blas_threshold = old
        # constrained to 10 candidates (the truth among them), one query at a time
        cands = [g.item_ids[int(i)] for i in rng.choice(n_items, 10, replace=False)]
        cons_reps = 2000
        t0 = time.perf_counter()
        for i in range(cons_reps):
            g.search(q64[i % 64 : i % 64 + 1], k=5, candidates=cands)
        res["constrained10_ms_per_query"] = 1000 * (time.perf_counter() - t0) / cons_reps
        t0 = time.perf_counter()
        for _ in range(20):
            g.search(q64, k=5, candidates=cands)
        res["constrained10_ms_per_query_batch64"] = 1000 * (time.perf_counter() - t0) / (20 * 64)
        res["constrained_speedup_vs_full_scan"] = (
            res["exact_ms_per_query_1"] / res["constrained10_ms_per_query"]
        )
        exact_items = [m.item_id for m in g.search(q64, k=10)]

        # IVF above the threshold (the same gallery opened with a threshold of 1): build, tuned nprobe,
        # recall and speed
        g = Gallery.open(tmp / "g", ann_threshold=1)
        t0 = time.perf_counter()
        _, index, nprobe, recall = g.ann_index()
        res["ivf_build_seconds"] = time.perf_counter() - t0
        res["ivf_nlist"] = int(index.nlist)
        res["ivf_nprobe"] = nprobe
        res["ivf_recall_at_10_tuning"] = recall
        q_eval = perturbed_queries(vecs, 300, np.random.default_rng(seed + 3))
        _, exact_ids = faiss.knn(q_eval, table, 10, metric=faiss.METRIC_INNER_PRODUCT)
        _, ivf_ids = index.search(q_eval, 10)
        res["ivf_recall_at_10_fresh_queries"] = recall_at_k(ivf_ids, exact_ids)
        res["ivf_ms_per_query_1"] = 1000 * median_time(lambda: g.search(q1, k=10), reps * 4)
        res["ivf_ms_per_query_64"] = 1000 * median_time(lambda: g.search(q64, k=10), reps) / 64
        ivf_items = [m.item_id for m in g.search(q64, k=10)]
        res["ivf_top1_item_agreement_with_exact"] = float(
            np.mean([a == b for a, b in zip(ivf_items, exact_items, strict=True)])
        )
        res["ivf_speedup_vs_exact_1"] = res["exact_ms_per_query_1"] / res["ivf_ms_per_query_1"]
        res["peak_rss_mb"] = peak_rss_mb()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res
