"""The window pool: a frame embeds last frame's items and a few more windows, not every window."""

import cv2
import numpy as np

from recognizer.matching.proposals import Blob
from recognizer.matching.window_pool import WindowPool, blob_shift, half, thumb


def _wins(x: int, y: int = 50, n: int = 8, w: int = 60) -> list:
    """A blob of 300 x 100 at (x, y): the whole blob, then ``n`` windows along it."""
    return [(x, y, 300, 100)] + [(x + 30 * k, y, w, 100) for k in range(n)]


def _frame(pool: WindowPool, blobs: list[Blob], pick: list[list[int]] | None = None):
    """One frame: plan, 'embed' (scores = 1), commit the picks (indices into each blob's plan)."""
    plan = pool.plan(blobs)
    todo = [e for es in plan for e in es if e.scores is None]
    for e in todo:
        e.scores = np.ones(2, np.float32)
    pool.commit(blobs, plan, pick if pick is not None else [[] for _ in blobs])
    return plan, todo


def test_a_new_blob_has_every_window_scored_at_once():
    pool = WindowPool(max_age=5, budget=3)
    plan, todo = _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
    assert len(todo) == 9 and [e.box for e in plan[0]] == _wins(100)


def test_a_moving_blob_reembeds_its_items_and_a_few_more_windows_moved_with_it():
    pool = WindowPool(max_age=5, budget=4)
    plan, _ = _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
    picks = [i for i, e in enumerate(plan[0]) if e.box in [(100, 50, 60, 100), (220, 50, 60, 100)]]
    pool.commit([Blob((100, 50, 300, 100))], plan, [picks])
    plan, todo = _frame(pool, [Blob((110, 50, 300, 100), _wins(110))])  # slid 10 px right
    assert {(110, 50, 60, 100), (230, 50, 60, 100)} <= {e.box for e in todo}  # the items, afresh, where they moved
    assert len(todo) == 4  # and two windows over parts no item covers: the budget
    carried = [e for e in plan[0] if e not in todo]
    assert len(carried) >= 5 and all(e.age == 1 and e.scores is not None for e in carried)  # moved, scores kept
    assert (170, 50, 60, 100) in {e.box for e in carried}  # was (160, 50, 60, 100)


def test_every_window_is_scored_again_within_max_age_frames():
    pool = WindowPool(max_age=4, budget=3)
    plan, _ = _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
    last = {e.box: 0 for e in plan[0]}
    for f in range(1, 13):
        plan, todo = _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
        assert len(todo) <= 3
        for e in todo:
            last[e.box] = f
        assert all(e.age < 4 for e in plan[0])  # nothing older than max_age is used
    assert all(f - v <= 4 for v in last.values() for f in [12])


def test_a_blob_that_grew_on_one_side_keeps_its_windows_in_place_and_explores_the_new_part():
    assert blob_shift((100, 50, 300, 100), (100, 50, 400, 100)) == (0, 0)  # a hand joined on the right
    assert blob_shift((100, 50, 300, 100), (110, 52, 300, 100)) == (10, 2)
    pool = WindowPool(max_age=5, budget=4)
    plan, _ = _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
    pool.commit([Blob((100, 50, 300, 100))], plan, [[1]])  # (100, 50, 60, 100) is an item
    grown = _wins(100) + [(340, 50, 60, 100), (370, 50, 60, 100)]
    plan, todo = _frame(pool, [Blob((100, 50, 400, 100), grown)])
    assert (100, 50, 60, 100) in {e.box for e in plan[0]}  # did not move
    assert not any(e.anchor for e in plan[0])  # a grown blob: last frame's items are windows like the others
    assert {(340, 50, 60, 100), (370, 50, 60, 100)} <= {e.box for e in todo}  # the part no item covered: first


