"""Tracks: coasting through occlusions, one name per object, verification once per track."""

from __future__ import annotations

import numpy as np

from recognizer.matching.camera import UNKNOWN, CameraConfig, LabelTracker, held_tracks
from recognizer.matching.tracking import Track


def _tracker(labels=("a", "b", "c"), verifier=None, **kw) -> LabelTracker:
    cfg = CameraConfig(proposals="full", ema=1.0, **kw)
    return LabelTracker(list(labels), cfg, threshold=0.5, one_to_one=True, verifier=verifier)


def test_a_track_coasts_through_a_short_occlusion_and_keeps_its_name():
    tr = _tracker(leave_frames=10)
    box = (10, 10, 50, 50)
    tr.update(0, 0.0, [box], np.array([[0.9, 0.2, 0.1]]))
    evs = [e for f in range(1, 9) for e in tr.update(f, 0.0, [], np.zeros((0, 3)))]  # a hand covers it
    assert evs == [] and tr.tracks[0].label == "a" and tr.tracks[0].missed == 8
    moved = (30, 12, 50, 50)  # back, a little further on: no IoU with the old box
    assert tr.update(9, 0.0, [moved], np.array([[0.9, 0.2, 0.1]])) == []  # re-identified: no appear/leave
    assert [(t.track_id, t.label, t.missed) for t in tr.tracks] == [(1, "a", 0)]


def test_a_hidden_track_moves_on_as_it_moved_while_seen():
    def under_a_hand(boxes, **kw):  # seen on these boxes, then hidden for 6 frames: where is it?
        tr = _tracker(leave_frames=10, **kw)
        for f, b in enumerate(boxes):
            tr.update(f, 0.0, [b], np.array([[0.9, 0.2, 0.1]]))
        for f in range(len(boxes), len(boxes) + 6):
            tr.update(f, 0.0, [], np.zeros((0, 3)))
        return tr.tracks[0].box

    sliding = [(200 - 5 * f, 10, 50, 50) for f in range(6)]  # 5 px a frame to the left
    assert abs(under_a_hand(sliding, motion_ema=0.3)[0] - (200 - 5 * 11)) <= 8  # still over the item
    assert under_a_hand(sliding, motion_ema=0.0)[0] == 175  # off: where it was last seen
    # a window of another width moves the box's centre by itself: no motion learnt from it
    assert under_a_hand([(100, 10, 50, 50), (100, 10, 80, 50)], motion_ema=1.0)[0] == 100


def test_a_box_showing_a_hidden_item_goes_back_to_that_items_track_not_to_its_named_neighbour():
    def after_a_hand(**kw):  # 'a' and 'b' touch; a hand hides 'b', then uncovers it where 'a''s track overlaps it
        tr = _tracker(leave_frames=10, motion_ema=0.0, **kw)
        a, b = (100, 0, 60, 60), (160, 0, 60, 60)
        for f in range(3):
            tr.update(f, 0.0, [a, b], np.array([[0.9, 0.2, 0.1], [0.2, 0.9, 0.1]]))
        ids = {t.label: t.track_id for t in tr.tracks}
        tr.update(3, 0.0, [a], np.array([[0.9, 0.2, 0.1]]))  # 'b' hidden: it coasts
        # 'a' hidden now, 'b' seen again on a box shifted towards 'a' (IoU 0.2 with 'b''s, 0.5 with 'a''s)
        tr.update(4, 0.0, [(120, 0, 60, 60)], np.array([[0.3, 0.9, 0.1]]))
        return {t.track_id: (t.label, t.missed) for t in tr.tracks}, ids

    tracks, ids = after_a_hand()
    assert tracks == {ids["b"]: ("b", 0), ids["a"]: ("a", 1)}  # 'b' is back on its own track, 'a' coasts
    tracks, ids = after_a_hand(name_gate=None)  # off: 'a''s track takes the box and keeps its name on it
    assert tracks[ids["a"]] == ("a", 0)


def test_a_track_gone_longer_than_it_coasts_leaves():
    tr = _tracker(leave_frames=3)
    tr.update(0, 0.0, [(0, 0, 20, 20)], np.array([[0.9, 0.2, 0.1]]))
    evs = [e for f in range(1, 6) for e in tr.update(f, 0.0, [], np.zeros((0, 3)))]
    assert [(e.kind, e.item_id) for e in evs] == [("leave", "a")]


