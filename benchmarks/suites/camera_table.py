"""Suite ``camera_table``: the camera on generated table scenes from real photos (real data).

Scenes (``recognizer.data.scenes.table_scenes``): COIL turntable objects and a grocery cut-out
standing side by side, touching or overlapping, sliding over a real photo; a hand crossing,
the light dimming to half, a camera pan, an item swapped; all of it at once in ``table``.
The gallery holds the held-out COIL objects (``coil_unseen``: 4 views each, never the
angles a scene shows) and the held-out grocery items (their catalog image), embedded by
off-the-shelf ``lite0@160``; each scene's candidates are its items plus 5 distractors.

Per scene and camera configuration: recall, wrong-label frames, label switches per item,
time to the first right label and frame-time p50/p95 (``recognizer.matching.scene_metrics``).
Configurations compare proposal methods; ``default`` is ``CameraConfig()`` as the tool runs it.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA

QUICK = {"scenes": ("touching",), "configs": ("default",)}
COMPARE_SCENES = ("touching", "hand", "dim", "pan", "swap", "table")  # the configurations are compared on these


def build_gallery(root: Path, model_spec: str = "lite0@160", features: str | None = "sift"):
    """The scenes' gallery: held-out COIL objects (4 views) + held-out grocery items (catalog image)."""
    from recognizer.data.imageio import load_image
    from recognizer.gallery import Gallery
    from recognizer.models.embed import embed_arrays
    from recognizer.models.model import load_model

    model = load_model(model_spec)
    if (root / "gallery.sqlite").exists():  # a kept work folder: the gallery built last time
        return Gallery.open(root), model
    g = Gallery.create(root, model.describe(), model_spec=model_spec)
    rows = []
    for name, data in (("coil_unseen.csv", SHARED_DATA / "coil"), ("grocery_unseen.csv", SHARED_DATA / "grocery")):
        with open(MANIFESTS / name, newline="", encoding="utf-8") as f:
            rows += [(data / r["path"], r["item_id"]) for r in csv.DictReader(f) if r["role"] == "gallery"]
    images = [load_image(p) for p, _ in rows]
    g.add([i for _, i in rows], embed_arrays(model, images), paths=[str(p) for p, _ in rows])  # kept photos: item widths
    if features:
        from recognizer.matching.rerank import extract

        vids = [r["vid"] for r in g.records()]
        g.features.store_features(features, {v: extract(im, features) for v, im in zip(vids, images, strict=True)})
    return g, model


def camera_configs() -> dict[str, Any]:
    """The configurations compared: name -> CameraConfig keyword arguments.

    ``default`` (``CameraConfig()``: candidate-guided windows pooled across frames within a time
    budget per frame, windows of the wrong shape for the item they name never picked, last frame's items
    kept unless clearly beaten, each item embedded again every 3rd frame and 3 windows explored a
    frame, verification on a worker thread, square-padded crops) against: ``shape_1.5`` and
    ``shape_2.0`` (the shape check's slack), ``no_shape`` (no shape check), ``no_keep`` (no bonus
    for last frame's items), ``frame_ms_40`` (a frame aims at 40 ms, not 30: more windows
    explored per frame), ``no_budget`` (every stale window re-embedded at once), ``budget_3``,
    ``budget_4`` and ``budget_6`` (a fixed crop budget), ``anchor_1`` (the last stop's: every item embedded every
    frame, 2 windows explored), ``anchor_2`` (every 2nd frame), ``explore_2``, ``verify_inline``
    (verification in the frame), ``no_coast_shape`` (a hidden track takes back a box of any
    width), ``no_hold`` (an item under a hand is hidden as soon as it loses its box, not held for
    5 frames), ``box_height`` (windows as wide as a share of the blob box's height even when an
    item lowered from above makes it far taller than its items), ``no_part`` (two neighbouring windows
    that fit in one item and score each other's item nearly as well may both be picked), ``no_motion``
    (a hidden track stays where it was last seen instead of moving on as it moved), ``no_gate`` (a named
    track may take a box that plainly shows a hidden track's item), ``lost_renamed`` (a track whose
    name another track took takes its next best name at once), ``no_edge`` (a track hidden at the
    frame's edge coasts like any other instead of leaving: an item put down where one was lifted
    away takes its name; with ``stale_change`` off it is the last stop's camera), ``stale`` (a
    pooled window whose thumbnail changed since it was embedded is stale: an item's embedded
    again now, another dropped; off by default, see ``CameraConfig.stale_change``), ``no_refit`` (an
    item's window keeps the width it was made with when its blob's windows are far wider now),
    ``no_seam`` (a window mostly under its two picked neighbours may be a third item), ``before``
    (that, and a blob's pooled windows move as its edges moved, not as its items did: the last
    stop's camera),
    ``windows_unpadded``, and the
    other ways of cutting a blob into items, all with the table background, grey-filled crops and
    the same tracker: ``foreground`` (a blob is one item), ``split`` (the mask split by watershed).
    """
    return {"default": {}, "shape_1.5": {"shape_slack": 1.5}, "shape_2.0": {"shape_slack": 2.0},
            "no_shape": {"shape_slack": None}, "no_keep": {"keep_bonus": 0.0}, "frame_ms_40": {"frame_ms": 40.0},
            "search_on_change": {"search_on_change": True}, "no_budget": {"frame_ms": None},
            "budget_3": {"crop_budget": 3}, "budget_4": {"crop_budget": 4}, "budget_6": {"crop_budget": 6},
            "anchor_1": {"anchor_every": 1, "explore_min": 2}, "anchor_2": {"anchor_every": 2},
            "explore_2": {"explore_min": 2}, "verify_inline": {"verify_lag": 0}, "no_coast_shape": {"coast_shape": None},
            "no_hold": {"hold_frames": 0}, "box_height": {"window_tall": None}, "no_part": {"part_margin": None},
            "no_motion": {"motion_ema": 0.0}, "no_gate": {"name_gate": None},
            "lost_renamed": {"lost_to_unknown": False},
            "stale": {"stale_change": 0.5}, "no_edge": {"edge_leave": None}, "no_refit": {"refit_width": None},
            "before": {"register_px": None, "seam_cover": None}, "no_seam": {"seam_cover": None},
            "windows_unpadded": {"square": False}, "foreground": {"proposals": "foreground"},
            "split": {"proposals": "split"}}  # fmt: skip


