"""Benchmarks: every figure is measured next to its baseline in the same run.

Timings on a shared 2-core machine are noisy, so results are reported as medians of
repeats and as ratios against a baseline measured side by side. Suites write into one
JSON document; :func:`markdown_table` renders it.

Suites:

* ``training``: one training step at 10,000 classes on synthetic data, cached-feature head
  vs. full fine-tuning, with the ArcFace weight memory and peak RSS.
* ``gallery``: a gallery of ``n_items x per_item`` synthetic clustered vectors (default
  10,000 x 100 = 1M x 256): add throughput, open time, exact full search at 1 and 64
  queries (against FAISS's own brute force), 10-candidate constrained search against the
  full scan, and IVF speed and recall against exact search.
* ``embedding``: the tools' file-to-embedding path (decoding in workers) against a bare timm
  forward on in-memory tensors, and enrollment images/s.
* ``scaling``: exact and constrained search time and memory at 10k, 100k and 1M vectors, with
  the growth exponent of each.
* ``unseen``: top-1 on held-out grocery items (iconic-only and iconic + 8 photos enrollment)
  for the off-the-shelf backbone and any trained models, paired against the first.
* ``query_options``: accuracy and cost of the query options (zoom, crops, re-ranking).
* ``deploy``: backbone x backend (torch, ONNX fp32, ONNX int8) x input size: images/s, latency,
  MB and grocery-unseen top-1 (see ``deploy_bench``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    return _interleaved_medians({"fn": fn}, repeats, warmup)["fn"]


def _interleaved_medians(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each function, run in turns (a, b, a, b, ...) after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def clustered_vectors(n_items: int, per_item: int, dim: int, seed: int, cosine: float = 0.8) -> np.ndarray:
    """``n_items*per_item x dim`` unit vectors, ``per_item`` around each item centre (like photos of one item)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_items, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigma = np.sqrt((1.0 / cosine**2 - 1.0) / dim)
    out = np.repeat(centres, per_item, axis=0)
    for i in range(0, len(out), 100_000):  # in place, in chunks, to bound memory
        blk = out[i : i + 100_000]
        blk += rng.standard_normal(blk.shape, dtype=np.float32) * np.float32(sigma)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
    return out