def test_an_item_lifted_out_of_view_leaves_at_once_and_its_name_is_not_put_on_the_next_item_there():
    def lifted(**kw):  # 'a' is lifted up out of the frame; 'b' is put down from the top where it was
        tr = _tracker(leave_frames=10, motion_ema=0.0, switch_frames=3, **kw)
        view = (0, 0, 640, 480)
        for f, b in enumerate([(100, 150, 60, 120), (100, 60, 60, 120), (100, 0, 60, 40)]):
            tr.update(f, 0.0, [b], np.array([[0.9, 0.2, 0.1]]), view=view)
        evs = tr.update(3, 0.0, [], np.zeros((0, 3)), view=view)  # gone above the frame's top
        evs += tr.update(4, 0.0, [(95, 0, 70, 40)], np.array([[0.3, 0.7, 0.1]]), view=view)
        return [(e.kind, e.item_id) for e in evs], [(t.label, t.missed) for t in tr.tracks]

    assert lifted() == ([("leave", "a"), ("appear", "b")], [("b", 0)])
    # off: 'a' coasts, takes the new item's box and shows its name on it until 'b' wins 3 frames
    assert lifted(edge_leave=None) == ([], [("a", 0)])


def test_one_name_is_never_shown_on_two_tracks():
    def named(**kw):  # the labels shown after each of the frames where the first track gives 'a' up
        tr = _tracker(switch_frames=3, **kw)
        b1, b2 = (0, 0, 40, 40), (100, 0, 40, 40)
        tr.update(0, 0.0, [b1], np.array([[0.80, 0.3, 0.2]]))
        out = []
        for f in range(1, 5):  # a second object appears; it is 'a' far more than the first, which is really 'b'
            tr.update(f, 0.0, [b1, b2], np.array([[0.70, 0.68, 0.2], [0.95, 0.3, 0.2]]))
            out.append([t.label for t in sorted(tr.tracks, key=lambda t: t.box[0]) if t.announced])
        return out

    # 'a' given up at once (not after switch_frames), never shown twice; 'b' must then win 3 frames
    assert named() == [["unknown", "a"], ["unknown", "a"], ["b", "a"], ["b", "a"]]
    assert named(lost_to_unknown=False) == [["b", "a"]] * 4  # off: the next best name at once


def test_nothing_like_a_candidate_is_unknown():
    tr = _tracker()
    tr.update(0, 0.0, [(0, 0, 40, 40)], np.array([[0.41, 0.40, 0.35]]))  # a hand
    assert tr.tracks[0].label == UNKNOWN


def test_verification_runs_once_per_track_not_per_frame():
    calls = []

    def verifier(track, cols):
        calls.append((track.track_id, sorted(int(c) for c in cols)))
        bonus = np.zeros(3, np.float32)
        bonus[1] = 0.3 if 1 in cols else 0.0  # local features say 'b'
        return bonus

    tr = _tracker(verifier=verifier, verify_top=2)
    box = (0, 0, 40, 40)
    for f in range(20):
        tr.update(f, 0.0, [box], np.array([[0.8, 0.75, 0.1]]))
        tr.verify_new(2)
    assert calls == [(1, [0, 1])]  # at birth only
    assert tr.tracks[0].label == "b"  # the embedding alone said 'a'


def test_a_track_whose_box_jumps_is_verified_again():
    calls = []

    def verifier(track, cols):
        calls.append(track.box)
        return np.zeros(3, np.float32)

    tr = _tracker(verifier=verifier, verify_top=2)
    for f, box in enumerate([(0, 0, 40, 40)] * 3 + [(10, 0, 40, 40)] * 3 + [(10, 0, 100, 40)] * 3):
        tr.update(f, 0.0, [box], np.array([[0.8, 0.75, 0.1]]))
        tr.verify_new(2)
    # at birth; not for a slide of a quarter of its width (IoU 0.6); again when the box jumps (IoU 0.4)
    assert calls == [(0, 0, 40, 40), (10, 0, 100, 40)]


def test_a_hidden_track_does_not_take_over_a_box_of_another_width():
    """An item lifted away and another put down in its place: the new one is a new track, not the old name."""
    tr = _tracker(leave_frames=10, coast_shape=1.6)
    tr.update(0, 0.0, [(100, 0, 60, 80)], np.array([[0.9, 0.2, 0.1]]))
    tr.update(1, 0.0, [], np.zeros((0, 3)))  # gone for a frame
    tr.update(2, 0.0, [(90, 0, 160, 40)], np.array([[0.55, 0.6, 0.1]]))  # a wide item where it was (IoU 0.27)
    assert [(t.track_id, t.missed) for t in tr.tracks] == [(1, 2), (2, 0)]  # it stays hidden; the new box is a new track
    same = _tracker(leave_frames=10, coast_shape=None)
    same.update(0, 0.0, [(100, 0, 60, 80)], np.array([[0.9, 0.2, 0.1]]))
    same.update(1, 0.0, [], np.zeros((0, 3)))
    same.update(2, 0.0, [(90, 0, 160, 40)], np.array([[0.55, 0.6, 0.1]]))
    assert [(t.track_id, t.label) for t in same.tracks] == [(1, "a")]  # without the rule: the old name carried on


