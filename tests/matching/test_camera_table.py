"""The camera on a generated table scene from real photos: touching items separated, a hand unknown,
the per-frame state stream; and the tool's --frames-jsonl."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path

from recognizer.data.imageio import load_image
from recognizer.data.scenes import SceneSpec, write_scene
from recognizer.gallery import Gallery
from recognizer.matching.camera import UNKNOWN, CameraConfig, iou, run_camera
from recognizer.matching.scene_metrics import scene_metrics
from recognizer.models.embed import embed_arrays
from recognizer.models.model import load_model

OBJECTS = ["obj2", "obj45", "obj9", "obj11", "obj25", "obj36", "obj30", "obj43"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """8 held-out COIL objects enrolled from 4 views; a scene of 3 of them touching, a hand crossing."""
    coil = shared_path("coil")
    d = tmp_path_factory.mktemp("table")
    model = load_model("lite0@160")
    g = Gallery.create(d / "g", model.describe(), model_spec="lite0@160")
    for o in OBJECTS:
        paths = [coil / o / f"{o}__{a}.jpg" for a in (0, 90, 180, 270)]
        g.add([o] * 4, embed_arrays(model, [load_image(p) for p in paths]), paths=[str(p) for p in paths])
    spec = SceneSpec("t", ("coil:obj2", "coil:obj45", "coil:obj9"), seconds=4.5, fps=8, size=(480, 270),
                     enter=1.4, overlap=0.25, hand=(2.6, 4.0), seed=11)  # fmt: skip
    truth = write_scene(d / "t.mp4", spec, coil_root=coil)
    return d, g, model, truth


def test_touching_items_are_named_apart_and_the_hand_is_never_named(table):
    d, g, model, truth = table
    log: list = []
    # the default camera but for its crop budget, which it would otherwise derive from the embedder's measured speed:
    # torch on a 2-core CPU gets 1-2 (same labels); measured 2026-12-02, budgets 3, 4 and 6 fail this test
    # (recall 0.878 with 2 switches at 3 and 4, a distractor named at 6), 5 passes (recall 0.951)
    stats = run_camera(g, model, d / "t.mp4", candidates=OBJECTS, cfg=CameraConfig(crop_budget=2), headless=True,
                       realtime=False, frame_log=log, frames_jsonl=d / "frames.jsonl")  # fmt: skip
    m = scene_metrics(truth, log, fps=8)
    assert m["recall"] >= 0.9 and m["wrong_label_frames"] <= 0.05, m
    assert m["switches_max"] <= 1, m
    named = {lab for _, shown in log for _, lab, _ in shown if lab != UNKNOWN}
    assert named <= {"obj2", "obj45", "obj9"}
    on_hand = [
        lab for (f, shown), t in zip(log, truth, strict=True) if t.hand is not None for box, lab, _ in shown
        if lab != UNKNOWN and not any(it.item_id == lab and iou(box, it.box) > 0.2 for it in t.items)
    ]  # fmt: skip
    assert on_hand == []
    lines = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == stats["frames"] == len(truth)
    last = lines[-1]
    assert {"frame", "time", "tracks"} <= set(last)
    assert {t["item_id"] for t in last["tracks"] if t["visible"]} >= {"obj2", "obj45", "obj9"}
    assert all({"track_id", "item_id", "score", "box", "visible"} <= set(t) for t in last["tracks"])
