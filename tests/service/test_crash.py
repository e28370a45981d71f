"""kill -9 of a real server process during an enrolment: the gallery opens at its last commit, the retry succeeds."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT

from recognizer.data.synthetic import catalog_image
from recognizer.gallery import Gallery
from recognizer.service.loadtest import crash_enrolment
from recognizer.service.security import load_or_create_token

from .conftest import make_gallery, png


def test_kill_9_during_enrolment_then_restart_and_retry(tmp_path, svc_model, items):
    g = tmp_path / "g"
    make_gallery(g, svc_model, items, 3)
    token, _ = load_or_create_token(g / "service.token")
    photos = []
    for k in range(12):
        p = tmp_path / f"p{k}.png"
        p.write_bytes(png(catalog_image(items[f"item{3 + k % 3:04d}"], 120 + 4 * k)))
        photos.append(p)
    res = crash_enrolment(ROOT / "tools" / "serve.py", g, token, photos, kill_after=None, log=tmp_path / "server.log")
    assert res["first_request"] != 201, res  # killed while enrolling: the client lost its connection
    assert res["after_kill"]["vectors"] in (res["before"]["vectors"], res["final"]["vectors"])  # all or nothing
    assert res["retry"]["status"] == 201
    assert res["final"]["vectors"] == res["before"]["vectors"] + 12 * len(Gallery.open(g).settings.get("enroll_views", ["whole"]))
    assert "crash-item" in Gallery.open(g).item_ids
    assert Path(g / "service.token").exists()
