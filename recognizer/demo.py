"""The main job on the embedded default: catalog -> training -> gallery -> calibration -> matches -> report -> camera.

Generates the synthetic catalog (or reads a manifest given by flag), trains a head on its
training items (cached frozen features), enrols the catalog images (``role=gallery``) of the
items held out from training into a gallery per model, calibrates each gallery, matches the
wild photos (``role=query``) through the one recognition path against the whole gallery and
within 10 candidates, writes the HTML report and runs the camera on a generated video. The
off-the-shelf backbone is measured in the same run as the baseline.
"""

from __future__ import annotations

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


def _match(gallery: Gallery, net: Any, m: Manifest, rows: list, cands_of: dict, kw: dict) -> tuple[list, list, list, float]:
    """Whole-gallery and within-candidates matches of ``rows`` through the one recognition path, with the
    gallery's own (calibrated) settings; returns (rows matched, full, constrained, ms per query)."""
    from .matching.pipeline import Recognizer
    from .matching.settings import resolve_query

    rec = Recognizer(gallery, net, *resolve_query(gallery, "photo"))
    res = rec.match_files([m.resolve(r) for r in rows], [r.bbox for r in rows], [cands_of[r.line] for r in rows],
                          batch_size=kw["batch_size"], num_workers=kw["num_workers"])  # fmt: skip
    return [rows[i] for i in res.indices], res.full, res.within, res.ms_per_query


