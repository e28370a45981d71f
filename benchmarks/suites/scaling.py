"""Suite ``scaling``: exact and constrained search time and memory at 10k, 100k and 1M vectors, with
the growth exponent of each.

Each size is measured in a fresh process (:func:`probe`, run as
``python -c "from benchmarks.suites.scaling import probe ..."`` from the repository root), so its
memory figures are the gallery's alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..common import REPO_ROOT, clustered_vectors, median_time, peak_since_reset_mb, reset_peak_rss, rss_mb

QUICK = {"sizes": (1_000, 4_000, 16_000), "per_item": 20, "dim": 64}
_PROBE = (
    "import json, sys; from benchmarks.suites.scaling import probe; print(json.dumps(probe(*sys.argv[1:])))"
)


def run(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), per_item: int = 100, dim: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Exact gallery search time and memory at several gallery sizes, with the growth exponent.

    For each size: milliseconds per query (one query; and batches of 64), constrained search to
    10 candidates, the gallery's resident memory (RSS growth when it is opened) and the extra
    peak memory while querying. The exponent is the slope of log(time) against log(size):
    1.0 is a linear scan; constrained search should stay flat (about 0).
    """
    from recognizer.gallery import Gallery
    from recognizer.gallery.ann import perturbed_queries

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    desc = {"fingerprint": "bench", "embedding_dim": dim, "preprocess": {"input_size": 224}, "config": {}}
    # the probe process imports ``benchmarks`` from the repository root, whatever the caller's cwd
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    )
    try:
        for n in sizes:
            n_items = max(1, n // per_item)
            vecs = clustered_vectors(n_items, per_item, dim, seed)
            g = Gallery.create(tmp / f"g{n}", desc, ann_threshold=10**12)
            g.add(
                [f"i{i}" for i in range(n_items) for _ in range(per_item)],
                vecs,
                hashes=[str(i) for i in range(len(vecs))],
            )
            np.save(tmp / "q.npy", perturbed_queries(vecs, 64, np.random.default_rng(seed + 1)))
            del vecs, g
            out = subprocess.run(
                [sys.executable, "-c", _PROBE, str(tmp / f"g{n}"), str(tmp / "q.npy")],
                capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=env,
            )  # fmt: skip
            rows.append({"vectors": n, **json.loads(out.stdout.strip().splitlines()[-1])})
            shutil.rmtree(tmp / f"g{n}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res: dict[str, Any] = {"per_item": per_item, "dim": dim, "table": rows}
    if len(rows) >= 2:
        ln = np.log([r["vectors"] for r in rows])
        for key in (
            "exact_ms_per_query_1",
            "exact_ms_per_query_64",
            "constrained10_ms_per_query",
            "gallery_rss_mb",
        ):
            res[f"exponent_{key}"] = float(np.polyfit(ln, np.log([max(r[key], 1e-9) for r in rows]), 1)[0])
    return res


def probe(root: str, queries: str) -> dict[str, float]:
    """Open one gallery and time its searches (run in a fresh process by :func:`run`)."""
    import faiss  # noqa: F401 -- libraries loaded before the baseline reading

    from recognizer.gallery import Gallery

    q = np.load(queries)
    rss0 = rss_mb()
    g = Gallery.open(root, ann_threshold=10**12)
    g.search(q[:1], k=10)  # everything loaded
    rss1 = rss_mb()
    reset_peak_rss()
    n = len(g)
    reps = 5 if n >= 500_000 else 20
    one = 1000 * median_time(lambda: g.search(q[:1], k=10), reps)
    many = 1000 * median_time(lambda: g.search(q, k=10), max(2, reps // 4)) / len(q)
    cands = g.item_ids[:10]
    t0 = time.perf_counter()
    for i in range(500):
        g.search(q[i % 64 : i % 64 + 1], k=5, candidates=cands)
    cons = 1000 * (time.perf_counter() - t0) / 500
    return {
        "exact_ms_per_query_1": one,
        "exact_ms_per_query_64": many,
        "constrained10_ms_per_query": cons,
        "gallery_rss_mb": rss1 - rss0,
        "bytes_per_vector": (rss1 - rss0) * 2**20 / n,
        "query_peak_extra_mb": max(0.0, peak_since_reset_mb() - rss1),
    }
