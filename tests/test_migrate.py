"""Re-embedding a gallery with another model: kept photos, the atomic switch, missing photos, kill -9."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from recognizer.data.manifest import load_manifest
from recognizer.enroll import enroll_manifest
from recognizer.gallery import (
    Gallery,
    GalleryModelMismatchError,
    GallerySupersededError,
    MissingImagesError,
    versions,
)
from recognizer.matching.pipeline import match_images
from recognizer.migrate import reembed
from recognizer.session import load_gallery_model, open_or_create_gallery


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    """Two tiny models with different fingerprints, saved as folders the tool can load."""
    import torch

    from recognizer.models.model import build_model

    d = tmp_path_factory.mktemp("models")
    a = tiny_model.save(d / "a")
    torch.manual_seed(1)
    b = build_model({"backbone": "lite0", "input_size": 48}, pretrained=False).eval().save(d / "b")
    return str(a), str(b)


def _catalog(tmp_path: Path, tiny_catalog: Path) -> Path:
    """A private copy of the tiny catalog (its files may be deleted) and its manifest."""
    shutil.copytree(tiny_catalog.parent, tmp_path / "cat")
    return tmp_path / "cat" / tiny_catalog.name


def _gallery(root: Path, manifest: Path, spec: str, store_images: str | None = None) -> Gallery:
    g, model = open_or_create_gallery(root, spec)
    if store_images:
        g.update_settings({"store_images": store_images})
    m = load_manifest(manifest)
    enroll_manifest(g, model, m, m.select(role="gallery"), progress=False, num_workers=0)
    return g


def _content(g: Gallery) -> set[tuple[str, str]]:
    return {(r["item_id"], r["sha256"]) for r in g.records()}


def test_enrolment_keeps_each_photo_once_by_its_hash(tmp_path, tiny_catalog, models):
    manifest = _catalog(tmp_path, tiny_catalog)
    g = _gallery(tmp_path / "g", manifest, models[0])
    recs = g.records()
    assert recs and all(Path(r["path"]).is_relative_to(tmp_path / "g" / "images") for r in recs)
    for r in recs:  # the original bytes, named by their SHA-256, and the source remembered
        data = Path(r["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"][:64] == Path(r["path"]).stem
        assert Path(r["source"]).read_bytes() == data and g.images.path(r["sha256"]) == Path(r["path"])
    files = sorted((tmp_path / "g" / "images").rglob("*.*"))
    assert len(files) == len({r["sha256"][:64] for r in recs})  # two views of a photo share its copy
    # thumbnails only: the source path is read, a small JPEG is kept
    t = _gallery(tmp_path / "t", manifest, models[0], store_images="thumbnails")
    for r in t.records():
        assert r["path"] == r["source"] and t.images.path(r["sha256"]) is None
        with Image.open(t.images.thumbnail(r["sha256"])) as im:
            assert max(im.size) <= 256


def test_reembed_moves_the_gallery_to_another_model(tmp_path, tiny_catalog, models):
    manifest = _catalog(tmp_path, tiny_catalog)
    g = _gallery(tmp_path / "g", manifest, models[0])
    g.set_item(g.item_ids[0], name="First item", attributes={"shelf": 4})
    g.set_threshold(0.42, 0.03)
    before, fp_a, methods = _content(g), g.fingerprint, g.features.methods()
    shutil.rmtree(manifest.parent / "catalog")  # the sources are gone: the kept copies are all there is
    from recognizer.models.model import load_model

    model_b = load_model(models[1])
    rep = reembed(tmp_path / "g", model_b, model_spec=models[1], calibrate=False, progress=False, num_workers=0)
    assert (rep.old_version, rep.new_version) == (".", "v2") and rep.photos == len(g.item_ids)
    n = Gallery.open(tmp_path / "g")
    n.verify()
    assert n.fingerprint == model_b.fingerprint != fp_a and _content(n) == before
    assert n.items()[0].name == "First item" and n.items()[0].attributes == {"shelf": 4}
    assert (n.threshold, n.margin) == (0.42, 0.03) and n.settings["enroll_views"] == g.settings["enroll_views"]
    assert sorted(n.features.methods()) == sorted(methods) and versions.active_name(tmp_path / "g") == "v2"
    # the new model matches the kept photos to their own items; the old model is refused
    recs = [r for r in n.records() if "#" not in r["sha256"]]
    ms = match_images(n, load_gallery_model(n), [r["path"] for r in recs], k=1)
    assert [m.item_id for m in ms] == [r["item_id"] for r in recs]
    with pytest.raises(GalleryModelMismatchError):
        load_gallery_model(n, models[0])
    # a process still holding the old version reads it as it was, but may not write to it
    assert g.fingerprint == fp_a and len(g.search(np.ones((1, g.embedding_dim), np.float32)))
    with pytest.raises(GallerySupersededError, match="re-embedded"):
        g.add(["x"], np.ones((1, g.embedding_dim), np.float32))
    _service_works_on(tmp_path / "g", Path(recs[0]["path"]), recs[0]["item_id"])
    before = _content(Gallery.open(tmp_path / "g"))  # with the item the service enrolled
    # and back again: version 3 is active, version 2 kept, version 1's files gone from the folder
    reembed(tmp_path / "g", load_model(models[0]), model_spec=models[0], calibrate=False, progress=False, num_workers=0)
    back = Gallery.open(tmp_path / "g")
    assert back.fingerprint == fp_a and _content(back) == before
    assert set(versions.listing(tmp_path / "g")) == {"v2", "v3"} and not (tmp_path / "g" / "gallery.sqlite").exists()


def _service_works_on(root: Path, photo: Path, item: str) -> None:
    """The service opens the re-embedded gallery (its model, the kept photos) and enrols into the new version."""
    from recognizer.data.imageio import load_image
    from recognizer.service.config import ServiceConfig
    from recognizer.service.core import Service

    svc = Service(ServiceConfig(gallery=root))
    try:
        assert svc.model.fingerprint == Gallery.open(root).fingerprint
        assert svc.photo(item, None, 64)[:2] == b"\xff\xd8"  # a JPEG thumbnail of the kept copy
        assert svc.match([load_image(photo)], None, 1, False).result(timeout=120)[0]["item_id"] == item
        flipped = load_image(photo)[:, ::-1].copy()
        data = io.BytesIO()
        Image.fromarray(flipped).save(data, "PNG")
        assert svc.enrol("new-item", [("new.png", data.getvalue())])["created"]
    finally:
        svc.close()
    assert "new-item" in Gallery.open(root)


def test_a_missing_source_photo_is_named_and_nothing_changes(tmp_path, tiny_catalog, models):
    manifest = _catalog(tmp_path, tiny_catalog)
    g = _gallery(tmp_path / "g", manifest, models[0], store_images="thumbnails")
    gone = Path(g.records()[2]["source"])
    gone.unlink()
    from recognizer.models.model import load_model

    with pytest.raises(MissingImagesError, match=str(gone)):
        reembed(tmp_path / "g", load_model(models[1]), model_spec=models[1], calibrate=False, progress=False)
    assert not (tmp_path / "g" / versions.POINTER).exists() and versions.listing(tmp_path / "g") == {".": 1}
    again = Gallery.open(tmp_path / "g")
    again.verify()
    assert again.fingerprint == g.fingerprint and _content(again) == _content(g)
    out = subprocess.run([sys.executable, "tools/enroll.py", "--gallery", str(tmp_path / "g"), "--reembed",
                          "--model", models[1], "--no-progress"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and str(gone) in out.stderr and "Nothing was changed" in out.stderr


def test_kill_9_during_a_reembed_leaves_a_whole_gallery(tmp_path, tiny_catalog, models):
    """The tool killed at random moments: each time the gallery opens, verifies, and is all old or all new."""
    kills = int(os.environ.get("MIGRATE_KILLS", "4"))
    manifest = _catalog(tmp_path, tiny_catalog)
    root = tmp_path / "g"
    g = _gallery(root, manifest, models[0])
    content = _content(g)
    fps = {}
    from recognizer.models.model import load_model

    for spec in models:
        fps[load_model(spec).fingerprint] = spec
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(kills):
        target = next(s for f, s in fps.items() if f != Gallery.open(root).fingerprint)
        p = subprocess.Popen([sys.executable, "tools/enroll.py", "--gallery", str(root), "--reembed", "--model", target,
                              "--no-progress", "--no-calibrate", "--workers", "0"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(float(rng.uniform(2.0, 12.0)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        after = Gallery.open(root)
        after.verify()
        assert after.fingerprint in fps and _content(after) == content
        seen.add(versions.active_name(root))
    # a run left alone finishes, whatever the kills left behind
    target = next(s for f, s in fps.items() if f != Gallery.open(root).fingerprint)
    out = subprocess.run([sys.executable, "tools/enroll.py", "--gallery", str(root), "--reembed", "--model", target,
                          "--no-progress", "--no-calibrate", "--workers", "0"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    final = Gallery.open(root)
    assert fps[final.fingerprint] == target and _content(final) == content
    assert len(versions.listing(root)) <= 2  # the active version and the one it replaced
