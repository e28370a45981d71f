from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from recognizer.data.backgrounds import load_backgrounds
from recognizer.data.synthetic import catalog_image, render_item
from recognizer.train.augment import BackgroundPaste, augment_grid, foreground_mask


def _object_on(bg_value: int) -> np.ndarray:
    img = np.full((100, 100, 3), bg_value, np.uint8)
    img[30:70, 20:80] = (200, 40, 40) if bg_value < 128 else (30, 90, 200)
    return img


@pytest.mark.parametrize("bg", [255, 240, 0, 28])
def test_mask_from_a_plain_background(bg):
    mask = foreground_mask(_object_on(bg))
    assert mask is not None
    assert mask[50, 50] == 255 and mask[5, 5] == 0
    assert abs((mask > 0).mean() - 0.24) < 0.05


def test_no_clean_mask_from_a_cluttered_photo_unless_grabcut():
    photo = load_backgrounds(["astronaut"])[0][:200, :200]
    assert foreground_mask(photo, "auto") is None
    gc = foreground_mask(photo, "grabcut")
    assert gc is None or gc.shape == photo.shape[:2]
    with pytest.raises(ValueError, match="not one of auto, plain, grabcut"):
        foreground_mask(photo, "magic")


def test_background_paste_replaces_the_studio_background(tmp_path):
    item = catalog_image(render_item(0), 128)  # on white
    paste = BackgroundPaste(load_backgrounds(["coffee", "rocket"]), p=1.0, seed=1)
    out = paste(item)
    assert out.shape == item.shape and out.dtype == np.uint8
    corners = np.stack([out[2, 2], out[2, -3], out[-3, 2], out[-3, -3]])
    assert (corners < 245).any()  # no longer a white studio shot
    assert BackgroundPaste(load_backgrounds(["coffee"]), p=0.0)(item) is item
    grid = augment_grid([item, item], paste, tmp_path / "g.png", copies=3, cell=64)
    assert grid.is_file()
    from recognizer.data.imageio import load_image

    assert load_image(grid).shape == (128, 256, 3)


def test_augment_grid_tool(tmp_path, tiny_catalog):
    r = subprocess.run(
        [sys.executable, "tools/augment_grid.py", "--manifest", str(tiny_catalog), "--out", str(tmp_path / "grid.png"),
         "--n", "3", "--copies", "2", "augment.background=1.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "grid.png").is_file()
    r = subprocess.run(
        [sys.executable, "tools/augment_grid.py", "--manifest", str(tiny_catalog), "--out", str(tmp_path / "x.png"), "augment.bg=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown config key 'augment.bg'" in r.stderr
