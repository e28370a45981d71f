"""Enrollment and batch matching through the tools, with bad rows, duplicates and model checks."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, shared_path
from PIL import Image

from recognizer.data.manifest import load_manifest
from recognizer.enroll import enroll_files, enroll_manifest
from recognizer.gallery import Gallery, GalleryModelMismatchError, UnknownItemError
from recognizer.matching.batch import match_manifest, write_predictions
from recognizer.matching.pipeline import match_images
from recognizer.session import open_or_create_gallery


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_gallery(tmp_path, tiny_catalog, tiny_model):
    """A gallery of the tiny catalog's 8 catalog images, embedded with the 64-px random-weight model."""
    model_dir = tiny_model.save(tmp_path / "model")
    g, model = open_or_create_gallery(tmp_path / "g", str(model_dir))
    m = load_manifest(tiny_catalog)
    enroll_manifest(g, model, m, progress=False, num_workers=0)
    return g, model, m


def test_enroll_manifest_skips_bad_rows_and_duplicates(tmp_path, tiny_catalog, tiny_model):
    root = tiny_catalog.parent
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    lines = tiny_catalog.read_text().splitlines()
    extra = [
        "broken.jpg,item0000,train,gallery",
        "missing.png,item0001,train,gallery",
        "catalog/item0002.png,item0002,bogus-split,gallery",
        lines[1],  # the same row again: a duplicate row of the manifest itself
    ]
    bad_manifest = tmp_path / "bad.csv"
    bad_manifest.write_text("\n".join([*lines, *extra]) + "\n")
    model_dir = tiny_model.save(tmp_path / "model")
    g, model = open_or_create_gallery(tmp_path / "g", str(model_dir))
    rep = enroll_manifest(g, model, load_manifest(bad_manifest, root), progress=False, num_workers=0)
    assert rep.images_added == 8 and len(rep.items_added) == 8
    text = rep.summary(g)
    # each bad file's own report line gives the loader's reason for that file
    (broken,) = [ln for ln in text.splitlines() if "broken.jpg" in ln]
    assert broken.endswith("broken.jpg: not a recognised image format"), broken
    (missing,) = [ln for ln in text.splitlines() if "missing.png" in ln]
    assert "No such file" in missing, missing
    assert "split 'bogus-split'" in text and "duplicate of line 2" in text
    # enrolling again adds nothing: identical images are skipped
    rep2 = enroll_manifest(g, model, load_manifest(tiny_catalog), progress=False, num_workers=0)
    assert rep2.images_added == 0 and len(rep2.duplicates) == 8
    assert len(Gallery.open(g.root)) == 16  # each photo whole and as the centre crop (the default views)


def test_match_honours_row_candidates_and_reports_unknown_ids(tmp_path, small_gallery, tiny_catalog):
    g, model, m = small_gallery
    q = tmp_path / "q.csv"
    rows = [r for r in m.rows if r.role == "query"]
    with open(q, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "item_id", "role", "candidates"])
        w.writerow([rows[0].path, rows[0].item_id, "query", f"{rows[0].item_id};item0007"])
        w.writerow([rows[1].path, rows[1].item_id, "query", "item0003;ghost-item"])
        w.writerow([rows[2].path, "", "query", ""])  # unlabelled query, whole gallery
    rep = match_manifest(g, model, load_manifest(q, tiny_catalog.parent), k=3, progress=False, num_workers=0)
    assert len(rep.matches) == 2
    assert rep.matches[0].item_id in (rows[0].item_id, "item0007")
    assert {i for i, _ in rep.matches[0].topk} <= {rows[0].item_id, "item0007"}
    assert rep.failures == [
        ("line 3 (" + rows[1].path + ")", "candidate id(s) not in the gallery: ghost-item")
    ]
    out = write_predictions(tmp_path / "p.csv", rep)
    got = list(csv.DictReader(open(out)))
    assert list(got[0]) == ["path", "item_id", "pred_item_id", "score", "accepted", "topk_ids", "topk_scores"]
    assert got[1]["item_id"] == "" and len(got[1]["topk_ids"].split(";")) == 3
    with pytest.raises(UnknownItemError, match="'nope'"):
        match_manifest(g, model, m, candidates=["nope"], progress=False)


def test_gallery_from_another_model_is_refused(tmp_path, small_gallery):
    g, model, m = small_gallery
    import torch

    from recognizer.models.model import build_model

    torch.manual_seed(123)
    other = build_model({"backbone": "lite0", "input_size": 64}, pretrained=False)
    with pytest.raises(GalleryModelMismatchError, match="gallery was built with model"):
        match_manifest(g, other, m, progress=False)
    with pytest.raises(GalleryModelMismatchError):
        enroll_files(g, other, [("x", m.resolve(m.rows[0]), None)], progress=False)


