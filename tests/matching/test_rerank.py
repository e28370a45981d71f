from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

from recognizer.data.imageio import load_image
from recognizer.data.manifest import load_manifest
from recognizer.data.synthetic import catalog_image, generate_covers, render_item
from recognizer.enroll import enroll_manifest
from recognizer.gallery import Gallery
from recognizer.matching.batch import match_manifest
from recognizer.matching.rerank import RerankConfig, count_inliers, extract, rerank_scores
from recognizer.session import open_or_create_gallery


def _warp(img, seed):
    h, w = img.shape[:2]
    rng = np.random.default_rng(seed)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-0.15, 0.15, (4, 2)).astype(np.float32) * w
    return cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=(90, 90, 90))


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_same_cover_at_an_angle_verifies_a_different_one_does_not(method):
    cfg = RerankConfig(method=method)
    a = catalog_image(render_item(1, shape="box"), 320)
    b = catalog_image(render_item(2, shape="box"), 320)
    fa, fb = extract(a, method), extract(b, method)
    fq = extract(_warp(a, 0), method)
    same, other = count_inliers(fq, fa, method, cfg), count_inliers(fq, fb, method, cfg)
    assert same >= cfg.min_inliers > other, (same, other)
    final, inl, cut = rerank_scores(["b", "a"], np.array([0.9, 0.8]), fq, {"a": [fa], "b": [fb]}, cfg)
    assert final[1] > final[0] and inl["a"] == same and not cut  # verification overrides the embedding


def test_blank_images_have_no_features():
    assert (
        count_inliers(
            extract(np.zeros((64, 64, 3), np.uint8)),
            extract(np.zeros((64, 64, 3), np.uint8)),
            "sift",
            RerankConfig(),
        )
        == 0
    )


def test_time_budget_stops_verification():
    cfg = RerankConfig(method="orb", budget_ms=0.0)
    f = extract(catalog_image(render_item(1, shape="box"), 256), "orb")
    final, inl, cut = rerank_scores(["a", "b"], np.array([0.5, 0.4]), f, {"a": [f], "b": [f]}, cfg)
    assert cut and inl == {} and final.tolist() == pytest.approx([0.5, 0.4])


@pytest.fixture(scope="module")
def covers(tmp_path_factory):
    d = tmp_path_factory.mktemp("covers")
    m = load_manifest(generate_covers(d, n_items=8, n_queries=1, size=256))
    return d, m


def test_features_are_stored_at_enrollment_and_removed_with_the_item(tmp_path, covers, tiny_model):
    d, m = covers
    g, model = open_or_create_gallery(tmp_path / "g", str(tiny_model.save(tmp_path / "model")))
    enroll_manifest(g, model, m, progress=False, num_workers=0, local_features="orb")
    feats = g.features.read(["cover0000", "cover0001"], "orb")
    assert all(len(v) == 1 and v[0][0].shape[1] == 2 and len(v[0][1]) > 20 for v in feats.values())
    assert g.features.missing("orb") == [] and len(g.features.missing("sift")) == 8
    g.remove_item("cover0000")
    assert Gallery.open(g.root).features.read(["cover0000"], "orb") == {"cover0000": []}


def test_match_with_rerank_beats_the_embedding_on_covers(tmp_path, covers, tiny_model):
    """With random-weight embeddings the covers are near chance; ORB verification recovers them."""
    d, m = covers
    g, model = open_or_create_gallery(tmp_path / "g", str(tiny_model.save(tmp_path / "model")))
    enroll_manifest(g, model, m, progress=False, num_workers=0, local_features="orb")
    base = match_manifest(g, model, m, progress=False, num_workers=0)
    rr = match_manifest(g, model, m, progress=False, num_workers=0, rerank=RerankConfig(method="orb"))
    acc = lambda rep: np.mean([mm.item_id == r.item_id for r, mm in zip(rep.rows, rep.matches, strict=True)])  # noqa: E731
    assert acc(rr) >= 0.75 and acc(rr) > acc(base)
    assert rr.seconds_rerank > 0


def test_tools_take_the_query_and_rerank_flags(tmp_path, covers, tiny_model):
    d, m = covers
    model_dir = tiny_model.save(tmp_path / "model")
    gal = tmp_path / "g"

    def run(*a):
        return subprocess.run([sys.executable, *a], cwd=ROOT, capture_output=True, text=True, timeout=600)  # noqa: E731

    r = run(
        "tools/enroll.py",
        "--gallery",
        str(gal),
        "--manifest",
        str(d / "manifest.csv"),
        "--model",
        str(model_dir),
        "--no-progress",
        "--workers",
        "0",
    )
    assert r.returncode == 0, r.stderr
    r = run(
        "tools/enroll.py",
        "--gallery",
        str(gal),
        "--item",
        "cover0000",
        "--images",
        str(d / "scans" / "cover0000.png"),
        "--local-features",
        "orb",
        "--no-progress",
    )
    assert r.returncode == 0 and "orb features stored for 8 earlier image(s)" in r.stdout, r.stdout + r.stderr
    r = run("tools/match.py", "--gallery", str(gal), "--manifest", str(d / "manifest.csv"), "--out", str(tmp_path / "p.csv"),
            "--rerank", "orb", "--aspect", "crop", "--zoom", "0.8", "--multicrop", "grid", "--crop-pool", "max", "--no-progress", "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 9
    r = run("tools/report.py", "--gallery", str(gal), "--manifest", str(d / "manifest.csv"), "--out", str(tmp_path / "rep"),
            "--rerank", "orb", "--multicrop", "grid", "--no-progress", "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert load_image(d / "photos" / "cover0000_00.jpg").shape == (256, 256, 3)
