"""The main job on the embedded default: catalog -> embeddings -> nearest-neighbour accuracy.

Generates the synthetic catalog (or reads a manifest given by flag), embeds the catalog
images as the gallery and the wild photos as queries with an off-the-shelf backbone,
and reports item-level top-1/top-5 and top-1 within 10 candidates. A randomly
initialised copy of the same architecture is measured in the same run as the baseline
that shows what the pretrained weights are worth.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import candidate_sets
from .embed import describe_failures, embed_manifest
from .manifest import Manifest, ManifestError, load_manifest
from .metrics import constrained_top1, item_scores, topk_hits
from .model import build_model, load_model


def evaluate_embeddings(
    gal_emb: np.ndarray,
    gal_items: list[str],
    q_emb: np.ndarray,
    q_items: list[str],
    q_candidates: list[tuple[str, ...] | None],
    *,
    k_candidates: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Item-level top-1, top-5 and top-1 within candidate sets (the row's own, else seeded random K)."""
    items, scores = item_scores(q_emb, gal_emb, gal_items)
    k = min(k_candidates, len(items))
    random_sets = candidate_sets(q_items, items, k, seed)
    cands = [c if c is not None else r for c, r in zip(q_candidates, random_sets, strict=True)]
    return {
        "items": len(items),
        "queries": len(q_items),
        "top1": float(topk_hits(scores, items, q_items, 1).mean()),
        "top5": float(topk_hits(scores, items, q_items, 5).mean()),
        f"top1_within_{k}": float(constrained_top1(scores, items, q_items, cands).mean()),
        "chance_top1": 1.0 / len(items),
    }


def _split_roles(m: Manifest, unseen_only: bool) -> tuple[list, list]:
    gallery, queries = m.select(role="gallery"), m.select(role="query")
    if not gallery or not queries:
        raise ManifestError(
            f"{m.source}: needs rows with role=gallery and role=query (has {len(gallery)} and {len(queries)})"
        )
    if unseen_only and any(r.split == "test" for r in gallery):
        gallery = [r for r in gallery if r.split == "test"]
        queries = [r for r in queries if r.split == "test"]
    return gallery, queries


def run_demo(
    out_dir: str | os.PathLike,
    *,
    manifest: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    model: str = "lite0",
    n_items: int = 60,
    n_wild: int = 5,
    seed: int = 0,
    input_size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    unseen_only: bool = True,
    baseline: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and write ``out_dir/demo_results.json``; returns the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if manifest is None:
        from .synthetic import generate_catalog

        t0 = time.perf_counter()
        manifest = generate_catalog(out / "synthetic_catalog", n_items, n_wild, seed=seed)
        gen_seconds = time.perf_counter() - t0
        source = f"synthetic catalog ({n_items} items x (1 catalog + {n_wild} wild photos), seed {seed})"
    else:
        gen_seconds = 0.0
        source = str(manifest)
    m = load_manifest(manifest, data_root)
    if m.errors:
        print(m.error_report())
    gallery_rows, query_rows = _split_roles(m, unseen_only)

    models = {f"{model} (pretrained)": lambda: load_model(model)}
    if baseline and not Path(model).is_dir():
        cfg = {"backbone": model}
        models[f"{model} (random init, baseline)"] = lambda: build_model(cfg, pretrained=False)
    results: dict[str, Any] = {"data": source, "data_root": str(m.data_root), "models": {}}
    torch.manual_seed(seed)  # the random-init baseline is reproducible
    for label, make in models.items():
        net = make()
        if input_size:
            net.preprocess = net.preprocess.with_size(input_size)
        kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
        g_res, g_rows = embed_manifest(net, m, gallery_rows, desc=f"{label}: gallery", **kw)
        q_res, q_rows = embed_manifest(net, m, query_rows, desc=f"{label}: queries", **kw)
        for res, rows in ((g_res, g_rows), (q_res, q_rows)):
            if res.failures:
                print(describe_failures(res.failures, rows))
        g_ok = [g_rows[i] for i in g_res.indices]
        q_ok = [q_rows[i] for i in q_res.indices]
        metrics = evaluate_embeddings(
            g_res.embeddings,
            [r.item_id for r in g_ok],
            q_res.embeddings,
            [r.item_id for r in q_ok],
            [r.candidates for r in q_ok],
            seed=seed,
        )
        n_img = len(g_res.indices) + len(q_res.indices)
        metrics["images_per_second"] = n_img / (g_res.seconds + q_res.seconds)
        metrics["input_size"] = net.preprocess.input_size
        metrics["fingerprint"] = net.fingerprint
        metrics["skipped_images"] = len(g_res.failures) + len(q_res.failures)
        results["models"][label] = metrics
    results["generate_seconds"] = gen_seconds
    results["total_seconds"] = time.perf_counter() - t_start
    (out / "demo_results.json").write_text(json.dumps(results, indent=2))
    return results


def format_results(results: dict[str, Any]) -> str:
    """A Markdown table of the demo's results."""
    models = results["models"]
    first = next(iter(models.values()))
    kcol = next(k for k in first if k.startswith("top1_within_"))
    lines = [
        f"Data: {results['data']}",
        f"Gallery items: {first['items']}, queries: {first['queries']}, chance top-1: {first['chance_top1']:.3f}",
        "",
        f"| model | top-1 | top-5 | {kcol.replace('_', ' ')} | img/s | input |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in models.items():
        lines.append(
            f"| {label} | {r['top1']:.3f} | {r['top5']:.3f} | {r[kcol]:.3f} | {r['images_per_second']:.1f} | {r['input_size']} |"
        )
    lines.append(f"\nTotal {results['total_seconds']:.1f} s")
    return "\n".join(lines)