def test_python_api_match_images(small_gallery):
    g, model, m = small_gallery
    gal = m.select(role="gallery")[:3]
    res = match_images(g, model, [str(m.resolve(r)) for r in gal], k=2)
    assert [x.item_id for x in res] == [r.item_id for r in gal]  # each catalog image finds itself
    arr = np.asarray(Image.open(m.resolve(gal[0])).convert("RGB"))
    assert (
        match_images(g, model, [arr], candidates=[gal[0].item_id, gal[1].item_id])[0].item_id == gal[0].item_id
    )


def test_enroll_and_match_tools_end_to_end(tmp_path, tiny_catalog, tiny_model):
    model_dir = tiny_model.save(tmp_path / "model")
    gal = tmp_path / "g"
    out = _run(
        "tools/enroll.py",
        "--gallery",
        str(gal),
        "--manifest",
        str(tiny_catalog),
        "--model",
        str(model_dir),
        "--no-progress",
        "--no-calibrate",  # the tools' defaults are checked below (calibration: tests/matching/test_calibrate.py)
        "--workers",
        "0",
    )
    assert out.returncode == 0, out.stderr
    assert "enrolled 8 image(s), 8 new item(s)" in out.stdout
    extra = tiny_catalog.parent / "wild" / "item0001_00.jpg"
    out = _run(
        "tools/enroll.py",
        "--gallery",
        str(gal),
        "--item",
        "item0001",
        "--images",
        str(extra),
        str(extra),
        "--name",
        "Item one",
        "--no-progress",
        "--no-calibrate",
    )
    assert out.returncode == 0, out.stderr
    assert "enrolled 1 image(s)" in out.stdout and "skipped 1 identical" in out.stdout
    out = _run("tools/enroll.py", "--gallery", str(gal), "--list")
    assert "item0001\t4\tItem one" in out.stdout  # 2 photos x 2 views
    out = _run("tools/enroll.py", "--gallery", str(gal), "--set-threshold", "0.5", "--set-margin", "0.01")
    assert "threshold 0.5000, margin 0.0100" in out.stdout
    out = _run("tools/enroll.py", "--gallery", str(gal), "--set-score-mode", "probe")
    assert out.returncode == 0 and "score mode probe" in out.stdout  # the matching below scores with the probe
    out = _run("tools/enroll.py", "--gallery", str(gal), "--set-score-mode", "median")
    assert out.returncode == 2 and "invalid choice: 'median'" in out.stderr
    preds = tmp_path / "preds.csv"
    out = _run(
        "tools/match.py",
        "--gallery",
        str(gal),
        "--manifest",
        str(tiny_catalog),
        "--out",
        str(preds),
        "--candidates",
        "item0000,item0001,item0002",
        "--rerank",
        "none",  # SIFT keypoints are stored by default; the scores checked here are the probe's alone
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 16 and all(r["pred_item_id"] in {"item0000", "item0001", "item0002"} for r in rows)
    _assert_scored_with_the_probe(gal, tiny_catalog, rows, ["item0000", "item0001", "item0002"])
    out = _run("tools/enroll.py", "--gallery", str(gal), "--remove", "item0001")
    assert "removed item 'item0001' (4 vectors); 7 items left" in out.stdout
    out = _run(
        "tools/match.py",
        "--gallery",
        str(gal),
        "--manifest",
        str(tiny_catalog),
        "--out",
        str(preds),
        "--candidates",
        "item0001",
    )
    assert out.returncode == 2 and "item0001" in out.stderr and "not in gallery" in out.stderr
    out = _run("tools/enroll.py", "--gallery", str(gal), "--manifest", str(tiny_catalog), "--model", "lite0")
    assert out.returncode == 2 and "gallery was built with model" in out.stderr
    out = _run(
        "tools/match.py",
        "--gallery",
        str(tmp_path / "nothing"),
        "--manifest",
        str(tiny_catalog),
        "--out",
        str(preds),
    )
    assert out.returncode == 2 and "no gallery here" in out.stderr


def _assert_scored_with_the_probe(gal, catalog, rows, cands):
    """The tool's scores are the probe's (a logistic regression fitted on the gallery's enrolled vectors,
    the candidates' rows taken, recomputed here from the public pieces), and not the max-cosine scores."""
    from recognizer.cli import PHOTO_DEFAULTS
    from recognizer.gallery.adapt import fit_probe
    from recognizer.matching.options import QueryOptions
    from recognizer.models.embed import embed_manifest
    from recognizer.session import load_gallery_model

    g = Gallery.open(gal)
    assert g.score_mode == "probe"
    m = load_manifest(catalog)
    queries = m.select(role="query")
    assert [r["item_id"] for r in rows] == [q.item_id for q in queries]
    opts = QueryOptions(aspect=PHOTO_DEFAULTS["aspect"], zoom=PHOTO_DEFAULTS["zoom"])  # the tool's defaults
    res, _ = embed_manifest(load_gallery_model(g), m, queries, num_workers=0, view_fn=opts.views)
    assert len(res.embeddings) == len(rows)
    q = res.embeddings / np.linalg.norm(res.embeddings, axis=1, keepdims=True)
    # the probe is fitted once on the whole gallery; a candidate set takes its items' rows
    every = g.item_ids
    vecs_all = [g.vectors_of(c) for c in every]
    w, b = fit_probe(np.concatenate(vecs_all), np.repeat(np.arange(len(every)), [len(v) for v in vecs_all]), len(every))
    sel = [every.index(c) for c in cands]
    probe = q @ w[sel].T + b[sel]
    vecs = [g.vectors_of(c) for c in cands]
    max_cos = np.stack([(q @ v.T).max(axis=1) for v in vecs], axis=1)
    got = np.array([
        [dict(zip(r["topk_ids"].split(";"), map(float, r["topk_scores"].split(";")), strict=True))[c] for c in cands]
        for r in rows
    ])  # fmt: skip
    np.testing.assert_allclose(got, probe, atol=1e-5)  # the CSV holds 6 decimals
    assert np.abs(got - max_cos).max() > 0.01  # max-mode scores would be these, measurably different
    assert [r["pred_item_id"] for r in rows] == [cands[j] for j in probe.argmax(axis=1)]


def test_grocery_unseen_items_enroll_then_match_within_candidates(tmp_path):
    """Real data: enroll each unseen item's one catalog photo with off-the-shelf lite0, match shelf photos."""
    root = shared_path("grocery")
    from recognizer.models.model import load_model

    model = load_model("lite0")
    model.preprocess = model.preprocess.with_size(160)
    g = Gallery.create(tmp_path / "g", model.describe(), model_spec="lite0")
    m = load_manifest(ROOT / "data_manifests" / "grocery_unseen.csv", root, strict=True)
    rep = enroll_manifest(g, model, m, progress=False)
    assert rep.images_added == 19 and not rep.failures
    queries = m.select(role="query")[::4]
    res = match_manifest(g, model, m, rows=queries, progress=False)
    acc = res.accuracy()
    assert acc["labelled"] == len(queries)
    assert acc["top1"] > 0.35  # within each row's 10 candidates; chance is 0.10


def test_enrolment_views_give_one_vector_per_photo_and_view(tmp_path, tiny_catalog, tiny_model):
    """``views=["whole", "crop:0.6"]``: each photo is also enrolled as the zoomed view queries use; stored in the
    gallery, so later enrolments use the same views; re-enrolling adds nothing."""
    from recognizer.data.imageio import load_image
    from recognizer.matching.options import parse_view
    from recognizer.models.embed import embed_arrays

    model_dir = tiny_model.save(tmp_path / "model")
    g, model = open_or_create_gallery(tmp_path / "g", str(model_dir))
    m = load_manifest(tiny_catalog)
    rows = m.select(role="gallery")
    with pytest.raises(ValueError, match="views are whole, crop:ZOOM"):
        enroll_manifest(g, model, m, rows, progress=False, num_workers=0, views=["whole", "zoom:2"])
    assert len(g) == 0  # a bad view name fails before anything is stored
    g.update_settings({"enroll_views": ["whole", "crop:0.6"]})
    rep = enroll_manifest(g, model, m, rows[:3], progress=False, num_workers=0)
    assert rep.images_added == 3 and len(g) == 6 and not rep.duplicates
    img = load_image(m.resolve(rows[0]))
    want = embed_arrays(model, [img] + parse_view("crop:0.6").views(img))
    np.testing.assert_allclose(np.sort(g.vectors_of(rows[0].item_id), axis=0), np.sort(want, axis=0), atol=1e-5)
    again = enroll_manifest(g, model, m, rows[:3], progress=False, num_workers=0)
    assert again.images_added == 0 and len(again.duplicates) == 3 and len(g) == 6
    enroll_files(g, model, [(rows[3].item_id, m.resolve(rows[3]), None)], progress=False, num_workers=0)
    assert len(Gallery.open(g.root).vectors_of(rows[3].item_id)) == 2  # the stored setting was used
