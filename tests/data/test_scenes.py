"""Generated table scenes from real photos: what is on the table, where, and what happens, per frame."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from conftest import shared_path

from recognizer.data.scenes import SceneSpec, candidate_set, render_scene, table_scenes


def _overlap_x(a, b) -> int:
    return max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))


def test_a_table_scene_has_touching_items_a_hand_dimming_a_pan_and_a_swap():
    coil, grocery = shared_path("coil"), shared_path("grocery")
    spec = SceneSpec(
        "t", ("coil:obj5", "grocery:Oatly-Natural-Oatghurt", "coil:obj24"), seconds=4.0, fps=5, size=(320, 180),
        enter=0.4, overlap=0.3, hand=(1.0, 2.0), dim=(1.0, 2.6), pan=(2.0, 2.6), swap=2.8, extra="coil:obj13", seed=3,
    )  # fmt: skip
    frames = list(render_scene(spec, coil_root=coil, grocery_root=grocery))
    assert len(frames) == 20 and frames[0][0].shape == (180, 320, 3) and frames[0][0].dtype == np.uint8
    truth = [t for _, t in frames]
    assert truth[0].items == [] and truth[0].hand is None  # the empty table first
    at_rest = truth[6]
    assert [it.item_id for it in at_rest.items] == ["obj5", "Oatly-Natural-Oatghurt", "obj24"]
    a, b, c = (it.box for it in at_rest.items)
    assert _overlap_x(a, b) > 0 or b[0] - (a[0] + a[2]) <= 2  # touching or overlapping, never apart
    assert all(0 <= x and x + w <= 320 and 0 <= y and y + h <= 180 for x, y, w, h in (a, b, c))
    assert any(t.hand is not None for t in truth[5:10])  # the hand crosses
    assert min(t.light for t in truth) < 0.55 and truth[-1].light == 1.0  # dims to about half and back
    assert abs(truth[-1].pan_px - 0.1 * 320) < 1  # panned by a tenth of the width
    assert truth[-1].items[-1].item_id == "obj13" and "obj24" not in [it.item_id for it in truth[-1].items]
    dim = frames[int(1.8 * 5)][0].astype(float).mean() / frames[-1][0].astype(float).mean()
    assert dim < 0.75
    assert spec.shown == ("obj5", "Oatly-Natural-Oatghurt", "obj24", "obj13")
    cands = candidate_set(spec, [f"obj{i}" for i in range(2, 20)] + ["Oatly-Natural-Oatghurt"])
    assert cands[:4] == list(spec.shown) and len(cands) == 9 and len(set(cands)) == 9


def test_the_standard_scenes_each_add_one_difficulty():
    scenes = {s.name: s for s in table_scenes()}
    assert list(scenes) == ["apart", "touching", "hand", "dim", "pan", "swap", "table"]
    assert scenes["apart"].gap > 0 and scenes["touching"].overlap >= 0.3
    assert scenes["hand"].hand and scenes["dim"].dim and scenes["pan"].pan and scenes["swap"].swap
    t = scenes["table"]
    assert t.hand and t.dim and t.pan and t.swap and any(i.startswith("grocery:") for i in t.items)
    assert replace(t, fps=5).fps == 5
