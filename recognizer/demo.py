"""The main job on the embedded default: catalog -> gallery -> matches -> accuracy.

Generates the synthetic catalog (or reads a manifest given by flag), enrolls the
catalog images (``role=gallery``) into a FAISS gallery with an off-the-shelf backbone,
matches the wild photos (``role=query``) against the whole gallery and within 10
candidates, and reports item-level top-1/top-5. A randomly initialised copy of the same
architecture is measured in the same run as the baseline that shows what the
pretrained weights are worth.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .data.candidates import candidate_sets
from .data.manifest import Manifest, ManifestError, format_skipped, load_manifest
from .enroll import enroll_manifest
from .evaluation.metrics import top1_accuracy, topk_accuracy
from .fileio import write_json_atomic
from .gallery import Gallery, Match
from .matching.batch import match_manifest
from .models.model import build_model, load_model


def evaluate_matches(
    truths: list[str], full: list[Match], constrained: list[Match], k_label: str
) -> dict[str, float]:
    """Item-level top-1/top-5 over the whole gallery, and top-1 within each query's candidate set."""
    return {
        "top1": top1_accuracy(truths, [m.item_id for m in full]),
        "top5": topk_accuracy(truths, [[i for i, _ in m.topk[:5]] for m in full]),
        k_label: top1_accuracy(truths, [m.item_id for m in constrained]),
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
        from .data.synthetic import generate_catalog

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
    k_cands = min(10, len({r.item_id for r in gallery_rows}))
    k_label = f"top1_within_{k_cands}"
    random_sets = candidate_sets(
        [r.item_id for r in query_rows], [r.item_id for r in gallery_rows], k_cands, seed
    )
    # each query's candidate set: its own column, else a seeded random set holding the truth
    cands_of = {r.line: r.candidates or c for r, c in zip(query_rows, random_sets, strict=True)}
    plain_rows = [dataclasses.replace(r, candidates=None) for r in query_rows]
    torch.manual_seed(seed)  # the random-init baseline is reproducible
    for n, (label, make) in enumerate(models.items()):
        net = make()
        if input_size:
            net.preprocess = net.preprocess.with_size(input_size)
        kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
        gdir = out / f"gallery_{n}"
        if gdir.exists():
            shutil.rmtree(gdir)
        spec = "" if n else (f"{model}@{input_size}" if input_size and not Path(model).is_dir() else model)
        gallery = Gallery.create(gdir, net.describe(), model_spec=spec)
        enrolled = enroll_manifest(gallery, net, m, gallery_rows, **kw)
        full = match_manifest(gallery, net, m, rows=plain_rows, **kw)
        t0 = time.perf_counter()
        constrained = gallery.search(full.embeddings, k=5, candidates=[cands_of[r.line] for r in full.rows])
        t_cons = time.perf_counter() - t0
        for line in format_skipped(enrolled.failures + full.failures):
            print(line)
        metrics = evaluate_matches([r.item_id for r in full.rows], full.matches, constrained, k_label)
        n_q = len(full.rows)
        metrics.update(
            items=len(gallery.item_ids),
            queries=n_q,
            chance_top1=1.0 / max(1, len(gallery.item_ids)),
            images_per_second=n_q / full.seconds_embed if full.seconds_embed else float("nan"),
            search_ms_per_query=1000 * full.seconds_match / max(1, n_q),
            constrained_ms_per_query=1000 * t_cons / max(1, n_q),
            input_size=net.preprocess.input_size,
            fingerprint=net.fingerprint,
            skipped_images=len(enrolled.failures) + len(full.failures),
            gallery=str(gdir),
        )
        results["models"][label] = metrics
    results["generate_seconds"] = gen_seconds
    results["total_seconds"] = time.perf_counter() - t_start
    write_json_atomic(out / "demo_results.json", results)
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