def test_a_verification_under_way_is_not_asked_again_and_counts_when_delivered():
    calls, pending = [], []

    def verifier(track, cols):  # the result comes later, as from the camera's worker thread
        calls.append(sorted(int(c) for c in cols))
        pending.append((track, cols))
        return None

    tr = _tracker(verifier=verifier, verify_top=2)
    box = (0, 0, 40, 40)
    for f in range(3):
        tr.update(f, 0.0, [box], np.array([[0.8, 0.75, 0.1]]))
        tr.verify_new(2)
    assert calls == [[0, 1]] and tr.tracks[0].label == "a" and tr.verifications == 0
    (track, cols), bonus = pending[0], np.array([0.0, 0.3, 0.0], np.float32)
    tr.deliver([(track, cols, bonus)])
    for f in range(3, 7):
        tr.update(f, 0.0, [box], np.array([[0.8, 0.75, 0.1]]))
    assert tr.tracks[0].label == "b" and tr.verifications == 1 and calls == [[0, 1]]


def test_a_named_track_does_not_put_its_name_on_a_box_no_window_named_that_is_far_wider():
    """A hand over an item and its neighbours: the part no window named is not shown with the item's name."""
    for unnamed, shown in (([True], []), ([False], ["a"])):
        tr = _tracker(leave_frames=10, coast_shape=1.6)
        tr.update(0, 0.0, [(100, 0, 60, 80)], np.array([[0.9, 0.2, 0.1]]))
        tr.update(1, 0.0, [(90, 0, 200, 80)], np.array([[0.45, 0.2, 0.1]]), unnamed)  # hand + neighbours
        assert [t.label for t in tr.tracks if t.missed == 0 and t.announced and t.label != UNKNOWN] == shown
    tr = _tracker(leave_frames=10, coast_shape=1.6)
    tr.update(0, 0.0, [(100, 0, 60, 80)], np.array([[0.9, 0.2, 0.1]]))
    tr.update(1, 0.0, [(95, 0, 70, 80)], np.array([[0.45, 0.2, 0.1]]), [True])  # a hand on the item alone
    assert [(t.track_id, t.label, t.missed) for t in tr.tracks] == [(1, "a", 0)]  # keeps its name and box


def test_a_named_track_does_not_widen_with_a_hand_one_leftover_at_a_time():
    """Each leftover 1.5x the last one: judged against the width a window last named, not the last box."""
    tr = _tracker(leave_frames=10, coast_shape=1.6)
    tr.update(0, 0.0, [(100, 0, 60, 80)], np.array([[0.9, 0.2, 0.1]]))
    widths = []
    for f, w in enumerate((80, 120, 180), start=1):  # a hand sliding over the item and on
        tr.update(f, 0.0, [(100, 0, w, 80)], np.array([[0.45, 0.2, 0.1]]), [True])
        widths.append(next((t.box[2] for t in tr.tracks if t.label == "a" and t.missed == 0), None))
    assert widths == [80, None, None]  # 120 and 180 are 2x and 3x the item's 60 px: not its box


def _track(tid: int, box, label: str, missed: int = 1, age: int = 20) -> Track:
    return Track(tid, box, np.zeros(3, np.float32), label=label, missed=missed, age=age, announced=True)


def test_an_item_under_a_hand_stays_shown_while_its_place_is_covered():
    mask = np.zeros((200, 400), np.uint8)
    mask[50:150, 0:300] = 255  # a hand over three items: one blob, no window named this frame
    under = _track(1, (0, 50, 80, 100), "a")
    lifted = _track(2, (310, 50, 80, 100), "b")  # its place is empty table now: taken away
    young = _track(3, (100, 50, 80, 100), "c", age=3)  # seen 3 frames: maybe a seam's phantom
    assert held_tracks([under, lifted, young], mask, frames=5) == {1}
    assert held_tracks([_track(1, (0, 50, 80, 100), "a", missed=6)], mask, frames=5) == set()  # held 5 frames at most
    assert held_tracks([under], None, frames=5) == set() and held_tracks([under], mask, frames=0) == set()


