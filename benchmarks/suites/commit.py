"""Suite ``commit``: the time to add one item (10 photos) to galleries of 10k, 100k and 1M vectors.

A gallery that rewrites all of its vectors on every commit grows linearly here; one that writes
only the new vectors (append-only segments) stays flat. Each size: a fresh gallery filled in one
commit, reopened as a tool would open it, then ``repeats`` single-item adds, each its own commit
(median reported, with min and max; a merge of small segments may land in one of them).

Uses only the public ``Gallery`` API, so the same file measures any version of the package.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

QUICK = {"sizes": (1_000, 10_000), "repeats": 5}


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def run(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    *,
    dim: int = 256,
    photos: int = 10,
    repeats: int = 9,
    seed: int = 0,
) -> dict[str, Any]:
    """Add-one-item commit time (ms) per gallery size; ``growth`` is the largest size's median over the smallest's."""
    from recognizer.gallery import Gallery

    desc = {"fingerprint": "bench", "embedding_dim": dim, "preprocess": {"input_size": 64},
            "config": {"backbone": "bench"}}  # fmt: skip
    rng = np.random.default_rng(seed)
    rows: dict[str, Any] = {}
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="bench_commit_"))
        try:
            g = Gallery.create(tmp / "g", desc)
            vecs = _unit(rng, n, dim)
            ids = [f"i{i // photos:07d}" for i in range(n)]
            t0 = time.perf_counter()
            g.add(ids, vecs, hashes=[f"h{i}" for i in range(n)])
            fill_s = time.perf_counter() - t0
            del g, vecs, ids
            t0 = time.perf_counter()
            g = Gallery.open(tmp / "g")
            open_s = time.perf_counter() - t0
            times = []
            for r in range(repeats):
                new = _unit(rng, photos, dim)
                t0 = time.perf_counter()
                g.add([f"new{r:03d}"] * photos, new, hashes=[f"n{r}-{i}" for i in range(photos)])
                times.append(time.perf_counter() - t0)
            assert len(g) == n + repeats * photos
            rows[str(n)] = {
                "vectors": n,
                "add_one_item_ms": round(1e3 * statistics.median(times), 2),
                "min_ms": round(1e3 * min(times), 2),
                "max_ms": round(1e3 * max(times), 2),
                "fill_s": round(fill_s, 2),
                "open_s": round(open_s, 3),
            }
            del g
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    first, last = rows[str(sizes[0])], rows[str(sizes[-1])]
    return {
        "dim": dim,
        "photos_per_item": photos,
        "repeats": repeats,
        "sizes": rows,
        "growth": round(last["add_one_item_ms"] / max(first["add_one_item_ms"], 1e-9), 2),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(**(QUICK if "--quick" in sys.argv else {})), indent=1))