def test_the_camera_moving_moves_the_pool():
    pool = WindowPool(max_age=5, budget=2)
    _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
    pool.shift(-20, 0)
    plan, todo = _frame(pool, [Blob((80, 50, 300, 100), _wins(80))])
    assert len(todo) == 2  # no new search of the blob: its windows moved with the camera, two re-scored
    assert {e.box for e in plan[0]} == set(_wins(80))


def test_with_burst_a_blob_that_changed_size_has_its_stale_windows_scored_at_once():
    grown = _wins(100) + [(340, 50, 60, 100), (370, 50, 60, 100)]
    for burst, most in ((False, 3), (True, None)):
        pool = WindowPool(max_age=5, budget=3, burst=burst)
        _frame(pool, [Blob((100, 50, 300, 100), _wins(100))])
        plan, todo = _frame(pool, [Blob((100, 50, 400, 100), grown)])  # a hand joined: 100 px wider
        if most:
            assert len(todo) == most
        else:  # every window over the part no item covers, whatever the budget
            assert len(todo) > 3 and {(340, 50, 60, 100), (370, 50, 60, 100)} <= {e.box for e in todo}


def test_a_crop_budget_under_one_is_refused():
    import pytest

    from recognizer.matching.camera import CameraConfig

    with pytest.raises(ValueError, match="crop_budget"):
        CameraConfig(crop_budget=0)


def test_with_anchor_every_3_each_item_is_embedded_every_third_frame_the_stalest_first():
    pool = WindowPool(max_age=5, budget=1, explore=0, anchor_every=3)
    blob = Blob((100, 50, 300, 100), _wins(100))
    items = [(100, 50, 60, 100), (190, 50, 60, 100), (280, 50, 60, 100)]
    plan, _ = _frame(pool, [blob])
    pool.commit([blob], plan, [[i for i, e in enumerate(plan[0]) if e.box in items]])
    seen = []
    for _ in range(6):
        plan = pool.plan([blob])
        todo = [e for e in plan[0] if e.scores is None]
        assert len(todo) == 1 and todo[0].box in items  # one item a frame, not all three
        seen.append(todo[0].box)
        for e in todo:
            e.scores = np.ones(2, np.float32)
        pool.commit([blob], plan, [[i for i, e in enumerate(plan[0]) if e.box in items]])
    assert sorted(seen[:3]) == sorted(items) and seen[3:] == seen[:3]  # round robin


def test_a_window_a_hand_came_over_is_stale_an_item_embedded_again_now_another_dropped():
    table = np.random.default_rng(0).integers(0, 255, (200, 500), dtype=np.uint8)
    items = [(x, 50, 60, 100) for x in (100, 160, 220, 280)]  # four touching items: each embedded every 4th frame

    def frames(change):
        pool = WindowPool(max_age=5, budget=4, anchor_every=4, change=change)
        blob = [Blob((100, 50, 300, 100), _wins(100))]
        plan = pool.plan(blob, lambda b: thumb(table, b))
        for e in plan[0]:
            e.scores, e.sig = np.ones(2, np.float32), thumb(table, e.box)
        picks = [[i for i, e in enumerate(plan[0]) if e.box in items]]
        pool.commit(blob, plan, picks)
        dim = (table * 0.5).astype(np.uint8)  # the light dims to half: nothing is stale, nothing dropped
        plan = pool.plan(blob, lambda b: thumb(dim, b))
        assert set(_wins(100)) <= {e.box for e in plan[0]}
        assert sum(e.scores is None for e in plan[0]) <= 3  # the item due and two explored windows
        for e in plan[0]:
            if e.scores is None:
                e.scores, e.sig = np.ones(2, np.float32), thumb(dim, e.box)
        pool.commit(blob, plan, [[i for i, e in enumerate(plan[0]) if e.box in items]])
        hand = dim.copy()
        hand[:, 90:200] = 200  # a hand over the first item and the windows beside it
        return {e.box: e for e in pool.plan(blob, lambda b: thumb(hand, b))[0]}

    boxes = frames(change=0.5)
    assert boxes[(100, 50, 60, 100)].scores is None  # the item under the hand: embedded again now
    assert (130, 50, 60, 100) not in boxes or boxes[(130, 50, 60, 100)].scores is None  # under the hand: not trusted
    assert boxes[(250, 50, 60, 100)].scores is not None  # away from the hand: its scores kept
    boxes = frames(change=None)  # off: the scores embedded before the hand came are used
    assert boxes[(130, 50, 60, 100)].scores is not None


