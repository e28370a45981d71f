"""One recognition path: the same image with the same settings gets the same answer from every tool.

tools/match.py (files on the command line), tools/report.py (its predictions.csv), the camera
(the photo as one full frame) and the Python API all go through ``matching.pipeline.Recognizer``.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

from recognizer.data.imageio import load_image
from recognizer.data.manifest import load_manifest
from recognizer.enroll import enroll_manifest
from recognizer.gallery import Gallery
from recognizer.matching import CameraConfig, CameraMatcher, QueryOptions, match_images

FLAGS = ["--aspect", "crop", "--zoom", "0.6", "--rerank", "none"]
QUERY = QueryOptions(aspect="crop", zoom=0.6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_catalog, tiny_model):
    tmp = tmp_path_factory.mktemp("one_path")
    model_dir = tiny_model.save(tmp / "model")
    m = load_manifest(tiny_catalog)
    g = Gallery.create(tmp / "g", tiny_model.describe(), model_spec=str(model_dir))
    enroll_manifest(g, tiny_model, m, m.select(role="gallery"), progress=False)
    queries = [r for r in m.rows if r.role != "gallery"][:5]
    qman = tmp / "queries.csv"
    qman.write_text("path,item_id,role\n" + "".join(f"{r.path},{r.item_id},query\n" for r in queries))
    return g, tiny_model, [str(m.resolve(r)) for r in queries], (qman, m.data_root), tmp


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def _preds(path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["pred_item_id"], r["score"]) for r in csv.DictReader(f)]


def test_match_report_camera_and_python_agree(setup):
    g, model, images, qman, tmp = setup
    # tools/match.py with files on the command line
    r = _tool("tools/match.py", "--gallery", str(g.root), *images, *FLAGS, "--out", str(tmp / "m.csv"))
    assert r.returncode == 0, r.stderr
    assert all(p.split("/")[-1] in r.stdout for p in images)  # the table names every image
    by_match = _preds(tmp / "m.csv")
    # tools/report.py on a manifest of the same images
    r = _tool("tools/report.py", "--gallery", str(g.root), "--manifest", str(qman[0]), "--data-root", str(qman[1]),
              *FLAGS, "--out", str(tmp / "rep"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    by_report = _preds(tmp / "rep" / "predictions.csv")
    # the Python API
    by_python = [(m.item_id, f"{m.score:.6f}") for m in match_images(g, model, images, query=QUERY)]
    # the camera, each photo one full frame (no padding, so the crop is the photo itself)
    cfg = CameraConfig(proposals="full", pad=0.0, query=QUERY, threshold=-1.0)
    by_camera = []
    for p in images:
        cam = CameraMatcher(g, model, None, cfg)
        cam.process(0, 0.0, cv2.cvtColor(load_image(p), cv2.COLOR_RGB2BGR))
        ((_, label, score),) = cam.labels()
        by_camera.append((label, f"{score:.6f}"))
    assert len(by_match) == len(images)
    assert by_match == by_report == by_python
    assert [i for i, _ in by_camera] == [i for i, _ in by_match]
    np.testing.assert_allclose([float(s) for _, s in by_camera], [float(s) for _, s in by_match], atol=2e-6)


def test_settings_change_the_answer_the_same_way_everywhere(setup):
    """A control: other query settings give other scores, so the agreement above is not vacuous."""
    g, model, images, _, _ = setup
    a = [m.score for m in match_images(g, model, images, query=QUERY)]
    b = [m.score for m in match_images(g, model, images, query=QueryOptions())]
    assert not np.allclose(a, b, atol=1e-4)


def test_tools_read_the_gallerys_query_settings_and_a_flag_overrides_them(setup):
    g, _, images, _, tmp = setup
    base = ["tools/match.py", "--gallery", str(g.root), *images[:3], "--rerank", "none"]
    explicit = _tool(*base, "--aspect", "squash", "--zoom", "1", "--out", str(tmp / "explicit.csv"))
    tool_default = _tool(*base, "--out", str(tmp / "default.csv"))  # crop, zoom 0.6
    assert explicit.returncode == tool_default.returncode == 0
    r = _tool("tools/enroll.py", "--gallery", str(g.root), "--set-photo-query", "aspect=squash,zoom=1.0")
    assert r.returncode == 0 and "'photo_query': {'aspect': 'squash', 'zoom': 1.0}" in r.stdout, r.stdout + r.stderr
    runs = [_tool(*base, "--out", str(tmp / "stored.csv")),
            _tool(*base, "--aspect", "crop", "--zoom", "0.6", "--out", str(tmp / "overridden.csv"))]  # fmt: skip
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert _preds(tmp / "stored.csv") == _preds(tmp / "explicit.csv") != _preds(tmp / "default.csv")
    assert _preds(tmp / "overridden.csv") == _preds(tmp / "default.csv")
    bad = _tool("tools/enroll.py", "--gallery", str(g.root), "--set-photo-query", "zoom=7")
    assert bad.returncode == 2 and "zoom must be in [0.1, 1.0]" in bad.stderr
    bad = _tool("tools/enroll.py", "--gallery", str(g.root), "--set-photo-query", "zooom=0.5")
    assert bad.returncode == 2 and "KEY one of aspect, zoom" in bad.stderr
    stored = Gallery.open(g.root).settings  # the bad settings changed nothing
    assert stored["photo_query"] == {"aspect": "squash", "zoom": 1.0} and set(stored) == {"enroll_views", "photo_query"}
    _tool("tools/enroll.py", "--gallery", str(g.root), "--set-photo-query", "aspect=crop,zoom=0.6")  # as before