def bench_gallery(
    n_items: int = 10_000, per_item: int = 100, dim: int = 256, seed: int = 0, workdir: str | None = None
) -> dict[str, Any]:
    """The gallery suite (see the module docstring)."""
    import faiss

    from .gallery.ann import perturbed_queries, recall_at_k
    from .gallery.gallery import Gallery

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
        res["index_file_mb"] = (tmp / "g" / g.meta["index_file"]).stat().st_size / 2**20

        rng = np.random.default_rng(seed + 2)
        q64 = perturbed_queries(vecs, 64, rng)
        q1 = q64[:1]
        reps = 5 if len(vecs) >= 200_000 else 20
        # exact full search, item level (the gallery) vs. FAISS brute-force kNN on the same matrix
        res["exact_ms_per_query_1"] = 1000 * _median_time(lambda: g.search(q1, k=10), reps)
        res["exact_ms_per_query_64"] = (
            1000 * _median_time(lambda: g.search(q64, k=10), max(2, reps // 2)) / 64
        )
        old = faiss.cvar.distance_compute_blas_threshold
        res["faiss_knn_ms_per_query_1"] = 1000 * _median_time(
            lambda: faiss.knn(q1, g._vecs, 100, metric=faiss.METRIC_INNER_PRODUCT), reps
        )
        faiss.cvar.distance_compute_blas_threshold = 4
        try:
            res["faiss_knn_ms_per_query_64"] = (
                1000
                * _median_time(
                    lambda: faiss.knn(q64, g._vecs, 100, metric=faiss.METRIC_INNER_PRODUCT), max(2, reps // 2)
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

        # IVF above the threshold: build, tuned nprobe, recall and speed
        g.ann_threshold = 1
        t0 = time.perf_counter()
        _, index, nprobe, recall = g.ann_index()
        res["ivf_build_seconds"] = time.perf_counter() - t0
        res["ivf_nlist"] = int(index.nlist)
        res["ivf_nprobe"] = nprobe
        res["ivf_recall_at_10_tuning"] = recall
        q_eval = perturbed_queries(vecs, 300, np.random.default_rng(seed + 3))
        _, exact_ids = faiss.knn(q_eval, g._vecs, 10, metric=faiss.METRIC_INNER_PRODUCT)
        _, ivf_ids = index.search(q_eval, 10)
        res["ivf_recall_at_10_fresh_queries"] = recall_at_k(ivf_ids, exact_ids)
        res["ivf_ms_per_query_1"] = 1000 * _median_time(lambda: g.search(q1, k=10), reps * 4)
        res["ivf_ms_per_query_64"] = 1000 * _median_time(lambda: g.search(q64, k=10), reps) / 64
        ivf_items = [m.item_id for m in g.search(q64, k=10)]
        res["ivf_top1_item_agreement_with_exact"] = float(
            np.mean([a == b for a, b in zip(ivf_items, exact_items, strict=True)])
        )
        res["ivf_speedup_vs_exact_1"] = res["exact_ms_per_query_1"] / res["ivf_ms_per_query_1"]
        res["peak_rss_mb"] = peak_rss_mb()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


QUERY_CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "aspect_crop": {"query": {"aspect": "crop"}},
    "zoom_0.6": {"query": {"aspect": "crop", "zoom": 0.6}},
    "multicrop_mean": {"query": {"multicrop": "grid", "pool": "mean"}},
    "multicrop_max": {"query": {"multicrop": "grid", "pool": "max"}},
    "rerank_sift": {"rerank": {"method": "sift"}},
    "rerank_orb": {"rerank": {"method": "orb"}},
    "zoom_0.6+rerank_sift": {"query": {"aspect": "crop", "zoom": 0.6}, "rerank": {"method": "sift"}},
}


def bench_query_options(
    datasets: tuple[str, ...] = ("covers", "grocery_packages"),
    n_covers: int = 40,
    query_stride: int = 3,
    model: str = "lite0",
    configs: tuple[str, ...] = tuple(QUERY_CONFIGS),
    workdir: str | None = None,
    shared_data: str = "../shared/data",
) -> dict[str, Any]:
    """Top-1 (whole gallery) and top-1 within each query's candidates, per query option, with ms/query.

    ``covers``: synthetic flat printed covers at an angle in clutter (always available);
    any committed manifest name (``grocery_packages``, ``grocery_unseen``, ``coil_unseen``):
    shared data, skipped when absent. ``query_stride`` keeps every n-th query.
    Every option is measured against the baseline on the same queries in the same run.
    """
    from .data.manifest import load_manifest
    from .data.synthetic import generate_covers
    from .enroll import enroll_manifest
    from .gallery.gallery import Gallery
    from .matching.batch import match_manifest
    from .matching.options import QueryOptions
    from .matching.rerank import RerankConfig
    from .models.model import load_model

    tmp = Path(tempfile.mkdtemp(dir=workdir, prefix="bench_query_"))
    res: dict[str, Any] = {"model": model}
    net = load_model(model)
    try:
        for name in datasets:
            if name == "covers":
                m = load_manifest(generate_covers(tmp / "covers", n_covers, 2))
            else:
                root = Path(shared_data) / name.split("_")[0]  # grocery_* or coil_*
                mpath = Path(__file__).resolve().parents[1] / "data_manifests" / f"{name}.csv"
                if not root.is_dir() or not mpath.is_file():
                    res[name] = {"skipped": f"no data at {root}"}
                    continue
                m = load_manifest(mpath, root)
            g = Gallery.create(tmp / f"g_{name}", net.describe(), model_spec=model)
            t0 = time.perf_counter()
            enroll_manifest(g, net, m, progress=False)
            res[f"{name}_enroll_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for method in ("sift", "orb"):
                from .enroll import backfill_local_features

                backfill_local_features(g, method, progress=False)
            res[f"{name}_features_seconds"] = time.perf_counter() - t0
            queries = m.select(role="query")[::query_stride]
            plain = [dataclasses.replace(r, candidates=None) for r in queries]
            table = {}
            for cname in configs:
                c = QUERY_CONFIGS[cname]
                kw: dict[str, Any] = {
                    "query_options": QueryOptions(**c.get("query", {})),
                    "rerank": RerankConfig(**c["rerank"]) if "rerank" in c else None,
                    "progress": False,
                }
                full = match_manifest(g, net, m, rows=plain, **kw)
                cons = match_manifest(g, net, m, rows=queries, **kw)
                n = max(1, len(full.rows))
                table[cname] = {
                    "top1": float(
                        np.mean(
                            [mm.item_id == r.item_id for r, mm in zip(full.rows, full.matches, strict=True)]
                        )
                    ),
                    "top1_within_10": float(
                        np.mean(
                            [mm.item_id == r.item_id for r, mm in zip(cons.rows, cons.matches, strict=True)]
                        )
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


def bench_training(
    n_classes: int = 10_000, batch: int = 32, input_size: int = 160, steps: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Training throughput at ``n_classes`` (synthetic data): cached-feature head vs. full fine-tuning.

    Both use ArcFace (pytorch-metric-learning) with its ``n_classes x dim`` weight matrix,
    whose memory is reported; peak RSS is the suite's own high-water mark (Linux: reset at its start,
    so earlier suites in the same process do not count), with the resident memory at its start.
    """
    import torch
    from pytorch_metric_learning import losses

    from .models.model import build_model

    rss_start = _rss_mb()
    _reset_peak_rss()
    torch.manual_seed(seed)
    res: dict[str, Any] = {"n_classes": n_classes, "batch": batch, "input_size": input_size}
    model = build_model(
        {"backbone": "lite0", "head": {"name": "residual", "args": {}}, "input_size": input_size}
    )
    dim = model.embedding_dim
    loss_fn = losses.ArcFaceLoss(num_classes=n_classes, embedding_size=dim)
    res["arcface_weight_mb"] = sum(p.numel() * p.element_size() for p in loss_fn.parameters()) / 2**20
    opt = torch.optim.AdamW(list(model.parameters()), lr=1e-4)
    loss_opt = torch.optim.SGD(loss_fn.parameters(), lr=1e-2)

    def step(inputs: torch.Tensor, labels: torch.Tensor, cached: bool) -> None:
        emb = model.embed_features(inputs) if cached else model(inputs)
        loss = loss_fn(emb, labels)
        opt.zero_grad()
        loss_opt.zero_grad()
        loss.backward()
        opt.step()
        loss_opt.step()

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    feats = torch.randn(batch * 8, dim, generator=g).abs()
    model.train()
    model.backbone.eval()
    t = _median_time(lambda: step(feats, labels.repeat(8), True), steps * 4)
    res["cached_head_samples_per_second"] = batch * 8 / t
    images = torch.randn(batch, 3, input_size, input_size, generator=g).contiguous(
        memory_format=torch.channels_last
    )
    model.to(memory_format=torch.channels_last)
    model.train()
    t = _median_time(lambda: step(images, labels, False), steps, warmup=1)
    res["full_finetune_step_seconds"] = t
    res["full_finetune_images_per_second"] = batch / t
    res["cached_vs_full_speedup"] = (
        res["cached_head_samples_per_second"] / res["full_finetune_images_per_second"]
    )
    # stage 2 as configured for the grocery recipe: only the top block trains (frozen BatchNorm in eval)
    from .train.trainer import freeze_backbone, set_train_mode

    freeze_backbone(model, 1)
    set_train_mode(model)
    t = _median_time(lambda: step(images, labels, False), steps, warmup=1)
    res["stage2_top1_block_step_seconds"] = t
    res["stage2_top1_block_images_per_second"] = batch / t
    res["rss_at_start_mb"] = rss_start
    res["peak_rss_mb"] = _peak_since_reset_mb()
    return res


def bench_embedding(
    model: str = "lite0", n_images: int = 256, photo_size: int = 480, batch: int = 32, seed: int = 0
) -> dict[str, Any]:
    """The tools' embedding path against a bare timm forward pass, and enrollment throughput.

    Baseline: the same timm network (``forward_features`` + average pooling) on tensors already
    decoded and resized in memory, in timm's default memory format and in channels_last. The
    tools' path (``embed_paths``) starts from JPEG files on disk: decoding, resizing and
    normalising happen in DataLoader workers, and it must still reach >= 0.9 of the bare forward.
    Enrollment adds SHA-256 dedupe and the gallery's atomic commits.
    """
    import torch

    from .data.synthetic import generate_catalog
    from .enroll import enroll_files
    from .gallery.gallery import Gallery
    from .models.embed import embed_paths
    from .models.model import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        man = generate_catalog(tmp / "cat", n_items=-(-n_images // 4), n_wild=4, seed=seed, size=photo_size)
        paths = sorted((man.parent / "wild").glob("*.jpg"))[:n_images]
        net = load_model(model)
        size = net.preprocess.input_size
        res: dict[str, Any] = {"model": model, "input_size": size, "images": len(paths), "batch": batch,
                               "photo_size": photo_size, "torch_threads": torch.get_num_threads()}  # fmt: skip
        from .data.imageio import load_image

        x = torch.stack([net.preprocess.to_tensor(load_image(p)) for p in paths])
        body = net.backbone.body

        def bare(inp: torch.Tensor) -> None:
            with torch.inference_mode():
                for i in range(0, len(inp), batch):
                    body.forward_features(inp[i : i + batch]).mean((2, 3))

        res["bare_timm_images_per_second"] = len(x) / _median_time(lambda: bare(x), 2)
        xc = x.contiguous(memory_format=torch.channels_last)

        def bare_cl() -> None:
            body.to(memory_format=torch.channels_last)
            bare(xc)

        # the two compared figures take turns, so drift on a shared machine hits both alike
        times = _interleaved_medians(
            {"bare": bare_cl, "tools": lambda: embed_paths(net, paths, batch_size=batch)}, repeats=3
        )
        res["bare_timm_channels_last_images_per_second"] = len(x) / times["bare"]
        res["tools_embed_images_per_second"] = len(paths) / times["tools"]
        res["tools_vs_bare_timm"] = res["tools_embed_images_per_second"] / res["bare_timm_images_per_second"]
        res["tools_vs_bare_timm_channels_last"] = (
            res["tools_embed_images_per_second"] / res["bare_timm_channels_last_images_per_second"]
        )
        g = Gallery.create(tmp / "g", net.describe(), model_spec=model)
        items = [p.stem.split("_")[0] for p in paths]
        t0 = time.perf_counter()
        rep = enroll_files(
            g, net, [(it, p, None) for it, p in zip(items, paths, strict=True)], progress=False
        )
        res["enroll_seconds"] = time.perf_counter() - t0
        res["enroll_images_per_second"] = len(paths) / res["enroll_seconds"]
        res["enroll_vs_tools_embed"] = res["enroll_images_per_second"] / res["tools_embed_images_per_second"]
        res["enrolled_vectors"] = len(g)
        del rep
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_scaling(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000), per_item: int = 100, dim: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Exact gallery search time and memory at several gallery sizes, with the growth exponent.

    For each size: milliseconds per query (one query; and batches of 64), constrained search to
    10 candidates, the gallery's resident memory (RSS growth when it is opened) and the extra
    peak memory while querying. The exponent is the slope of log(time) against log(size):
    1.0 is a linear scan; constrained search should stay flat (about 0).
    """
    import subprocess
    import sys

    from .gallery.ann import perturbed_queries
    from .gallery.gallery import Gallery

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    desc = {"fingerprint": "bench", "embedding_dim": dim, "preprocess": {"input_size": 224}, "config": {}}
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
            # A fresh process per size, so its memory figures are the gallery's alone.
            code = "import json, sys; from recognizer.bench import scaling_probe; print(json.dumps(scaling_probe(*sys.argv[1:])))"
            out = subprocess.run(
                [sys.executable, "-c", code, str(tmp / f"g{n}"), str(tmp / "q.npy")],
                capture_output=True, text=True, check=True,
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


def scaling_probe(root: str, queries: str) -> dict[str, float]:
    """Open one gallery and time its searches (run in a fresh process by :func:`bench_scaling`)."""
    import faiss  # noqa: F401 -- libraries loaded before the baseline reading

    from .gallery.gallery import Gallery

    q = np.load(queries)
    rss0 = _rss_mb()
    g = Gallery.open(root, ann_threshold=10**12)
    g.search(q[:1], k=10)  # everything loaded
    rss1 = _rss_mb()
    _reset_peak_rss()
    n = len(g)
    reps = 5 if n >= 500_000 else 20
    one = 1000 * _median_time(lambda: g.search(q[:1], k=10), reps)
    many = 1000 * _median_time(lambda: g.search(q, k=10), max(2, reps // 4)) / len(q)
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
        "query_peak_extra_mb": max(0.0, _peak_since_reset_mb() - rss1),
    }


def _reset_peak_rss() -> None:
    """Linux: restart the VmHWM high-water mark (``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_since_reset_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def _rss_mb() -> float:
    """Current resident memory of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def bench_unseen(
    models: dict[str, str] | None = None,
    protocols: dict[str, str] | None = None,
    data_root: str = "../shared/data/grocery",
    max_queries: int | None = None,
    score_modes: tuple[str, ...] = ("max", "prototype", "probe"),
) -> dict[str, Any]:
    """Top-1 on held-out grocery items under two enrollment protocols, each model against the first.

    Defaults: the off-the-shelf lite0 as baseline, then any models given (e.g. trained checkpoints);
    protocols: the iconic catalog image alone, and iconic + 8 train photos per item; each gallery
    scored with each of ``score_modes`` (nearest photo, prototype, enrollment-time probe).
    """
    from .evaluation.protocols import evaluate_protocols

    root = Path(__file__).resolve().parent.parent / "data_manifests"
    if not Path(data_root).is_dir():
        return {"skipped": f"{data_root} not found (real data)"}
    models = models or {"lite0 (off the shelf)": "lite0"}
    protocols = protocols or {
        "iconic only": str(root / "grocery_unseen.csv"),
        "iconic + 8 photos": str(root / "grocery_unseen_fewshot.csv"),
    }
    return evaluate_protocols(models, protocols, data_root, max_queries=max_queries, score_modes=score_modes)


def bench_deploy(**kwargs: Any) -> dict[str, Any]:
    """Backbone x backend (torch, ONNX fp32, ONNX int8) x input size: speed, size and grocery-unseen top-1.

    See :func:`recognizer.deploy.measure.run_deploy_table` for the arguments.
    """
    from .deploy.measure import run_deploy_table

    return run_deploy_table(**kwargs)


SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "gallery": bench_gallery,
    "query_options": bench_query_options,
    "training": bench_training,
    "embedding": bench_embedding,
    "scaling": bench_scaling,
    "unseen": bench_unseen,
    "deploy": bench_deploy,
}
QUICK_ARGS: dict[str, dict[str, Any]] = {
    "deploy": {"quick": True},
    "embedding": {"model": "lite0@64", "n_images": 32, "photo_size": 96, "batch": 8},
    "scaling": {"sizes": (1_000, 4_000, 16_000), "per_item": 20, "dim": 64},
    "unseen": {"max_queries": 20},
    "gallery": {"n_items": 1000, "per_item": 20},
    "training": {"n_classes": 100, "batch": 8, "input_size": 64, "steps": 2},
    "query_options": {
        "datasets": ("covers",),
        "n_covers": 12,
        "configs": ("baseline", "zoom_0.6", "rerank_orb"),
    },
}


def run_bench(
    suites: list[str], out_dir: str | os.PathLike, *, quick: bool = False, **overrides: Any
) -> dict[str, Any]:
    """Run the named suites; writes ``bench.json`` and ``bench.md`` into ``out_dir``."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    import torch

    doc: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
        "quick": quick,
        "suites": {},
    }
    for name in suites:
        kwargs = dict(QUICK_ARGS.get(name, {})) if quick else {}
        kwargs.update(overrides.get(name, {}))
        t0 = time.perf_counter()
        doc["suites"][name] = SUITES[name](**kwargs)
        doc["suites"][name]["suite_seconds"] = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    (out / "bench.md").write_text(markdown_table(doc))
    return doc


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(doc: dict[str, Any]) -> str:
    """One table per suite: figure, value (and one row per option for nested option tables)."""
    lines = [f"Machine: {doc['machine']['cpu_count']} CPUs, {doc['machine']['platform']}", ""]
    for name, res in doc["suites"].items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        nested = []
        for k, v in res.items():
            if isinstance(v, dict) and "configs" in v:
                nested.append((k, v))
            elif k == "protocols" and isinstance(v, dict):
                from .evaluation.protocols import protocols_markdown

                lines += ["", protocols_markdown(res), ""]
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                cols = list(v[0])
                lines += ["", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
                lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in v]
                lines.append("")
            else:
                lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
        for k, v in nested:
            lines += ["", f"### {k}: {v['items']} items, {v['queries']} queries", ""]
            cols = list(next(iter(v["configs"].values())))
            lines += ["| option | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for opt, row in v["configs"].items():
                lines.append(f"| {opt} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)
