from __future__ import annotations

import hashlib

import numpy as np

from recognizer.data.backgrounds import load_backgrounds
from recognizer.data.manifest import load_manifest
from recognizer.data.synthetic import catalog_image, render_item, wild_photo


def _digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_catalog_is_deterministic(tmp_path):
    from recognizer.data.synthetic import generate_catalog

    a = generate_catalog(tmp_path / "a", n_items=3, n_wild=2, seed=7, size=64)
    b = generate_catalog(tmp_path / "b", n_items=3, n_wild=2, seed=7, size=64)
    assert _digest(a.parent) == _digest(b.parent)
    c = generate_catalog(tmp_path / "c", n_items=3, n_wild=2, seed=8, size=64)
    assert _digest(a.parent) != _digest(c.parent)


def test_manifest_is_valid_and_split_by_item(tiny_catalog):
    m = load_manifest(tiny_catalog, strict=True)
    assert len(m.rows) == 8 * 3
    assert len(m.select(role="gallery")) == 8 and len(m.select(role="query")) == 16
    train = {r.item_id for r in m.select(split="train")}
    test = {r.item_id for r in m.select(split="test")}
    assert train and test and not train & test  # class-disjoint
    assert all(m.resolve(r).is_file() for r in m.rows)


def test_items_differ_and_wild_photos_use_real_backgrounds():
    items = [render_item(i, seed=0, size=64) for i in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert np.abs(items[i].astype(int) - items[j].astype(int)).mean() > 10
    cat = catalog_image(items[0], 64)
    assert (cat[0, 0] == 255).all()  # white catalog background
    bgs = load_backgrounds()
    assert len(bgs) >= 10 and all(b.ndim == 3 and b.shape[2] == 3 for b in bgs)
    photo = wild_photo(items[0], np.random.default_rng(0), bgs, 64)
    assert photo.shape == (64, 64, 3)
    assert not (photo[0, 0] == 255).all()  # the background is a photo, not the white catalog
