"""Proposals on a table: the background follows light, shadows and pans; touching items are separated."""

from __future__ import annotations

import cv2
import numpy as np

from recognizer.data.backgrounds import load_backgrounds
from recognizer.matching.proposals import (
    Blob,
    TableBackground,
    blobs_from_mask,
    column_height,
    select_boxes,
    split_boxes,
    window_boxes,
)


def _table(seed: int = 0) -> np.ndarray:
    bg = cv2.resize(load_backgrounds(["coffee"])[0], (360, 200), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    return np.clip(bg + rng.normal(0, 2, bg.shape), 0, 255).astype(np.uint8)


def _learnt(frames: int = 10) -> tuple[TableBackground, np.ndarray]:
    bgm = TableBackground(warmup=frames)
    for i in range(frames):
        bgm.apply(_table(i), [])
    return bgm, _table(99)


def test_dimming_to_half_and_a_shadow_make_no_objects_but_an_item_does():
    bgm, table = _learnt()
    for light in (0.8, 0.6, 0.5, 0.6, 0.8, 1.0):
        mask, shift = bgm.apply((table * light).astype(np.uint8), [])
        assert (mask > 0).mean() < 0.005, light
        assert shift == (0.0, 0.0)
    shade = np.ones(table.shape[:2], np.float32)
    cv2.circle(shade, (180, 100), 40, 0.65, -1)
    shade = cv2.GaussianBlur(shade, (0, 0), 5)
    mask, _ = bgm.apply((table * shade[:, :, None]).astype(np.uint8), [])
    assert (mask > 0).mean() < 0.005  # a soft shadow keeps the table's colour
    item = table.copy()
    cv2.rectangle(item, (100, 60), (160, 150), (40, 160, 220), -1)
    mask, _ = bgm.apply(item, [])
    blobs = blobs_from_mask(mask, bgm.scale, 0.01, 8)
    assert len(blobs) == 1
    x, y, w, h = blobs[0][0]
    assert abs(x - 100) <= 6 and abs(y - 60) <= 6 and abs(w - 60) <= 10 and abs(h - 90) <= 10


def test_a_camera_pan_moves_the_background_instead_of_making_objects():
    big = cv2.resize(load_backgrounds(["coffee"])[0], (400, 200), interpolation=cv2.INTER_AREA)
    bgm = TableBackground(warmup=5)
    for _ in range(5):
        bgm.apply(big[:, :360].copy(), [])
    total = 0.0
    for ox in range(4, 40, 4):  # 36 px = 10% of the width, 4 px a frame
        mask, (dx, _) = bgm.apply(big[:, ox : ox + 360].copy(), [])
        total += dx
        assert (mask > 0).mean() < 0.01, ox
    assert abs(total + 36) < 4  # the view moved right: the table moved left in the frame


def test_windows_pick_one_tight_window_per_touching_item():
    # a blob of three touching items: windows over each, a wide one over all, two straddling ones
    wins = [(0, 0, 300, 100), (0, 0, 100, 100), (100, 0, 100, 100), (200, 0, 100, 100), (50, 0, 100, 100),
            (150, 0, 100, 100)]  # fmt: skip
    s = np.full((len(wins), 4), 0.3, np.float32)
    s[0, 0] = 0.85  # the whole blob looks most like item 0
    s[1, 0], s[2, 1], s[3, 2] = 0.8, 0.75, 0.78
    s[4, 0], s[5, 1] = 0.77, 0.72  # straddling windows half-see an item
    picked, rest = select_boxes(Blob(wins[0], wins), s, accept=0.6)
    assert picked == [1, 2, 3] and rest == []


def test_windows_fit_the_items_when_an_item_lowered_from_above_makes_the_blob_tall():
    # mask at scale 0.5: three 30 x 60 items side by side, and a 40-wide item being lowered onto the middle one
    sub = np.zeros((110, 90), np.uint8)
    sub[50:110, :] = 1
    sub[0:50, 30:70] = 1
    box = (0, 0, 180, 220)  # frame coordinates: the blob is 220 px tall, its items 120
    assert column_height(sub) == 60
    tall = window_boxes(box, sub, 0.5, (0.45, 0.7, 1.0), 0.34, 6, tall=None)
    fitted = window_boxes(box, sub, 0.5, (0.45, 0.7, 1.0), 0.34, 6)
    assert min(w[2] for w in tall[1:]) == 99  # 0.45 x 220: no window holds one 60 px item
    assert sorted({w[2] for w in fitted[1:]}) == [54, 84, 120]  # 0.45, 0.7 and 1.0 x 120
    # a blob as tall as its items keeps the box's height: no narrower windows (seams) than before
    flat = np.ones((60, 90), np.uint8)
    flat[:6, 40:50] = 0  # a slightly shorter item: median column height 60 (under 0.8 x 60 it is not)
    assert window_boxes((0, 0, 180, 120), flat, 0.5, (0.45, 0.7), 0.34, 6) == window_boxes(
        (0, 0, 180, 120), flat, 0.5, (0.45, 0.7), 0.34, 6, tall=None
    )


def test_a_lone_item_is_not_cut_by_a_half_that_resembles_a_distractor():
    # one item 150 x 100: its blob names it best; narrow windows on its halves look a little like items 1 and 2
    wins = [(0, 0, 150, 100), (0, 0, 70, 100), (40, 0, 70, 100), (80, 0, 70, 100)]
    s = np.full((4, 3), 0.3, np.float32)
    s[0, 0], s[1, 0], s[2, 2], s[3, 1] = 0.72, 0.68, 0.61, 0.6
    assert select_boxes(Blob(wins[0], wins), s, accept=0.5)[0] == [1, 2, 3]  # without the items' widths: two phantoms
    aspects = np.array([1.5, 0.7, 0.7], np.float32)  # item 0 is as wide as the blob
    assert select_boxes(Blob(wins[0], wins), s, accept=0.5, aspects=aspects) == ([0], [])
    # a blob far wider than the item its whole box names holds several items: windows separate them
    assert select_boxes(Blob(wins[0], wins), s, accept=0.5, aspects=np.array([0.7, 0.7, 0.7]))[0] == [1, 2, 3]
    # an item of unknown width (shelf photos only) is separated as before
    assert select_boxes(Blob(wins[0], wins), s, accept=0.5, aspects=np.full(3, np.nan))[0] == [1, 2, 3]


def test_a_part_that_matches_no_candidate_is_left_over_as_unknown():
    wins = [(0, 0, 300, 100), (0, 0, 100, 100), (100, 0, 100, 100), (200, 0, 100, 100)]
    s = np.full((4, 3), 0.3, np.float32)
    s[1, 0], s[2, 1] = 0.8, 0.75  # a hand over the right third matches nothing
    picked, rest = select_boxes(Blob(wins[0], wins), s, accept=0.6)
    assert picked == [1, 2] and rest == [(200, 0, 100, 100)]
    picked, rest = select_boxes(Blob(wins[0], wins), np.full((4, 3), 0.3, np.float32), accept=0.6)
    assert picked == [] and rest == [(0, 0, 300, 100)]


def test_one_name_is_never_given_to_two_overlapping_windows():
    wins = [(0, 0, 200, 100), (0, 0, 110, 100), (90, 0, 110, 100)]
    s = np.array([[0.5, 0.5], [0.8, 0.3], [0.79, 0.7]], np.float32)
    picked, _ = select_boxes(Blob(wins[0], wins), s, accept=0.6)
    assert picked == [1]  # the second window's best name is taken by its overlapping neighbour


def test_mask_split_separates_two_touching_discs():
    m = np.zeros((60, 120), np.uint8)
    cv2.circle(m, (32, 30), 26, 1, -1)
    cv2.circle(m, (84, 30), 26, 1, -1)
    boxes = split_boxes((0, 0, 240, 120), m, 0.5)
    assert len(boxes) == 3  # the whole blob, then its two parts
    parts = sorted(boxes[1:])
    assert parts[0][0] < 20 and 130 < parts[1][0] + parts[1][2] // 2 < 200
    s = np.array([[0.6], [0.8], [0.8]], np.float32)
    assert select_boxes(Blob(boxes[0], boxes, "split"), s, 0.5)[0] == [1, 2]
    assert select_boxes(Blob(boxes[0], boxes, "split"), np.array([[0.9], [0.7], [0.7]]), 0.5)[0] == [0]



def test_a_window_far_wider_than_the_item_it_names_is_not_picked():
    # a blob of 300 x 100: one window on the item (60 wide, its aspect 0.6), one taking in a hand too (150 wide)
    wins = [(0, 0, 300, 100), (10, 0, 60, 100), (10, 0, 150, 100)]
    s = np.array([[0.0, 0.0], [0.7, 0.2], [0.8, 0.2]], np.float32)
    aspects = np.array([0.6, np.nan], np.float32)
    assert select_boxes(Blob(wins[0], wins), s, 0.5, aspects=aspects, aspect_slack=None)[0] == [2]
    assert select_boxes(Blob(wins[0], wins), s, 0.5, aspects=aspects, aspect_slack=None, shape_slack=1.5)[0] == [1]
    s2 = s[:, ::-1].copy()  # named after an item of unknown width: no judgement of width
    assert select_boxes(Blob(wins[0], wins), s2, 0.5, aspects=aspects, aspect_slack=None, shape_slack=1.5)[0] == [2]


def test_two_halves_of_one_item_are_not_two_items():
    # a mug (aspect 1.0) 120 wide in a blob with a vase (aspect 0.6) on its left: the mug's left
    # half names the mug, its right half a distractor (0.68) it scores the mug at almost as well
    wins = [(0, 0, 180, 120), (0, 0, 60, 120), (60, 0, 70, 120), (120, 0, 60, 120), (60, 0, 120, 120)]
    s = np.array([[0.0, 0.0, 0.0], [0.7, 0.3, 0.3], [0.3, 0.62, 0.4], [0.3, 0.66, 0.68], [0.3, 0.8, 0.5]], np.float32)
    aspects = np.array([0.6, 1.0, 0.5], np.float32)  # vase, mug, distractor
    keep = np.array([0.0, 0.1, 0.1, 0.1, 0.0], np.float32)  # last frame: vase, both halves

    def pick(**kw):
        return select_boxes(Blob(wins[0], wins), s, 0.5, aspects=aspects, aspect_slack=1.25, keep=keep, **kw)[0]

    assert pick(part_margin=None) == [1, 2, 3]  # the distractor on the mug's right half
    assert pick(part_margin=0.03) == [1, 4]  # vase and the whole mug
    s[3, 1] = 0.5  # the right half looks far less like the mug than like the distractor: an item of its own
    assert pick(part_margin=0.03) == [1, 2, 3]
    s[3, 1], aspects[1] = 0.66, 0.5  # a narrow mug: the two halves together are wider than it, two items
    assert pick(part_margin=0.03) == [1, 2, 3]


def test_last_frames_items_stay_picked_unless_clearly_beaten():
    wins = [(0, 0, 200, 100), (0, 0, 100, 100), (0, 0, 140, 100)]  # the item's window, and a wider one
    s = np.array([[0.0], [0.70], [0.75]], np.float32)
    assert select_boxes(Blob(wins[0], wins), s, 0.5)[0] == [2]
    keep = np.array([0.0, 0.1, 0.0], np.float32)
    assert select_boxes(Blob(wins[0], wins), s, 0.5, keep=keep)[0] == [1]
    s[2] = 0.9  # clearly better: the keep bonus does not hold it back
    assert select_boxes(Blob(wins[0], wins), s, 0.5, keep=keep)[0] == [2]
    s[1] = 0.4  # below the threshold: no bonus makes it an item
    assert 1 not in select_boxes(Blob(wins[0], wins), s, 0.5, keep=np.array([0.0, 0.5, 0.0]))[0]


def test_a_window_on_the_seam_between_two_items_is_not_a_third_item():
    # two touching 60 px items; a 55 px window on the seam, 38% under each of them, names a distractor
    wins = [(0, 0, 150, 120), (19, 0, 55, 120), (53, 0, 55, 120), (87, 0, 55, 120)]
    s = np.array([[0.0, 0.0, 0.0], [0.75, 0.3, 0.3], [0.3, 0.3, 0.54], [0.3, 0.72, 0.3]], np.float32)
    assert select_boxes(Blob(wins[0], wins), s, 0.5)[0] == [1, 2, 3]  # off: a phantom between them
    assert select_boxes(Blob(wins[0], wins), s, 0.5, seam=0.7)[0] == [1, 3]
    wins[2] = (68, 0, 34, 120)  # a narrow item between them, under them by 6 and 15 px of its 34: an item
    assert select_boxes(Blob(wins[0], wins), s, 0.5, seam=0.7)[0] == [1, 2, 3]
