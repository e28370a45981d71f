"""The scaled synthetic generator: deterministic, varied, and each identity distinct from the others."""

import cv2
import numpy as np

from recognizer.data.identities import FORMS, identity_photo, render_identity

BG = [np.full((64, 64, 3), v, np.uint8) for v in (40, 200)]


def test_render_identity_is_deterministic_rgba():
    a, b = render_identity(7, seed=3, size=96), render_identity(7, seed=3, size=96)
    assert a.shape == (96, 96, 4) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert 0 < (a[:, :, 3] > 0).mean() < 1  # an outline, not the whole square


def test_identities_are_distinct():
    thumbs = [cv2.resize(render_identity(i, seed=1, size=64)[:, :, :3], (16, 16)).astype(np.float32) for i in range(40)]
    x = np.stack([t.ravel() for t in thumbs])
    d = np.abs(x[:, None] - x[None]).mean(-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 5  # no two of 40 identities are near-twins (mean abs pixel difference)


def test_identity_photos_catalog_and_wild():
    rgba = render_identity(2, seed=1, size=64)
    cat = identity_photo(rgba, 2, 0, 1, BG, size=48)
    wild = identity_photo(rgba, 2, 1, 1, BG, size=48)
    assert cat.shape == wild.shape == (48, 48, 3)
    assert (cat[0, 0] > 240).all()  # catalog shot on white
    assert not np.array_equal(wild, identity_photo(rgba, 2, 2, 1, BG, size=48))


def test_forms_all_drawn():
    assert len(FORMS) >= 10
