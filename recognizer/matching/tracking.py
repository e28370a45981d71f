"""Tracks across frames: boxes associated by IoU, scores smoothed, labels kept stable.

A track's item scores are an EMA over its frames; candidate items are assigned one-to-one
to the visible tracks (Hungarian) when a candidate set is known; a label changes only after
a challenger wins for ``switch_frames`` frames by ``switch_margin``; below the threshold it
reads ``unknown``. A name another track takes (one-to-one) is given up at once: the track
reads ``unknown`` until a next name wins like any challenger (``lost_to_unknown``). A track that loses its box coasts (keeps its label, hidden) for
``leave_frames`` frames before it leaves, so a hand passing over an item does not rename it;
it coasts on at the speed its box moved while seen (``motion_ema``), as an item sliding under
a hand does, unless it went out of view at the frame's edge (``edge_leave``: an item lifted
away has left, and an item put down where it was is not given its name). A named track never
takes a box that plainly shows a hidden track's item (``name_gate``): that item is back, and its
own track takes the box over, and a track born where a hidden named track coasts counts that
item's name as its own when it is first named (``hidden_prior``). When the whole frame moves (a
pan), the tracks' boxes move with it before association.

Verification per track: geometric verification of a track's best candidates (the gallery's
stored local features) runs when the track is born and when its label is challenged, never
per frame; the inliers found are cached on the track and added to its scores as a bonus.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNKNOWN = "unknown"
Box = tuple[int, int, int, int]  # x, y, w, h


def intersection(a: Box, b: Box) -> int:
    """Area the two boxes share."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih


def covered_columns(x: int, w: int, boxes: Iterable[Box]) -> np.ndarray:
    """Which of the ``w`` columns from ``x`` lie under any of the boxes (a bool per column)."""
    out = np.zeros(w, bool)
    for bx, _, bw, _ in boxes:
        out[max(0, bx - x) : max(0, bx + bw - x)] = True
    return out


def _at_edge(box: Box, view: Box, px: int) -> bool:
    """The box lies within ``px`` of the view's edge."""
    x, y, w, h = box
    return x <= view[0] + px or y <= view[1] + px or x + w >= view[0] + view[2] - px or y + h >= view[1] + view[3] - px


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: Box
    scores: np.ndarray  # smoothed item scores over the label set
    label: str = UNKNOWN
    score: float = float("nan")
    pending: str | None = None
    pending_count: int = 0
    missed: int = 0
    age: int = 0
    announced: bool = False
    bonus: np.ndarray | None = None  # cached verification bonus per label (None: not verified)
    verified_for: frozenset = field(default_factory=frozenset)  # the labels the cached result covers
    verifying: frozenset = field(default_factory=frozenset)  # labels asked for, the result not back yet
    verify_epoch: int = 0  # counts box jumps: a result for an older crop is dropped
    item_w: int = 0  # width of the last box a window named that it took (0: none yet); a leftover box is judged against it
    vel: tuple[float, float] = (0.0, 0.0)  # px a frame its box moved while seen (EMA): a hidden track coasts on with it
    drift: tuple[float, float] = (0.0, 0.0)  # sub-pixel part of that coasting, carried over

    def to_state(self) -> dict[str, Any]:
        """The track as one entry of the per-frame state stream."""
        return {
            "track_id": self.track_id, "item_id": self.label,
            "score": None if not np.isfinite(self.score) else round(float(self.score), 4),
            "box": [int(v) for v in self.box], "visible": self.missed == 0, "age": self.age,
        }  # fmt: skip


@dataclass
class Event:
    kind: str  # appear | change | leave
    frame: int
    time: float
    track_id: int
    item_id: str
    previous: str | None
    score: float
    box: Box

    def to_json(self) -> str:
        d = self.__dict__.copy()
        d["box"] = [int(v) for v in self.box]
        d["score"] = None if not np.isfinite(self.score) else round(float(self.score), 4)
        return json.dumps(d)


def assign(scores: np.ndarray, one_to_one: bool) -> np.ndarray:
    """Column chosen for each row: argmax, or a one-to-one Hungarian assignment maximising the total."""
    if scores.size == 0:
        return np.zeros(len(scores), np.int64)
    if not one_to_one or scores.shape[0] > scores.shape[1]:
        return scores.argmax(axis=1)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-scores)
    out = np.empty(scores.shape[0], np.int64)
    out[rows] = cols
    return out