def run_scene(g, model, spec, cfg_kwargs: dict[str, Any], work: Path, *, out_video=None, frames_jsonl=None):
    from recognizer.data.scenes import FrameTruth, ItemTruth, candidate_set, write_scene
    from recognizer.matching.camera import CameraConfig, run_camera
    from recognizer.matching.scene_metrics import scene_metrics

    video = work / f"{spec.name}.mp4"
    truth_path = work / f"{spec.name}.truth.json"
    if not video.exists() or not truth_path.exists():
        truth = write_scene(video, spec, coil_root=SHARED_DATA / "coil", grocery_root=SHARED_DATA / "grocery")
        truth_path.write_text(json.dumps([asdict(t) for t in truth]))
    truth = [
        FrameTruth(**{**t, "items": [ItemTruth(**{**i, "box": tuple(i["box"])}) for i in t["items"]],
                      "hand": tuple(t["hand"]) if t["hand"] else None})
        for t in json.loads(truth_path.read_text())
    ]  # fmt: skip
    cands = candidate_set(spec, sorted(g.item_ids))
    log: list = []
    kw = {"frames_jsonl": frames_jsonl} if frames_jsonl else {}
    stats = run_camera(g, model, video, candidates=cands, cfg=CameraConfig(**cfg_kwargs), headless=True,
                       realtime=False, frame_log=log, out_video=out_video, **kw)  # fmt: skip
    m = scene_metrics(truth, log, spec.fps)
    lat = stats["latency_ms"]
    row = {
        "scene": spec.name, "items": len(spec.shown), "recall": round(m["recall"], 3),
        "wrong_label_frames": round(m["wrong_label_frames"], 3), "switches_max": m["switches_max"],
        "switches_mean": round(m["switches_mean"], 2), "first_label_s_max": m["first_label_s_max"],
        "frame_ms_p50": round(lat["total"]["p50"], 1), "frame_ms_p95": round(lat["total"]["p95"], 1),
        "crops_mean": round(lat["crops"]["mean"], 1), "crop_budget": stats.get("crop_budget"),
    }  # fmt: skip
    return row, stats, m