def _train_head(m: Manifest, config: str | os.PathLike, out: Path, input_size: int | None, progress: bool) -> Path:
    """Stage-1 training on the manifest's split=train items (cached frozen features); returns the model folder."""
    from .train import Trainer, load_config

    overrides = [f"model.input_size={input_size}"] if input_size else []
    cfg = load_config(str(config), overrides)
    n_train = len({r.item_id for r in m.rows if r.item_id and r.split in ("", "train", "val")})
    classes = n_train - max(1, round(cfg["data"]["val_fraction"] * n_train))  # a small catalog: smaller batches
    per = cfg["sampler"]["m"]
    cfg["sampler"]["batch_size"] = max(2 * per, min(cfg["sampler"]["batch_size"], per * (classes // 2) * 2))
    trainer = Trainer(cfg, m, out, progress=progress)
    trainer.build()
    trainer.fit()
    return out / "model"


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
    baseline: bool = False,
    train_config: str | os.PathLike | None = None,
    calibrate: bool = True,
    report: bool = True,
    camera: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and write ``out_dir/demo_results.json``; returns the results.

    Models, each measured on the same unseen items in this run: the off-the-shelf ``model``; a head
    trained on the training items when ``train_config`` is given (the product); a random-init copy
    when ``baseline``. Each gets a gallery enrolled with the default views and keypoints, calibrated
    when ``calibrate``. The last model's gallery gets ``report.html`` and, on the synthetic catalog,
    the camera run on a generated video (annotated mp4, JSONL events, label accuracy).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    synthetic = manifest is None
    if synthetic:
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

    spec = f"{model}@{input_size}" if input_size and not Path(model).is_dir() else model
    models: dict[str, Any] = {f"{model} (off the shelf)": lambda: load_model(spec)}
    results: dict[str, Any] = {"data": source, "data_root": str(m.data_root), "models": {}, "outputs": {}}
    if train_config is not None:
        t0 = time.perf_counter()
        if (out / "train").exists():  # the demo's own run from last time: this run trains afresh
            shutil.rmtree(out / "train")
        head = _train_head(m, train_config, out / "train", input_size, progress)
        results["train_seconds"] = time.perf_counter() - t0
        results["outputs"]["trained model"] = str(head)
        models["trained head (this run)"] = lambda: load_model(str(head))
    if baseline and not Path(model).is_dir():
        models[f"{model} (random init)"] = lambda: build_model({"backbone": model}, pretrained=False)
    k_cands = min(10, len({r.item_id for r in gallery_rows}))
    k_label = f"top1_within_{k_cands}"
    random_sets = candidate_sets(
        [r.item_id for r in query_rows], [r.item_id for r in gallery_rows], k_cands, seed
    )
    # each query's candidate set: its own column, else a seeded random set holding the truth
    cands_of = {r.line: r.candidates or c for r, c in zip(query_rows, random_sets, strict=True)}
    torch.manual_seed(seed)  # the random-init baseline is reproducible
    kw = dict(batch_size=batch_size, num_workers=num_workers)
    for n, (label, make) in enumerate(models.items()):
        net = make()
        if input_size and net.preprocess.input_size != input_size:
            net.preprocess = net.preprocess.with_size(input_size)
        gdir = out / f"gallery_{n}"
        if gdir.exists():
            shutil.rmtree(gdir)
        gspec = spec if n == 0 else (results["outputs"]["trained model"] if "trained" in label else "")
        gallery = Gallery.create(gdir, net.describe(), model_spec=gspec)
        t0 = time.perf_counter()
        enrolled = enroll_manifest(gallery, net, m, gallery_rows, progress=progress, **kw)
        t_enrol = time.perf_counter() - t0
        cal = None
        if calibrate and len(gallery.item_ids) >= 2:
            from .matching.calibrate import calibrate as run_calibration

            cal = run_calibration(gallery, net)
            cal.apply(gallery)
        done, full, constrained, ms = _match(gallery, net, m, query_rows, cands_of, kw)
        for line in format_skipped(enrolled.failures):
            print(line)
        metrics = evaluate_matches([r.item_id for r in done], full, constrained, k_label)
        metrics.update(
            items=len(gallery.item_ids),
            queries=len(done),
            chance_top1=1.0 / max(1, len(gallery.item_ids)),
            ms_per_query=ms,
            enrol_seconds=t_enrol,
            calibration_seconds=cal.seconds if cal else 0.0,
            settings={**gallery.settings.get("photo_query", {}), "score_mode": gallery.score_mode,
                      "threshold": round(gallery.threshold, 4)},  # fmt: skip
            input_size=net.preprocess.input_size,
            fingerprint=net.fingerprint,
            skipped_images=len(enrolled.failures) + len(query_rows) - len(done),
            gallery=str(gdir),
        )
        results["models"][label] = metrics
        if "random init" not in label:  # the report and the camera show the product: the last real model
            product = (gallery, net, gdir)
    gallery, net, gdir = product
    if report:
        from .evaluation.report import run_report
        from .matching.settings import resolve_query

        opts, rerank = resolve_query(gallery, "photo")
        sub = Manifest(m.source, m.data_root, [*gallery_rows, *query_rows], [], m.columns)
        run_report(gdir, sub, out / "report", progress=False, num_workers=num_workers, query_options=opts, rerank=rerank)
        results["outputs"]["report"] = str(out / "report" / "report.html")
    if camera and synthetic:
        results["camera"] = _camera(gallery, net, out, [r.item_id for r in gallery_rows], seed)
        results["outputs"].update(annotated_video=str(out / "camera.mp4"), camera_events=str(out / "camera_events.jsonl"))
    results["generate_seconds"] = gen_seconds
    results["total_seconds"] = time.perf_counter() - t_start
    write_json_atomic(out / "demo_results.json", results)
    return results


def _camera(gallery: Gallery, net: Any, out: Path, items: list[str], seed: int) -> dict[str, Any]:
    """The camera on a generated video of 3 unseen items (candidates: them and up to 7 others)."""
    from .data.synthetic import generate_video, render_item
    from .matching.camera import CameraConfig, label_accuracy, run_camera
    from .matching.settings import resolve_query

    shown = items[:3]
    sprites = [(it, render_item(int(it[4:]), seed)) for it in shown]
    truth = generate_video(out / "camera_input.mp4", sprites, seconds=8, fps=10, seed=seed)
    query, rerank = resolve_query(gallery, "camera")
    log: list = []
    stats = run_camera(
        gallery, net, out / "camera_input.mp4", candidates=items[:10], cfg=CameraConfig(query=query, rerank=rerank),
        headless=True, out_video=out / "camera.mp4", jsonl=out / "camera_events.jsonl", realtime=False, frame_log=log,
    )  # fmt: skip
    acc = label_accuracy(truth, log, fps=10)
    lat = stats.get("latency_ms", {})
    frame = lat.get("total") or lat.get("frame") or {}
    return {"items_shown": shown, "label_accuracy": acc, "frames": stats.get("frames"),
            "frame_ms_p50": frame.get("p50"), "frame_ms_p95": frame.get("p95")}  # fmt: skip


def format_results(results: dict[str, Any]) -> str:
    """A Markdown summary of the demo: accuracy per model, the calibrated settings, the camera, the outputs."""
    models = results["models"]
    first = next(iter(models.values()))
    kcol = next(k for k in first if k.startswith("top1_within_"))
    lines = [
        f"Data: {results['data']}",
        f"Gallery items: {first['items']} (unseen: never trained on), queries: {first['queries']}, "
        f"chance top-1: {first['chance_top1']:.3f}",
        "",
        f"| model | top-1 | top-5 | {kcol.replace('_', ' ')} | ms/query | enrol s | calibration s | input |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in models.items():
        lines.append(
            f"| {label} | {r['top1']:.3f} | {r['top5']:.3f} | {r[kcol]:.3f} | {r['ms_per_query']:.0f} | "
            f"{r['enrol_seconds']:.1f} | {r['calibration_seconds']:.1f} | {r['input_size']} |"
        )
    lines.append("")
    for label, r in models.items():
        lines.append(f"settings of {label}: {r['settings']}")
    if "train_seconds" in results:
        lines.append(f"training: {results['train_seconds']:.0f} s")
    if "camera" in results:
        c = results["camera"]
        lines.append(
            f"camera ({', '.join(c['items_shown'])} on a generated video, {c['frames']} frames): "
            f"labels right on {c['label_accuracy'].get('accuracy', float('nan')):.1%} of (frame, item) pairs after 1 s; "
            f"frame time p50 {c['frame_ms_p50'] or float('nan'):.0f} ms"
        )
    for name, path in results.get("outputs", {}).items():
        lines.append(f"{name}: {path}")
    lines.append(f"\nTotal {results['total_seconds']:.1f} s")
    return "\n".join(lines)