# verify(track, label indices) -> bonus per label (len(labels)), or None when the result comes later
# (LabelTracker.deliver); called only at birth, on a challenge and after a box jump
Verifier = Callable[[Track, np.ndarray], np.ndarray | None]


class LabelTracker:
    """Associates boxes across frames and keeps each track's label stable (EMA + hysteresis)."""

    def __init__(
        self, labels: Sequence[str], cfg: Any, threshold: float, one_to_one: bool, verifier: Verifier | None = None
    ):
        self.labels = list(labels)
        self.cfg = cfg
        self.threshold = threshold
        self.one_to_one = one_to_one
        self.verifier = verifier
        self.tracks: list[Track] = []
        self._next_id = 1
        self._col = {it: j for j, it in enumerate(self.labels)}
        self.verifications = 0
        if one_to_one:  # scipy.optimize takes ~0.7 s to import: at start, not on the first frame with items
            import scipy.optimize  # noqa: F401

    def shift(self, dx: float, dy: float) -> None:
        """The camera moved by (dx, dy) px: every track's box moves with the table."""
        for tr in self.tracks:
            x, y, w, h = tr.box
            tr.box = (int(round(x + dx)), int(round(y + dy)), w, h)

    def _associate(self, boxes: list[Box], scores: np.ndarray, unnamed: Sequence[bool] | None = None) -> None:
        """Boxes to tracks by overlap (IoU >= ``iou_match``), best pairs first, where a named track
        prefers the box that scores its item near that box's best: of two overlapping boxes, the
        one showing its item rather than the neighbour's (each point of score its item is below the
        box's best costs ``name_weight`` points of IoU). A box whose best item is a hidden track's,
        by more than ``name_gate`` over a named track's own, is not that track's to take: it is born
        anew and :meth:`_reidentify` gives it to the hidden item's track (an item coming out from
        under a hand beside its neighbour)."""
        cfg = self.cfg
        coast_shape = getattr(cfg, "coast_shape", None)
        gate = getattr(cfg, "name_gate", None)
        weight = getattr(cfg, "name_weight", 4.0)
        hidden = {tr.label for tr in self._hidden_named()} if gate is not None else set()
        best = [self.labels[int(j)] for j in scores.argmax(axis=1)] if hidden and scores.size else [UNKNOWN] * len(boxes)
        left = [False] * len(boxes) if unnamed is None else [bool(u) for u in unnamed]  # a part no window named
        unmatched = set(range(len(boxes)))
        pairs = []
        for ti, tr in enumerate(self.tracks):
            col = self._col.get(tr.label)
            for bi, b in enumerate(boxes):
                ov = iou(tr.box, b)
                if ov < cfg.iou_match:
                    continue
                ref = tr.item_w or tr.box[2]  # not its last box: a track riding leftovers would widen with a hand
                wider = max(b[2] / max(1, ref), ref / max(1, b[2]))
                if coast_shape and wider > coast_shape and (tr.missed or (left[bi] and tr.label != UNKNOWN)):
                    continue  # another item where a hidden one was, or a hand and neighbours where a named one is
                gap = float(scores[bi].max() - scores[bi, col]) if col is not None and scores.size else 0.0
                if gate is not None and tr.announced and gap > gate and best[bi] in hidden:
                    continue  # a hidden item's box: the named track coasts, the box is born anew (and reidentified)
                aff = ov - weight * max(0.0, gap)
                pairs.append((aff, ti, bi))
        pairs.sort(reverse=True)
        used: set[int] = set()
        for _, ti, bi in pairs:
            if ti in used or bi not in unmatched:
                continue
            tr = self.tracks[ti]
            if tr.bonus is not None and iou(tr.box, boxes[bi]) < getattr(cfg, "rebox_iou", 0.0):
                # its box jumped: that verification was of another crop (and one under way is too)
                tr.bonus, tr.verified_for, tr.verifying = None, frozenset(), frozenset()
                tr.verify_epoch += 1
            if tr.missed == 0 and not left[bi]:
                self._motion(tr, boxes[bi])
            tr.box = boxes[bi]
            if not left[bi]:
                tr.item_w = boxes[bi][2]
            tr.scores = cfg.ema * scores[bi] + (1 - cfg.ema) * tr.scores
            tr.missed = 0
            tr.age += 1
            used.add(ti)
            unmatched.discard(bi)
        for ti, tr in enumerate(self.tracks):
            if ti not in used:
                tr.missed += 1
                self._coast(tr)
        for bi in sorted(unmatched):
            self.tracks.append(Track(self._next_id, boxes[bi], scores[bi].copy(), item_w=0 if left[bi] else boxes[bi][2]))
            self._next_id += 1

    def _motion(self, tr: Track, b: Box) -> None:
        """Learn how a seen track moves: its box's centre shift, when the box kept its width (a window
        of another width moves the centre by itself), at most a quarter of its width a frame."""
        a = getattr(self.cfg, "motion_ema", 0.0)
        x, y, w, h = tr.box
        if not a or abs(b[2] - w) > 0.2 * w:
            return
        cap = 0.25 * w
        dx = float(np.clip(b[0] + b[2] / 2 - x - w / 2, -cap, cap))
        dy = float(np.clip(b[1] + b[3] / 2 - y - h / 2, -cap, cap))
        tr.vel = (a * dx + (1 - a) * tr.vel[0], a * dy + (1 - a) * tr.vel[1])

    @staticmethod
    def _coast(tr: Track) -> None:
        """A hidden track moves on as it moved while seen (an item sliding under a hand)."""
        fx, fy = tr.drift[0] + tr.vel[0], tr.drift[1] + tr.vel[1]
        ix, iy = int(round(fx)), int(round(fy))
        x, y, w, h = tr.box
        tr.box, tr.drift = (x + ix, y + iy, w, h), (fx - ix, fy - iy)

    def update(self, frame_index: int, t: float, boxes: list[Box], scores: np.ndarray,
               unnamed: Sequence[bool] | None = None, view: Box | None = None) -> list[Event]:  # fmt: skip
        """Feed one frame's boxes and their ``len(boxes) x len(labels)`` scores; returns events.

        ``unnamed`` (per box): a part of a blob no window named (a hand, a seam). A named track
        takes such a box only when it is about as wide as its own (``coast_shape``): an item under
        a hand keeps its name on its box, but its name is never put on a box that a hand and its
        neighbours fill (#16: an apple's name on the hand's box); it coasts, hidden, instead.
        ``view``: the frame as a box, for ``edge_leave``."""
        cfg = self.cfg
        events: list[Event] = []
        self._associate(boxes, scores, unnamed)
        edge = getattr(cfg, "edge_leave", None)
        keep = []
        for tr in self.tracks:  # drop tracks gone too long, or hidden at the frame's edge (out of view); coasting ones keep their label
            if tr.missed > cfg.leave_frames or (tr.missed and view is not None and edge is not None and _at_edge(tr.box, view, edge)):
                if tr.announced:
                    events.append(Event("leave", frame_index, t, tr.track_id, tr.label, None, tr.score, tr.box))
            else:
                keep.append(tr)
        self.tracks = keep
        visible = [tr for tr in self.tracks if tr.missed == 0]
        if not visible or not self.labels:
            return events
        mat = np.stack([self._scores(tr) for tr in visible])
        sticky = mat.copy()  # a track's own label is worth the switch margin to it
        # a new track where a hidden item coasts: that item's name counts as its own. :meth:`_reidentify`
        # hands a new track the identity of the hidden track its first name belongs to, wherever that one
        # coasts: an unknown track born on a hand, first named after a lookalike it scores as well, took
        # the lookalike's track from across the item (#16, hand seed 8: obj5 0.66, obj13 0.66 on obj13)
        prior = getattr(cfg, "hidden_prior", False)
        hidden = self._hidden_named() if prior else []
        for i, tr in enumerate(visible):
            if tr.label in self._col:
                sticky[i, self._col[tr.label]] += cfg.switch_margin
            elif hidden and not tr.announced:
                ov, near = max(((iou(o.box, tr.box), o) for o in hidden), key=lambda p: p[0])
                if ov >= cfg.iou_match:
                    sticky[i, self._col[near.label]] += cfg.switch_margin
        chosen = assign(sticky, self.one_to_one)
        for i, (tr, c) in enumerate(zip(visible, chosen, strict=True)):
            s = float(mat[i, c])
            proposal = self.labels[c] if s >= self.threshold else UNKNOWN
            cur = self._col.get(tr.label)
            if proposal not in (tr.label, UNKNOWN) and cur is not None and self._verify(tr, [c, cur]):
                s = float(self._scores(tr)[c])  # re-scored with the verification of both
                proposal = self.labels[c] if s >= self.threshold else UNKNOWN
            # its name went to another track (one-to-one): give it up now, never show one name twice
            lost = self.one_to_one and cur is not None and proposal != tr.label and any(
                cc == cur and o is not tr for o, cc in zip(visible, chosen, strict=True)
            )
            if not lost and proposal not in (tr.label, UNKNOWN) and cur is not None and self._scores(tr)[cur] + cfg.switch_margin > s:
                proposal, s = tr.label, float(self._scores(tr)[cur])  # a challenger must win clearly
            if proposal != UNKNOWN and not tr.announced:
                self._reidentify(tr, proposal)
            if lost and proposal != UNKNOWN and getattr(cfg, "lost_to_unknown", False):
                # a track that showed a name another track has more right to was on the wrong box:
                # it reads unknown now, and its next name must win like any challenger
                events += self._hysteresis(tr, UNKNOWN, s, frame_index, t, now=True)
                lost = False  # given up: the next name waits like any challenger's
            events += self._hysteresis(tr, proposal, s, frame_index, t, now=lost)
        return events

    def _hidden_named(self) -> list[Track]:
        """Named tracks that lost their box and coast: the items a new box may be (back from under a hand)."""
        return [o for o in self.tracks if o.missed and o.announced and o.label != UNKNOWN]

    def _reidentify(self, tr: Track, label: str) -> None:
        """A new track named like a coasting one is that item back (after an occlusion): it takes over
        the coasting track's id and label, so no appear/leave pair and no second box of one item."""
        old = next((o for o in self._hidden_named() if o.label == label), None)
        if old is None:
            return
        tr.track_id, tr.label, tr.announced, tr.score = old.track_id, old.label, True, old.score
        if old.bonus is not None and tr.bonus is None:
            tr.bonus, tr.verified_for = old.bonus, old.verified_for
        self.tracks.remove(old)

    def _scores(self, tr: Track) -> np.ndarray:
        """Smoothed scores plus the cached verification bonus, which only breaks near-ties: it counts
        for items within ``verify_window`` of the track's best embedding score, so a track that
        slipped onto a neighbour does not carry its old item's bonus along."""
        if tr.bonus is None:
            return tr.scores
        near = tr.scores >= tr.scores.max() - getattr(self.cfg, "verify_window", 0.1)
        return tr.scores + np.where(near, tr.bonus, 0.0)

    def _verify(self, tr: Track, cols: Sequence[int]) -> bool:
        """Verify these labels on the track once (cached); True when it ran now."""
        if self.verifier is None:
            return False
        need = frozenset(int(c) for c in cols) - tr.verified_for - tr.verifying
        if not need:
            return False
        cols = np.array(sorted(need), np.int64)
        b = self.verifier(tr, cols)
        if b is None:  # under way: delivered later
            tr.verifying = tr.verifying | need
            return False
        self.deliver([(tr, cols, b)])
        return True

    def deliver(self, results: Sequence[tuple[Track, np.ndarray, np.ndarray]]) -> None:
        """Cache verification results on their tracks: (track, label indices, bonus per label)."""
        for tr, cols, b in results:
            need = frozenset(int(c) for c in cols)
            tr.bonus = (tr.bonus if tr.bonus is not None else np.zeros(len(self.labels), np.float32)) + b
            tr.verified_for = tr.verified_for | need
            tr.verifying = tr.verifying - need
            self.verifications += 1

    def verify_new(self, top: int) -> None:
        """Verify the ``top`` best labels of tracks seen for the first time (call after :meth:`update`)."""
        for tr in self.tracks:
            if self.verifier is not None and tr.missed == 0 and not tr.verified_for | tr.verifying and tr.age >= 1:
                self._verify(tr, np.argsort(-tr.scores)[:top])

    def _hysteresis(
        self, tr: Track, proposal: str, score: float, frame_index: int, t: float, now: bool = False
    ) -> list[Event]:
        if proposal == tr.label:
            tr.pending, tr.pending_count, tr.score = None, 0, score
            return []
        if proposal == tr.pending:
            tr.pending_count += 1
        else:
            tr.pending, tr.pending_count = proposal, 1
        if now:
            need = 1
        elif not tr.announced:
            need = self.cfg.appear_frames
        elif proposal == UNKNOWN:
            # a named item under a hand keeps its name as long as it would coast
            need = max(self.cfg.leave_frames, self.cfg.switch_frames)
        else:
            need = self.cfg.switch_frames
        if tr.pending_count < need:
            return []
        prev = tr.label
        tr.label, tr.score, tr.pending, tr.pending_count = proposal, score, None, 0
        kind = "appear" if not tr.announced else "change"
        tr.announced = True
        return [Event(kind, frame_index, t, tr.track_id, proposal, None if kind == "appear" else prev, score, tr.box)]