def test_an_item_window_no_blob_window_is_as_wide_as_is_fitted_again_and_embedded_now():
    def frames(refit):
        pool = WindowPool(max_age=5, budget=4, anchor_every=3, refit=refit)
        narrow = [(100, 50, 300, 100), (100, 50, 36, 100), (136, 50, 36, 100)]  # windows while the items looked 80 px tall
        plan, _ = _frame(pool, [Blob((100, 50, 300, 100), narrow)])
        pool.commit([Blob((100, 50, 300, 100))], plan, [[i for i, e in enumerate(plan[0]) if e.box == (136, 50, 36, 100)]])
        plan = pool.plan([Blob((100, 50, 300, 100), _wins(100))])  # 60 px windows now
        return [e for e in plan[0] if e.anchor]

    (item,) = frames(refit=0.2)
    assert item.box == (130, 50, 60, 100) and item.scores is None  # the blob's nearest window, embedded now
    (item,) = frames(refit=None)
    assert item.box == (136, 50, 36, 100)  # off: the narrow part stays the item's window


def test_a_hand_dragging_a_blobs_edges_along_does_not_drag_its_items_windows():
    rng = np.random.default_rng(1)
    texture = cv2.resize(rng.integers(0, 255, (25, 45), dtype=np.uint8), (180, 100), interpolation=cv2.INTER_CUBIC)

    def frame(items_x, hand_x):  # three touching 60 px items; a hand's band over their feet, wider than the row
        f = np.full((240, 640), 90, np.uint8)
        f[50:150, items_x : items_x + 180] = texture
        f[125:150, hand_x : hand_x + 280] = 230
        return f

    def after(register, named=True):
        pool = WindowPool(max_age=5, budget=4, register=register)
        wins = lambda x: [(x, 50, 280, 100)] + [(x + 30 * k, 50, 60, 100) for k in range(8)]  # noqa: E731
        first = half(frame(200, 140))
        plan = pool.plan([Blob((140, 50, 280, 100), wins(140))], small=first)
        for e in plan[0]:
            e.scores = np.ones(2, np.float32)
        items = [(200, 50, 60, 100), (260, 50, 60, 100), (320, 50, 60, 100)] if named else []
        pool.commit([Blob((140, 50, 280, 100))], plan, [[i for i, e in enumerate(plan[0]) if e.box in items]], first)
        # the items slide 6 px left while the hand moves 40 px right: both blob edges move +40
        plan = pool.plan([Blob((180, 50, 280, 100), wins(180))], small=half(frame(194, 180)))
        return plan[0]

    anchors = lambda plan: sorted(e.box for e in plan if e.anchor)  # noqa: E731
    assert blob_shift((140, 50, 280, 100), (180, 50, 280, 100)) == (40, 0)
    assert anchors(after(register=32)) == [(194, 50, 60, 100), (254, 50, 60, 100), (314, 50, 60, 100)]  # where the items are
    assert anchors(after(register=None)) == [(240, 50, 60, 100), (300, 50, 60, 100), (360, 50, 60, 100)]  # off: with the hand
    # no item named last frame (the hand over them all): the blob's own patch, in tiles, says how the items moved
    kept = {e.box for e in after(register=32, named=False) if e.scores is not None}
    assert (194, 50, 60, 100) in kept and (240, 50, 60, 100) not in kept
    kept = {e.box for e in after(register=None, named=False) if e.scores is not None}
    assert (194, 50, 60, 100) not in kept
