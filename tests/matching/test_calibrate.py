"""Self-calibration: pseudo-queries from the gallery's own photos, the choice, and what is stored."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from recognizer.data.manifest import load_manifest
from recognizer.enroll import enroll_files
from recognizer.gallery import Gallery
from recognizer.matching.calibrate import Trial, calibrate, pseudo_queries
from recognizer.matching.settings import resolve_query


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_catalog, tiny_model):
    """Items 0-3 enrolled from their catalog image and 2 wild photos; items 4-7 from the catalog image alone."""
    tmp = tmp_path_factory.mktemp("calib")
    m = load_manifest(tiny_catalog)
    by_item: dict[str, list[str]] = {}
    for r in m.rows:
        by_item.setdefault(r.item_id, []).append(str(m.resolve(r)))
    items = sorted(by_item)
    entries = [(it, p, None) for j, it in enumerate(items) for p in (by_item[it] if j < 4 else by_item[it][:1])]
    g = Gallery.create(tmp / "g", tiny_model.describe(), model_spec="tiny")
    enroll_files(g, tiny_model, entries, progress=False, num_workers=0)
    return g, tiny_model, items, by_item


def test_pseudo_queries_hold_out_photos_or_synthesise_views(mixed):
    g, _, items, by_item = mixed
    assert g.settings["enroll_views"] == ["whole", "crop:0.6"]  # a new gallery's default views
    pq = pseudo_queries(g, seed=1)
    held = [t for t, k in zip(pq.truth, pq.kinds, strict=True) if k == "held_out"]
    synth = [t for t, k in zip(pq.truth, pq.kinds, strict=True) if k == "synthetic"]
    assert sorted(set(held)) == items[:4] and len(held) == 12  # every photo of a multi-photo item, once
    assert sorted(set(synth)) == items[4:] and len(synth) == 16  # 4 synthetic views per one-photo item
    # each fold holds out one photo of each 3-photo item with all its views, and every item keeps a vector
    vids = {r["vid"]: r for r in g.records()}
    assert len(pq.fold_without) == 3 and all(len(w) == 4 * 2 for w in pq.fold_without)
    assert sorted(v for w in pq.fold_without for v in w) == sorted(v for v, r in vids.items() if r["item_id"] in items[:4])
    for f, w in enumerate(pq.fold_without):
        assert sorted(vids[v]["item_id"] for v in w) == sorted(items[:4] * 2)
        _, s = g.exact_item_scores(np.ones((1, g.embedding_dim), np.float32), without_vids=w)
        assert np.isfinite(s).all()
        # a held-out query is scored without its own photo's vectors
        for q in np.flatnonzero(np.asarray(pq.fold) == f):
            if pq.kinds[q] == "held_out":
                assert pq.truth[q] in {vids[v]["item_id"] for v in w}
    for im in pq.images:
        assert im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8
    # synthetic views are new photos (warped, lit, pasted on a real background at 224 px), not the 96 px original
    k = pq.kinds.index("synthetic")
    assert pq.images[k].shape[:2] == (224, 224)


def test_calibration_never_loses_to_the_defaults_and_stores_its_choice(mixed, tmp_path):
    g, model, _, _ = mixed
    cal = calibrate(g, model, max_queries=40)
    assert cal.defaults.name.startswith("crop:0.6 max sift top10 x3 >=15")  # keypoints stored by default
    assert not cal.defaults.beats(cal.chosen, 1.0)  # never clearly worse than the defaults
    # one option at a time from the plain setting: each step names its best variant and whether it was adopted
    assert [o for o, _, _ in cal.steps][:5] == ["score mode", "view", "mirror", "colour", "re-ranking"]
    by_name = {t.name: t for t in cal.trials}
    plain = by_name["crop:0.6 max rerank off"]
    for _, best, adopted in cal.steps:
        if adopted:  # an adopted variant clearly beat the setting it replaced; the chosen one is the last adopted
            assert by_name[best].objective > plain.objective
    adopted = [b for _, b, a in cal.steps if a]
    assert cal.chosen.name == (adopted[-1] if adopted else plain.name)
    names = set(by_name)
    assert {"crop:0.6 prototype rerank off", "crop:0.6 probe rerank off"} <= names
    assert any(n.startswith("whole ") for n in names) and any(n.startswith("crop:0.8 ") for n in names)
    assert any("+flip" in n for n in names) and sum(t.rerank is not None for t in cal.trials) >= 8
    cal.apply(g)
    again = Gallery.open(g.root)
    assert again.settings["photo_query"] == cal.chosen.settings()
    assert again.score_mode == cal.chosen.mode and again.threshold == pytest.approx(cal.threshold)
    assert again.settings["calibration"]["chosen"]["setting"] == cal.chosen.name
    opts, rerank = resolve_query(again, "photo")
    assert (opts.aspect, opts.zoom, opts.flip) == (lambda s: (s["aspect"], s["zoom"], s["flip"]))(cal.chosen.settings())
    assert (rerank is None) == (cal.chosen.rerank is None)
    assert "calibrated on" in cal.summary() and "chosen:" in cal.summary()


def test_a_setting_is_chosen_only_when_it_clearly_beats_the_current_one():
    d = Trial("crop:0.6", False, "max", None, hits=np.r_[np.ones(30), np.zeros(30)])
    assert not Trial("whole", False, "probe", None, hits=d.hits.copy()).beats(d, 1.0)  # a tie keeps the current
    one_more = d.hits.copy()
    one_more[30] = 1.0  # one query of 60 better: noise, not a gain
    assert not Trial("whole", False, "probe", None, hits=one_more).beats(d, 1.0)
    clear = d.hits.copy()
    clear[30:40] = 1.0  # 10 of 60 better, none worse
    assert Trial("whole", False, "probe", None, hits=clear).beats(d, 1.0)
    mixed_gain = clear.copy()
    mixed_gain[:8] = 0.0  # 10 better, 8 worse: not clear
    assert not Trial("whole", False, "probe", None, hits=mixed_gain).beats(d, 1.0)
    assert Trial("whole", True, "max", None, 0.2).settings() == {
        "aspect": "squash", "zoom": 1.0, "flip": True, "colour": 0.2, "rerank": "none"}  # fmt: skip


def test_colour_cue_prefers_the_item_of_the_same_colours(mixed):
    from recognizer.matching.cues import add_colour, colour_affinity, colour_histogram
    from recognizer.matching.pipeline import Recognizer

    red, blue = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    hr, hb = colour_histogram(red), colour_histogram(blue)
    assert hr.sum() == pytest.approx(1.0) and colour_affinity(hr, [hr]) == pytest.approx(1.0)
    assert colour_affinity(hr, [hb]) == pytest.approx(0.0) and colour_affinity(hr, []) == 0.0
    # a tie in embedding score is broken by colour; items outside the top K are left alone
    out = add_colour(np.array([0.5, 0.5, 0.1]), ["b", "r", "x"], hr, {"r": [hr], "b": [hb], "x": [hr]}, 0.2, 2)
    np.testing.assert_allclose(out, [0.5, 0.7, 0.1], atol=1e-6)
    # through the one path: colours are stored at enrolment and the cue moves only the best items' scores
    g, model, items, by_item = mixed
    assert "hsv" in g.features.methods()
    from recognizer.data.imageio import load_image

    photo = load_image(by_item[items[0]][1])
    plain = Recognizer(g, model).match_arrays([photo], k=len(items))[0]
    cued = Recognizer(g, model, type(Recognizer(g, model).query)(colour=0.3)).match_arrays([photo], k=len(items))[0]
    delta = {i: s for i, s in cued.topk}
    assert all(0.0 <= delta[i] - s <= 0.3 + 1e-5 for i, s in plain.topk)
    assert any(delta[i] - s > 1e-3 for i, s in plain.topk)


def test_an_unreadable_enrolled_photo_is_named_and_skipped(tmp_path, tiny_catalog, tiny_model):
    m = load_manifest(tiny_catalog)
    rows = m.select(role="gallery")[:3]
    copies = []
    for r in rows:
        p = tmp_path / f"{r.item_id}.png"
        p.write_bytes(m.resolve(r).read_bytes())
        copies.append((r.item_id, p, None))
    g = Gallery.create(tmp_path / "g", tiny_model.describe(), model_spec="tiny")
    g.update_settings({"store_images": "thumbnails"})  # no kept copy: the source path is all there is
    enroll_files(g, tiny_model, copies, progress=False, num_workers=0, local_features=None)
    copies[0][1].unlink()  # moved away after enrolment
    cal = calibrate(g, tiny_model, max_queries=10)
    assert cal.unreadable == [str(copies[0][1].resolve())] or cal.unreadable == [str(copies[0][1])]
    assert cal.defaults.rerank is None  # no keypoints stored: the defaults verify nothing
    assert "unreadable now" in cal.summary()


def test_enroll_tool_calibrates_unless_told_not_to(tmp_path, tiny_catalog, tiny_model):
    model_dir = tiny_model.save(tmp_path / "model")
    base = [sys.executable, "tools/enroll.py", "--manifest", str(tiny_catalog), "--model", str(model_dir), "--no-progress"]
    out = subprocess.run([*base, "--gallery", str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "calibrated on" in out.stdout and "stored: photo_query" in out.stdout
    assert "photo_query" in Gallery.open(tmp_path / "a").settings
    out = subprocess.run([*base, "--gallery", str(tmp_path / "b"), "--no-calibrate"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    g = Gallery.open(tmp_path / "b")
    assert "calibrated" not in out.stdout and "photo_query" not in g.settings
    out = subprocess.run([sys.executable, "tools/enroll.py", "--gallery", str(tmp_path / "b"), "--calibrate"],
                         cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "photo_query" in Gallery.open(tmp_path / "b").settings
