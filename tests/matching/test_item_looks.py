"""What candidate items look like, from their enrolled photos: widths and colours; the colour cue's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from recognizer.gallery import Gallery
from recognizer.matching.cues import colour_affinities, colour_histogram, colour_penalty
from recognizer.matching.item_looks import item_aspects, item_colours, object_aspect, object_mask


def _photo(colour, size=(100, 200), box=(40, 60, 20, 180), ground=255) -> np.ndarray:
    im = np.full((*size, 3), ground, np.uint8)
    y0, y1, x0, x1 = box
    im[y0:y1, x0:x1] = colour
    return im


def _gallery(tmp_path, photos: dict[str, np.ndarray]) -> Gallery:
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, im in photos.items():
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(im).save(paths[-1])
    g = Gallery.create(tmp_path / "g", {"fingerprint": "f", "embedding_dim": 4, "preprocess": {"input_size": 64}})
    g.add(list(photos), np.eye(len(photos), 4, dtype=np.float32), paths=paths)
    return g


def test_item_aspects_come_from_plain_background_photos(tmp_path):
    wide = _photo((200, 30, 30))  # a 160 x 20 object on white
    shelf = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)  # no plain background
    assert object_aspect(wide) == pytest.approx(8.0, rel=0.1) and object_aspect(shelf) is None
    # a bottle fills a turntable photo from top to bottom: 81% of the border is dark (COIL obj13 seen
    # from the front: 84%), and its width still counts (obj13 was read as its 0.31 side view only)
    bottle = np.full((128, 128, 3), 12, np.uint8)
    bottle[:, 40:88] = (230, 230, 240)
    assert object_aspect(bottle) == pytest.approx(48 / 128, rel=0.05)
    a = item_aspects(_gallery(tmp_path, {"a": wide, "b": shelf}), ["a", "b"])  # narrowest and widest: one photo, both 8
    assert a[0] == pytest.approx([8.0, 8.0], rel=0.1) and np.isnan(a[1]).all()


def test_item_colours_are_the_objects_own_not_its_backgrounds(tmp_path):
    box = (20, 80, 40, 160)  # 60 x 120
    red, green = _photo((200, 30, 30), box=box), _photo((30, 200, 30), box=box, ground=0)  # on white and on black
    assert object_mask(red).sum() == pytest.approx(60 * 120, rel=0.1)  # the object, not the photo
    g = _gallery(tmp_path, {"red": red, "green": green})
    (hr,), (hg,) = item_colours(g, ["red", "green"])
    on_red = colour_histogram(_photo((200, 30, 30), box=box, ground=128), object_mask(red))  # the same object on grey
    # the object alone: white or black around it does not count
    assert (np.sqrt(hr) @ np.sqrt(on_red)) > 0.9
    assert (np.sqrt(hr) @ np.sqrt(hg)) < 0.1
    assert hr.max() > 0.9 and colour_histogram(red).argmax() != hr.argmax()  # the whole photo: mostly white
    shelf = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    g2 = _gallery(tmp_path / "shelf", {"shelf": shelf})  # no plain background: its clutter is not the item's colour
    assert item_colours(g2, ["shelf"])[0].shape == item_colours(g, ["missing"])[0].shape == (0, hr.size)  # unknown


def test_the_colour_penalty_lowers_only_the_worse_coloured_of_the_best_items():
    scores = np.array([[0.70, 0.69, 0.2, 0.1], [0.30, 0.31, 0.2, 0.1]], np.float32)  # a lookalike pair; a hand
    hists = np.eye(4, dtype=np.float32)  # four colours, one per item
    aff = colour_affinities(np.array([[0.0, 1.0, 0, 0], [0.25, 0.25, 0.25, 0.25]]), list(hists[:, None, :]))
    out = colour_penalty(scores, aff, 0.5, top_k=3)
    assert out[0, 1] == pytest.approx(0.69) and out[0, 0] == pytest.approx(0.20)  # the right colour keeps its score
    assert out[0, 3] == pytest.approx(0.1)  # outside the top 3: left alone
    assert out[1].max() <= scores[1].max() and np.allclose(out[1, :3], scores[1, :3])  # no colour stands out: as before
    unknown = aff.copy()
    unknown[:, 0] = np.nan  # an item without photos: its colour is unknown, it is not lowered
    assert colour_penalty(scores, unknown, 0.5, top_k=3)[0, 0] == pytest.approx(0.70)
    assert np.array_equal(colour_penalty(scores, aff, 0.0), scores)



def test_an_items_colours_are_read_as_under_the_light_the_table_was_learnt_in():
    from recognizer.matching.camera import CameraConfig, crop, relit
    from recognizer.matching.proposals import Proposer

    rng = np.random.default_rng(0)
    table = np.clip(rng.normal(120, 3, (200, 360, 3)), 0, 255).astype(np.uint8)
    item = table.copy()
    item[60:150, 100:160] = (230, 230, 225)  # a white carton
    item[90:120, 110:150] = (40, 160, 220)  # its label
    prop = Proposer(CameraConfig(warmup_frames=5))
    for _ in range(5):
        prop(table)
    box = (100, 60, 60, 90)
    for _ in range(2):  # the item put down: found, and left out of the light's measure
        prop(item)
    assert prop.light(box) == pytest.approx(1.0, abs=0.05)
    dimmed = (item * 0.5).astype(np.uint8)  # the light dims to half
    prop(dimmed)
    assert prop.light(box) == pytest.approx(0.5, abs=0.05)
    own = np.sqrt(colour_histogram(crop(item, box, 0.0)))
    as_seen = own @ np.sqrt(colour_histogram(crop(dimmed, box, 0.0)))
    restored = own @ np.sqrt(colour_histogram(relit(crop(dimmed, box, 0.0), prop.light(box))))
    assert as_seen < 0.6 and restored > 0.95, (as_seen, restored)
