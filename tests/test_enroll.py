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
    assert "broken.jpg" in text and "cannot decode" in text or "not a recognised" in text
    assert "missing.png" in text and "No such file" in text
    assert "split 'bogus-split'" in text and "duplicate of line 2" in text
    # enrolling again adds nothing: identical images are skipped
    rep2 = enroll_manifest(g, model, load_manifest(tiny_catalog), progress=False, num_workers=0)
    assert rep2.images_added == 0 and len(rep2.duplicates) == 8
    assert len(Gallery.open(g.root)) == 8


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
    res = g.match([str(m.resolve(r)) for r in gal], model=model, k=2)
    assert [x.item_id for x in res] == [r.item_id for r in gal]  # each catalog image finds itself
    arr = np.asarray(Image.open(m.resolve(gal[0])).convert("RGB"))
    assert (
        g.match([arr], model=model, candidates=[gal[0].item_id, gal[1].item_id])[0].item_id == gal[0].item_id
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
    )
    assert out.returncode == 0, out.stderr
    assert "enrolled 1 image(s)" in out.stdout and "skipped 1 identical" in out.stdout
    out = _run("tools/enroll.py", "--gallery", str(gal), "--list")
    assert "item0001\t2\tItem one" in out.stdout
    out = _run("tools/enroll.py", "--gallery", str(gal), "--set-threshold", "0.5", "--set-margin", "0.01")
    assert "threshold 0.5000, margin 0.0100" in out.stdout
    out = _run("tools/enroll.py", "--gallery", str(gal), "--set-score-mode", "probe")
    assert (
        out.returncode == 0 and "score mode probe" in out.stdout
    )  # the matching below scores with the probe
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
        "--no-progress",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 16 and all(r["pred_item_id"] in {"item0000", "item0001", "item0002"} for r in rows)
    out = _run("tools/enroll.py", "--gallery", str(gal), "--remove", "item0001")
    assert "removed item 'item0001' (2 vectors); 7 items left" in out.stdout
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
