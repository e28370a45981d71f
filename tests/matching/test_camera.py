from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from conftest import ROOT, shared_path

from recognizer.data.imageio import load_image
from recognizer.data.synthetic import catalog_image, generate_video, render_item, rgba_from_plain_background
from recognizer.gallery import Gallery, UnknownItemError
from recognizer.matching.camera import (
    UNKNOWN,
    CameraConfig,
    LabelTracker,
    assign,
    iou,
    label_accuracy,
    latency_table,
    run_camera,
)
from recognizer.matching.video import FrameSource
from recognizer.models.embed import embed_arrays
from recognizer.models.model import load_model


def test_iou_and_assignment():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    s = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert assign(s, one_to_one=False).tolist() == [0, 0]  # both would say item 0
    assert assign(s, one_to_one=True).tolist() == [1, 0]  # distinct names, best total


def test_tracker_hysteresis_events_and_unknown():
    cfg = CameraConfig(proposals="full", ema=1.0, switch_frames=3, leave_frames=2)
    tr = LabelTracker(["a", "b"], cfg, threshold=0.5, one_to_one=False)
    box = (10, 10, 50, 50)
    ev = tr.update(0, 0.0, [box], np.array([[0.9, 0.2]]))
    assert [(e.kind, e.item_id) for e in ev] == [("appear", "a")]
    for f in (1, 2):  # two frames saying "b" are not enough to switch
        assert tr.update(f, 0.0, [box], np.array([[0.2, 0.9]])) == []
        assert tr.tracks[0].label == "a"
    ev = tr.update(3, 0.0, [box], np.array([[0.2, 0.9]]))
    assert [(e.kind, e.item_id, e.previous) for e in ev] == [("change", "b", "a")]
    for f in (4, 5, 6):  # below the threshold: unknown, after the same hysteresis
        ev = tr.update(f, 0.0, [box], np.array([[0.3, 0.2]]))
    assert [(e.kind, e.item_id) for e in ev] == [("change", UNKNOWN)]
    evs = [e for f in (7, 8, 9) for e in tr.update(f, 0.0, [], np.zeros((0, 2)))]
    assert [(e.kind, e.track_id) for e in evs] == [("leave", 1)]
    assert json.loads(evs[0].to_json())["box"] == list(box)