def run(
    scenes: tuple[str, ...] | None = None,
    configs: tuple[str, ...] | None = None,
    model: str = "lite0@160",
    fps: int = 10,
    keep: str | None = None,
    compare_scenes: tuple[str, ...] = COMPARE_SCENES,
    evidence: str | None = None,
    threads: int | None = None,
    backend: str = "torch",
    seeds: int = 1,
    budget: int | None = None,
) -> dict[str, Any]:
    """Every scene at the default configuration, the other proposal methods on ``compare_scenes``.

    ``keep``: a work folder to keep (scenes, gallery) and reuse; ``evidence``: a folder for the
    annotated video and per-frame state stream of ``table``; ``threads``: torch (or ONNX Runtime)
    threads for the run (on a busy 2-core machine 1 thread can be several times faster than 2);
    ``backend="onnx"``: the crops are embedded by a fp32 ONNX export of the gallery's model, made
    and verified in the run (``tools/export.py``'s code), as ``tools/camera.py --backend onnx`` does.
    ``seeds``: each scene also rendered with ``seeds - 1`` other seeds (other turntable angles,
    jitter, hand path; same items and events): a scene of 100-160 frames swings by several points
    with which frame a window is searched on, so ``summary`` gives the mean (and worst) over seeds.
    ``budget``: crops a frame for every configuration that does not fix its own. The default
    measures the embedder once per process (``camera.ms_per_crop``): on this VM 3 to 5 crops from
    one export between runs, and labels follow, so configurations and code versions compared across
    runs need one fixed budget (deterministic: the same labels run after run); the budget a plain
    camera measures in the run is reported as ``measured_budget``.
    """
    import torch

    from recognizer.data.scenes import table_scenes

    if not (SHARED_DATA / "coil").is_dir() or not (SHARED_DATA / "grocery").is_dir():
        return {"skipped": f"{SHARED_DATA} coil/grocery not found (real data)"}
    from dataclasses import replace

    base = [s for s in table_scenes(fps) if scenes is None or s.name in scenes]
    specs = [(s, k, s if k == 0 else replace(s, name=f"{s.name}~{k}", seed=s.seed + 1000 * k)) for s in base for k in range(seeds)]
    all_cfgs = camera_configs()
    names = configs or tuple(all_cfgs)
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench_camera_"))
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"model": model, "backend": backend, "fps": fps, "rows": [], "stages": []}
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    out["torch_threads"] = torch.get_num_threads()
    try:
        g, net = build_gallery(tmp / "gallery", model)
        if backend == "onnx":
            from recognizer.deploy.export import export_model
            from recognizer.session import load_gallery_embedder

            (exp,) = export_model(net, tmp / "export", model_spec=model)
            net = load_gallery_embedder(g, backend="onnx", onnx=exp.path, threads=threads)
            out["export_verification"] = exp.verification
        elif backend != "torch":
            raise ValueError(f"backend {backend!r} is not one of torch, onnx")
        import numpy as np

        from recognizer.models.embed import embed_arrays

        embed_arrays(net, [np.full((160, 160, 3), 128, np.uint8)] * 8)  # warm up: the first scene's frame times are not start-up
        from recognizer.matching.camera import CameraConfig, CameraMatcher

        probe = CameraMatcher(g, net, None, CameraConfig())
        out["measured_budget"], out["budget"] = probe.pool.budget, budget
        probe.close()
        for scene, seed, spec in specs:
            for name in names:
                if name != "default" and scene.name not in compare_scenes:
                    continue
                ev = {}
                if evidence and name == "default" and spec.name == "table":
                    Path(evidence).mkdir(parents=True, exist_ok=True)
                    ev = {"out_video": Path(evidence) / "table_annotated.mp4", "frames_jsonl": Path(evidence) / "table_frames.jsonl"}
                kw = all_cfgs[name] if budget is None or "crop_budget" in all_cfgs[name] else {"crop_budget": budget, **all_cfgs[name]}
                row, stats, m = run_scene(g, net, spec, kw, tmp, **ev)
                row["scene"] = scene.name
                out["rows"].append({"config": name, **row, "seed": seed, "verifications": stats.get("verifications", 0)})
                out.setdefault("per_item", []).extend(
                    {"config": name, "scene": spec.name, "item": k, **v} for k, v in m["per_item"].items()
                )
                if seed == 0 and (spec.name == "table" or len(base) == 1):
                    for k, v in stats["latency_ms"].items():
                        out["stages"].append({"config": name, "scene": spec.name, "stage": k,
                                              "p50": round(v["p50"], 2), "p95": round(v["p95"], 2)})  # fmt: skip
        if seeds > 1:
            out["summary"] = summarize(out["rows"])
    finally:
        torch.set_num_threads(threads_before)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and scene, over its seeds: mean and worst recall and wrong-label frames,
    worst and mean label switches, mean frame-time p50/p95."""
    import numpy as np

    out = []
    for key in dict.fromkeys((r["config"], r["scene"]) for r in rows):
        rs = [r for r in rows if (r["config"], r["scene"]) == key]
        col = lambda k, rs=rs: np.array([r[k] for r in rs], float)  # noqa: E731
        out.append({"config": key[0], "scene": key[1], "seeds": len(rs),
                    "recall_mean": round(col("recall").mean(), 3), "recall_min": round(col("recall").min(), 3),
                    "wrong_mean": round(col("wrong_label_frames").mean(), 3), "wrong_max": round(col("wrong_label_frames").max(), 3),
                    "switches_max": int(col("switches_max").max()), "switches_max_mean": round(col("switches_max").mean(), 2),
                    "frame_ms_p50": round(col("frame_ms_p50").mean(), 1), "frame_ms_p95": round(col("frame_ms_p95").mean(), 1)})  # fmt: skip
    return out