def test_a_held_track_never_shows_a_name_twice_or_covers_an_item_shown_now():
    mask = np.full((200, 400), 255, np.uint8)
    seen = _track(1, (100, 50, 80, 100), "a", missed=0)
    same_name = _track(2, (0, 50, 80, 100), "a")  # its name is on another box now
    covered = _track(3, (110, 50, 80, 100), "b")  # its place is under the item shown now
    beside = _track(4, (200, 50, 80, 100), "c")
    assert held_tracks([seen, same_name, covered, beside], mask, frames=5) == {4}
    # of two held tracks on one place, the one seen more recently
    older, newer = _track(5, (300, 50, 80, 100), "d", missed=4), _track(6, (305, 50, 80, 100), "e", missed=1)
    assert held_tracks([older, newer], mask, frames=5) == {6}


def test_bad_hold_and_window_settings_are_refused_by_name():
    import pytest

    for kw, field in (({"hold_frames": -1}, "hold_frames"), ({"hold_fill": 0.0}, "hold_fill"), ({"window_tall": 1.5}, "window_tall"),
                      ({"part_margin": -0.1}, "part_margin"), ({"motion_ema": 1.5}, "motion_ema"),
                      ({"name_gate": -0.1}, "name_gate"), ({"edge_leave": -1}, "edge_leave"),
                      ({"stale_change": 0.0}, "stale_change"), ({"refit_width": 0.0}, "refit_width"),
                      ({"name_weight": -1.0}, "name_weight"), ({"register_px": 0}, "register_px"),
                      ({"seam_cover": 1.5}, "seam_cover"), ({"colour": -0.1}, "colour")):
        with pytest.raises(ValueError, match=field):
            CameraConfig(**kw)
    assert CameraConfig(hold_frames=0, window_tall=None, part_margin=None).hold_frames == 0


def test_a_named_track_takes_the_box_showing_its_item_not_the_neighbours_it_overlaps_more():
    def which_box(**kw):  # 'a' and 'b' lookalikes; 'b' hidden; 'a''s box overlaps the window on 'b' more than its own
        tr = _tracker(leave_frames=10, motion_ema=0.0, name_gate=None, **kw)
        a, b = (100, 0, 85, 60), (190, 0, 55, 60)
        for f in range(3):
            tr.update(f, 0.0, [a, b], np.array([[0.8, 0.2, 0.1], [0.2, 0.8, 0.1]]))
        ida = next(t.track_id for t in tr.tracks if t.label == "a")
        tr.update(3, 0.0, [a], np.array([[0.8, 0.2, 0.1]]))  # a hand over 'b': it coasts
        # the window on 'b' (IoU 0.34 with 'a''s box) scores 'a' 0.03 under 'b'; 'a''s own (IoU 0.27) shows 'a'
        on_b, on_a = (150, 0, 52, 60), (75, 0, 55, 60)
        tr.update(4, 0.0, [on_b, on_a], np.array([[0.67, 0.70, 0.1], [0.60, 0.3, 0.1]]))
        return next(t.box for t in tr.tracks if t.track_id == ida)

    assert which_box() == (75, 0, 55, 60)  # its own item's box
    assert which_box(name_weight=2.0) == (150, 0, 52, 60)  # the last stop's weight: the neighbour's


def test_a_track_born_where_a_hidden_item_coasts_is_named_after_it_on_a_near_tie():
    def after_a_hand(**kw):  # 'a' and 'b' touch; a hand hides both: a leftover no window named, an unknown track
        tr = _tracker(leave_frames=10, motion_ema=0.0, **kw)
        a, b = (100, 0, 60, 60), (160, 0, 60, 60)
        for f in range(3):
            tr.update(f, 0.0, [a, b], np.array([[0.9, 0.2, 0.1], [0.2, 0.9, 0.1]]))
        ids = {t.label: t.track_id for t in tr.tracks}
        tr.update(3, 0.0, [(130, 0, 110, 60)], np.array([[0.3, 0.3, 0.1]]), unnamed=[True])
        # the hand leaves 'b': the hand's track takes the window on 'b' (IoU 0.82; 'b''s coasting box 0.67),
        # which scores 'a', a lookalike coasting beside it, as well as 'b'
        tr.update(4, 0.0, [(140, 0, 90, 60)], np.array([[0.66, 0.65, 0.1]]))
        return [(t.track_id, t.label) for t in tr.tracks if not t.missed], ids

    shown, ids = after_a_hand()
    assert shown == [(ids["b"], "b")]  # 'b''s own track is back where 'b' was
    shown, ids = after_a_hand(hidden_prior=False)  # off: 'a''s track is taken from across 'b'
    assert shown == [(ids["a"], "a")]