def test_file_source_delivers_every_frame_and_live_drops_stale(tmp_path):
    p = tmp_path / "v.mp4"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 50, (32, 24))
    for i in range(30):
        w.write(np.full((24, 32, 3), i * 8, np.uint8))
    w.release()
    src = FrameSource(str(p), realtime=False)
    got = []
    while (item := src.read()) is not None:
        got.append(item[0])
        time.sleep(0.005)
    src.close()
    assert got == list(range(30))
    src = FrameSource(str(p), realtime=True)  # 50 fps; a slow consumer only ever sees the newest frame
    got = []
    while (item := src.read()) is not None:
        got.append(item[0])
        time.sleep(0.06)
    src.close()
    assert got == sorted(got) and len(got) < 30 and src.dropped > 0
    with pytest.raises(FileNotFoundError, match="no such video"):
        FrameSource(str(tmp_path / "missing.mp4"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A gallery of 6 synthetic items enrolled from their catalog images, and a video of 3 of them."""
    d = tmp_path_factory.mktemp("cam")
    items = [(f"item{i:04d}", render_item(i, seed=5)) for i in range(6)]
    model = load_model("lite0@160")
    g = Gallery.create(d / "g", model.describe(), model_spec="lite0@160")
    cats = [catalog_image(r, 224) for _, r in items]
    paths = [str(d / f"{i}.png") for i, _ in items]  # kept as enrolment keeps them: the camera reads item widths
    for p, im in zip(paths, cats, strict=True):
        cv2.imwrite(p, cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    g.add([i for i, _ in items], embed_arrays(model, cats), paths=paths)
    truth = generate_video(d / "v.mp4", items[:3], seconds=8, fps=10, seed=1)
    return d, g, model, truth, [i for i, _ in items[:5]]


def test_labels_match_truth_on_generated_video(scene):
    d, g, model, truth, cands = scene
    log: list = []
    stats = run_camera(g, model, d / "v.mp4", candidates=cands, headless=True, realtime=False, frame_log=log)
    acc = label_accuracy(truth, log, fps=10)
    assert acc["evaluated"] > 100
    assert acc["accuracy"] >= 0.95, acc
    assert stats["frames"] == 80 and {"proposals", "preprocess_embed", "search", "track"} <= set(
        stats["latency_ms"]
    )
    assert "frames/s" in latency_table(stats)


def test_camera_tool_headless_on_a_video(scene, tmp_path):
    d, g, model, truth, cands = scene
    out, ev, fj = tmp_path / "annotated.mp4", tmp_path / "events.jsonl", tmp_path / "frames.jsonl"
    (tmp_path / "table.txt").write_text("\n".join(cands) + "\n")
    r = subprocess.run(
        [sys.executable, "tools/camera.py", "--gallery", str(g.root), "--source", str(d / "v.mp4"), "--candidates-file",
         str(tmp_path / "table.txt"), "--headless", "--out", str(out), "--jsonl", str(ev), "--fast",
         "--frames-jsonl", str(fj), "--item-colours", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "| preprocess_embed |" in r.stdout and "80 frames" in r.stdout
    assert "camera: ONNX Runtime backend" in r.stdout  # by itself: an export verified and cached for the gallery's model
    events = [json.loads(ln) for ln in ev.read_text().splitlines()]
    appeared = {e["item_id"] for e in events if e["kind"] == "appear"}
    assert appeared == {"item0000", "item0001", "item0002"}
    states = [json.loads(ln) for ln in fj.read_text().splitlines()]  # every frame's alive tracks
    assert [s["frame"] for s in states] == list(range(80))
    assert {t["item_id"] for t in states[-1]["tracks"] if t["visible"]} == {"item0000", "item0001", "item0002"}
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 80
    r = subprocess.run(
        [sys.executable, "tools/camera.py", "--gallery", str(g.root), "--source", str(d / "v.mp4"), "--candidates", "item0000,ghost"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and "ghost" in r.stderr
    r = subprocess.run(
        [sys.executable, "tools/camera.py", "--gallery", str(g.root), "--source", str(d / "v.mp4"), "--item-colours", "-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and "colour must be >= 0" in r.stderr


def test_unknown_candidate_ids_are_refused(scene):
    d, g, model, truth, cands = scene
    with pytest.raises(UnknownItemError, match="nope"):
        run_camera(g, model, d / "v.mp4", candidates=["item0000", "nope"], headless=True)


def test_real_photos_on_video(tmp_path):
    """COIL objects (real photos) enrolled from 4 views, seen in the video from other angles."""
    coil = shared_path("coil")
    model = load_model("lite0@160")
    g = Gallery.create(tmp_path / "g", model.describe(), model_spec="lite0@160")
    objs = ["obj5", "obj12", "obj21", "obj33", "obj40"]
    for o in objs:
        paths = [coil / o / f"{o}__{a}.jpg" for a in (0, 90, 180, 270)]
        g.add([o] * 4, embed_arrays(model, [load_image(p) for p in paths]), paths=[str(p) for p in paths])
    sprites = [
        (o, rgba_from_plain_background(load_image(coil / o / f"{o}__45.jpg"), dark=True)) for o in objs[:3]
    ]
    truth = generate_video(tmp_path / "v.mp4", sprites, seconds=8, fps=10, seed=2)
    log: list = []
    run_camera(g, model, tmp_path / "v.mp4", candidates=objs, headless=True, realtime=False, frame_log=log)
    acc = label_accuracy(truth, log, fps=10)
    assert acc["accuracy"] >= 0.95, acc


def test_a_challenger_within_the_margin_never_switches_the_label():
    cfg = CameraConfig(proposals="full", ema=1.0, switch_frames=1, switch_margin=0.05)
    tr = LabelTracker(["a", "b"], cfg, threshold=0.0, one_to_one=False)
    box = (0, 0, 20, 20)
    tr.update(0, 0.0, [box], np.array([[0.80, 0.70]]))
    for f in range(1, 10):  # b edges ahead by 0.02 on every frame: not enough
        assert tr.update(f, 0.0, [box], np.array([[0.78, 0.80]])) == []
    assert tr.tracks[0].label == "a"
    ev = tr.update(10, 0.0, [box], np.array([[0.70, 0.80]]))
    assert [(e.kind, e.item_id) for e in ev] == [("change", "b")]


def test_camera_with_multicrop_and_geometric_verification(scene):
    from recognizer.matching.options import QueryOptions
    from recognizer.matching.rerank import RerankConfig, extract

    d, g, model, truth, cands = scene
    vids = {r["item_id"]: r["vid"] for r in g.records()}
    g.features.store_features(
        "orb", {vids[i]: extract(catalog_image(render_item(int(i[4:]), seed=5), 224), "orb") for i in cands}
    )
    cfg = CameraConfig(
        query=QueryOptions(multicrop="grid", pool="max"), rerank=RerankConfig(method="orb", top_k=3)
    )
    log: list = []
    stats = run_camera(
        g,
        model,
        d / "v.mp4",
        candidates=cands,
        cfg=cfg,
        headless=True,
        realtime=False,
        frame_log=log,
        max_frames=40,
    )
    assert stats["frames"] == 40
    acc = label_accuracy([t for t in truth if t[0] < 40], log, fps=10)
    assert acc["evaluated"] > 20 and acc["accuracy"] >= 0.9, acc


def test_the_embedder_is_timed_once_so_every_camera_on_it_gets_one_crop_budget():
    from types import SimpleNamespace

    from recognizer.matching.camera import ms_per_crop

    class Model:  # weak-referenceable, like a torch module or an ONNX embedder
        pass

    calls = []
    rec = SimpleNamespace(model=Model(), query="crop:0.6", embed_arrays=lambda crops: calls.append(len(crops)))
    first = ms_per_crop(rec)
    assert len(calls) == 12 and ms_per_crop(rec) == first and len(calls) == 12  # 3 untimed + 9 timed, then cached
    other = SimpleNamespace(model=Model(), query="crop:0.6", embed_arrays=rec.embed_arrays)
    ms_per_crop(other)
    assert len(calls) == 24  # another embedder is timed anew


def test_a_long_name_is_shortened_to_its_box_so_it_never_hides_the_next_boxs_name():
    from recognizer.matching.camera import fit_caption

    text, (w, _) = fit_caption("Oatly-Natural-Oatghurt", 0.61, 72)
    assert text.startswith("Oatly") and text.endswith(".. 0.61") and w + 4 <= 72
    assert fit_caption("Oatly-Natural-Oatghurt", 0.61, 400)[0] == "Oatly-Natural-Oatghurt 0.61"
    assert fit_caption("obj45", 0.53, 72)[0] == "obj45 0.53"
    assert fit_caption("unknown", 0.34, 72)[0] == "unknown"  # the score gives way, never the word


def test_touching_items_names_stack_so_none_hides_another():
    from recognizer.matching.camera import caption_row

    assert caption_row([], 100, 150, 90, 20) == 150
    first = (100, 150 - 17, 90, 20)  # the caption drawn at (100, 150)
    assert caption_row([first], 160, 150, 90, 20) == 130  # overlaps it: one row up
    assert caption_row([first], 200, 150, 90, 20) == 150  # clear of it: its own row
    top = (100, 18 - 17, 90, 20)  # a box at the frame's top: no room above, so a row below
    assert caption_row([top], 150, 18, 90, 20) == 38


def test_the_colour_cue_names_apart_items_the_embedding_cannot_tell(tmp_path):
    """A green and an orange bottle of one brand (COIL obj5, obj24) look alike to lite0; their colours differ.
    Here the embedder is made colour-blind (its first layer sees R + G + B only), so a red and a green
    item of one shape score exactly alike: only the colour cue can name them."""
    import torch

    from recognizer.matching.camera import CameraMatcher
    from recognizer.models.model import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False).eval()
    stem = model.backbone.body.conv_stem
    with torch.no_grad():
        stem.weight.copy_(stem.weight.mean(dim=1, keepdim=True).expand_as(stem.weight))

    def photo(colour, x0):  # a 60 x 120 object on white; red and green have the same R + G + B
        im = np.full((100, 200, 3), 255, np.uint8)
        im[20:80, x0 : x0 + 120] = colour
        return im

    red, green = (200, 30, 30), (30, 200, 30)
    paths = [str(tmp_path / "red.png"), str(tmp_path / "green.png")]
    for p, c in zip(paths, (red, green), strict=True):
        cv2.imwrite(p, cv2.cvtColor(photo(c, 40), cv2.COLOR_RGB2BGR))
    g = Gallery.create(tmp_path / "g", model.describe(), model_spec="colour-blind")
    g.add(["red", "green"], embed_arrays(model, [photo(red, 40), photo(green, 40)]), paths=paths)

    def seen(colour, weight):  # put down on an empty table, the camera watching
        cam = CameraMatcher(g, model, ["red", "green"], CameraConfig(colour=weight, min_score=0.0, threshold=0.0,
                                                                     verify="none", crop_budget=2))  # fmt: skip
        rng = np.random.default_rng(0)
        table = np.clip(rng.normal(120, 3, (200, 320, 3)), 0, 255).astype(np.uint8)
        for i in range(14):
            frame = table.copy()
            if i >= 10:
                frame[60:120, 100:220] = colour
            cam.process(i, i / 10, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        (tr,) = [t for t in cam.tracker.tracks if not t.missed]
        cam.close()
        return tr.label, tr.scores

    _, s = seen(green, 0.0)
    assert abs(s[0] - s[1]) < 1e-3  # off: a tie, whichever name comes first
    for colour, name in ((green, "green"), (red, "red")):
        label, s = seen(colour, CameraConfig().colour)
        assert label == name and abs(s[0] - s[1]) > 0.1, (name, s)
