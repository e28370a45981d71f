"""Suite ``query_options``: accuracy and cost of the query options (zoom, crops, re-ranking).

Top-1 over the whole gallery and top-1 within each query's candidates, per query option, with
milliseconds per query; every option is measured against the baseline on the same queries in
the same run.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "aspect_crop": {"query": {"aspect": "crop"}},
    "zoom_0.6": {"query": {"aspect": "crop", "zoom": 0.6}},
    "multicrop_mean": {"query": {"multicrop": "grid", "pool": "mean"}},
    "multicrop_max": {"query": {"multicrop": "grid", "pool": "max"}},
    "rerank_sift": {"rerank": {"method": "sift"}},
    "rerank_orb": {"rerank": {"method": "orb"}},
    "zoom_0.6+rerank_sift": {"query": {"aspect": "crop", "zoom": 0.6}, "rerank": {"method": "sift"}},
}
QUICK = {"datasets": ("covers",), "n_covers": 12, "configs": ("baseline", "zoom_0.6", "rerank_orb")}


def run(
    datasets: tuple[str, ...] = ("covers", "grocery_packages"),
    n_covers: int = 40,
    query_stride: int = 3,
    model: str = "lite0",
    configs: tuple[str, ...] = tuple(CONFIGS),
    workdir: str | None = None,
    shared_data: str | Path = SHARED_DATA,
    manifests: str | Path = MANIFESTS,
) -> dict[str, Any]:
    """Top-1 (whole gallery) and top-1 within each query's candidates, per query option, with ms/query.

    ``covers``: synthetic flat printed covers at an angle in clutter (always available);
    any committed manifest name (``grocery_packages``, ``grocery_unseen``, ``coil_unseen``):
    ``manifests/<name>.csv`` over ``shared_data/<grocery|coil>``, skipped when absent.
    ``query_stride`` keeps every n-th query; ``baseline`` is always among ``configs``.
    """
    from recognizer.data.manifest import load_manifest
    from recognizer.data.synthetic import generate_covers
    from recognizer.enroll import backfill_local_features, enroll_manifest
    from recognizer.evaluation.metrics import top1_accuracy
    from recognizer.gallery import Gallery
    from recognizer.matching.batch import match_manifest
    from recognizer.matching.options import QueryOptions
    from recognizer.matching.rerank import RerankConfig
    from recognizer.models.model import load_model

    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown query option config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    configs = ("baseline", *[c for c in configs if c != "baseline"])  # the reference is always measured
    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="bench_query_"))
    res: dict[str, Any] = {"model": model}
    net = load_model(model)
    try:
        for name in datasets:
            if name == "covers":
                m = load_manifest(generate_covers(tmp / "covers", n_covers, 2))
            else:
                root = Path(shared_data) / name.split("_")[0]  # grocery_* or coil_*
                mpath = Path(manifests) / f"{name}.csv"
                if not root.is_dir() or not mpath.is_file():
                    res[name] = {"skipped": f"no data at {root} or no manifest {mpath}"}
                    continue
                m = load_manifest(mpath, root)
            g = Gallery.create(tmp / f"g_{name}", net.describe(), model_spec=model)
            t0 = time.perf_counter()
            enroll_manifest(g, net, m, progress=False)
            res[f"{name}_enroll_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for method in ("sift", "orb"):
                backfill_local_features(g, method, progress=False)
            res[f"{name}_features_seconds"] = time.perf_counter() - t0
            queries = m.select(role="query")[::query_stride]
            plain = [dataclasses.replace(r, candidates=None) for r in queries]
            table = {}
            for cname in configs:
                c = CONFIGS[cname]
                kw: dict[str, Any] = {
                    "query_options": QueryOptions(**c.get("query", {})),
                    "rerank": RerankConfig(**c["rerank"]) if "rerank" in c else None,
                    "progress": False,
                }
                full = match_manifest(g, net, m, rows=plain, **kw)
                cons = match_manifest(g, net, m, rows=queries, **kw)
                n = max(1, len(full.rows))
                table[cname] = {
                    "top1": top1_accuracy(
                        [r.item_id for r in full.rows], [mm.item_id for mm in full.matches]
                    ),
                    "top1_within_10": top1_accuracy(
                        [r.item_id for r in cons.rows], [mm.item_id for mm in cons.matches]
                    ),
                    "embed_ms_per_query": 1000 * full.seconds_embed / n,
                    "match_ms_per_query": 1000 * full.seconds_match / n,
                    "rerank_ms_per_query_full": 1000 * full.seconds_rerank / n,
                    "rerank_ms_per_query_candidates": 1000 * cons.seconds_rerank / max(1, len(cons.rows)),
                }
            base = table["baseline"]
            for row in table.values():
                row["ms_added_per_query"] = (
                    row["embed_ms_per_query"] - base["embed_ms_per_query"] + row["rerank_ms_per_query_full"]
                )
            res[name] = {"items": len(g.item_ids), "queries": len(queries), "configs": table}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res
