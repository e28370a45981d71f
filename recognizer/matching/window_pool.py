"""Scored windows kept across frames, so a frame embeds a few crops instead of every window.

Separating touching items needs the scores of every window of a blob (10-20 crops), which is
far over a frame's budget on a CPU (about 4 ms a crop with ONNX Runtime, 12 with torch). Items
on a table move slowly, so a window's scores stay good for a few frames when the window moves
with its blob. :class:`WindowPool` keeps every window scored in the last ``max_age`` frames,
moved with its blob (and with the camera). Each frame:

* the windows picked last frame (the items: *anchors*) are embedded again, fresh: each every
  ``anchor_every`` frames, the stalest first (the camera: every 3rd frame; the rest carry their
  scores, moved with the blob), so the crops go to looking for what changed;
* a few more windows of each blob are *explored*, those covering parts of the blob that no
  anchor covers first (a hand, an item just put down), then the least recently scored, so
  every window is scored again within about ``max_age`` frames;
* a blob seen for the first time has every window scored at once (a birth search): without
  it the first frames would name a blob of three touching items after one of them;
* a pooled window whose 8x8 grey thumbnail no longer correlates with the one it was embedded
  on (a hand came or went over it; dimming light does not count) is stale: an item's is
  embedded again now, any other is dropped and explored again (#16: scores taken while a hand
  covered an item put its name on the neighbour's box after the hand had gone);
* an item's window far off every width its blob's windows have now (``refit``: made when its
  items looked another height, an item lowered from above or a hand reaching in) is fitted
  again: the blob's nearest window takes its place, embedded now (#16: a 36 px part of a 74 px
  item, kept as an item for 20 frames, named a narrow carton among the distractors);
* a blob's windows move as its items moved, read from what they show (``register``: each
  item's grey patch of last frame found again in this frame, :func:`register_shift`), where
  that fits clearly better than the blob's edges: a hand across a row of items drags both
  edges along with it, and the windows slid off the items onto their neighbours (#16: under
  the hand a track followed its window onto the neighbour and showed its name there).

:func:`~.proposals.select_boxes` then picks the items among the blob's pooled windows as it
would among freshly scored ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .proposals import Blob
from .tracking import Box, covered_columns, intersection, iou


@dataclass
class Scored:
    box: Box
    scores: np.ndarray | None  # over the candidates; None until embedded this frame
    age: int = 0  # frames since it was scored
    anchor: bool = False  # picked as an item last frame: scored again every frame (or every anchor_every)
    skipped: int = 0  # an anchor: frames since it was last embedded
    sig: np.ndarray | None = None  # a thumbnail of what it showed when embedded (:func:`thumb`)
    tpl: np.ndarray | None = None  # an item: what it showed last frame, half-size grey (:meth:`WindowPool.commit`)


def thumb(gray: np.ndarray, box: Box, size: int = 8) -> np.ndarray:
    """What a window shows, in brief: its grey pixels at ``size`` x ``size``, zero-mean and unit-norm
    (the light dimming leaves it as it was; a hand coming or going does not)."""
    x, y, w, h = box
    H, W = gray.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros(size * size, np.float32)
    t = cv2.resize(gray[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def _inside(a: Box, b: Box) -> float:
    """Share of box ``a``'s area inside box ``b``."""
    return intersection(a, b) / max(1, a[2] * a[3])


def _clip(a: Box, b: Box) -> Box:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, max(1, x1 - x0), max(1, y1 - y0))


def _edge_shift(lo0: int, hi0: int, lo1: int, hi1: int) -> float:
    """How far a blob moved along one axis: both edges moved alike (the items slid), or the
    edge that moved less did (the other is a hand, or an item put down or taken away)."""
    a, b = lo1 - lo0, hi1 - hi0
    if abs(a - b) <= 0.08 * max(1, hi0 - lo0):
        return (a + b) / 2
    return a if abs(a) < abs(b) else b


def blob_shift(prev: Box, cur: Box) -> tuple[float, float]:
    px, py, pw, ph = prev
    x, y, w, h = cur
    return _edge_shift(px, px + pw, x, x + w), _edge_shift(py, py + ph, y, y + h)


def half(gray: np.ndarray) -> np.ndarray:
    """The grey frame at half size: what items are registered on (:func:`register_shift`)."""
    return cv2.resize(gray, (gray.shape[1] // 2, gray.shape[0] // 2), interpolation=cv2.INTER_AREA)


def register_shift(small: np.ndarray, items: Sequence[tuple[Box, np.ndarray]], radius: int, guess: tuple[float, float],
                   margin: float = 0.1, min_corr: float = 0.7) -> tuple[float, float]:  # fmt: skip
    """How far a blob's items moved since last frame, read from what they show. Each item's
    half-size grey patch of last frame (``items``: its box there, full-size px, and the patch) is
    searched for in ``small`` (this frame, :func:`half`) within ``radius`` px across and a quarter
    of it up and down; the shift the items agree on best (mean correlation) replaces ``guess``
    (the blob's edges, :func:`blob_shift`) only when it fits them by ``margin`` more and by
    ``min_corr`` at least. Why: a hand on a blob drags both its edges along, not its items (#16);
    but a turning item or a row of lookalikes also fits a wrong shift a little, so the edges keep
    their word where they fit, and a weak match has none (the wrong shifts seen in the table
    scenes matched 0.54-0.65, the hand's right ones 0.74-0.88)."""
    r, ry = max(1, radius // 2), max(1, radius // 8)
    pad = cv2.copyMakeBorder(small, ry, ry, r, r, cv2.BORDER_REPLICATE)
    total, n = None, 0
    for box, tpl in items:
        x, y = box[0] // 2, box[1] // 2
        th, tw = tpl.shape
        area = pad[max(0, y) : y + th + 2 * ry, max(0, x) : x + tw + 2 * r]
        if min(th, tw) < 4 or area.shape != (th + 2 * ry, tw + 2 * r) or float(tpl.std()) < 2.0:
            continue  # too small, off the frame, or flat: no say in the shift
        m = np.nan_to_num(cv2.matchTemplate(area, tpl, cv2.TM_CCOEFF_NORMED))
        total, n = (m if total is None else total + m), n + 1
    if total is None:
        return guess
    total /= n
    iy, ix = np.unravel_index(int(np.argmax(total)), total.shape)
    gx, gy = int(round(guess[0] / 2)) + r, int(round(guess[1] / 2)) + ry
    at_guess = float(total[gy, gx]) if 0 <= gx < total.shape[1] and 0 <= gy < total.shape[0] else -1.0
    if total[iy, ix] < min_corr or total[iy, ix] < at_guess + margin:
        return guess
    return 2.0 * (ix - r), 2.0 * (iy - ry)


class WindowPool:
    """Every window scored in the last ``max_age`` frames, per blob, moved as its blob moves."""

    def __init__(self, max_age: int = 5, budget: int | None = 6, match: float = 0.7, steady: float = 0.15, explore: int = 2,
                 burst: bool = False, anchor_every: int = 1, change: float | None = None, refit: float | None = None,
                 register: int | None = None):  # fmt: skip
        self.max_age, self.budget, self.match, self.steady = max_age, budget, match, steady  # budget: crops a frame
        self.min_explore = explore  # windows explored per frame at least, whatever the budget
        self.anchor_every = anchor_every  # an item in a steady blob is embedded again every this many frames
        self.burst = burst  # a blob that grew or shrank has every stale window re-scored at once, over the budget
        self.refit = refit  # an item's window off every width its blob's windows have now by more than this share is fitted again
        self.change = change  # a window whose thumbnail moved this far (1 - correlation) from the one it was embedded on is stale
        self.register = register  # a blob's windows move as its items' patches moved (searched this far, px), not as its edges (None: edges)
        self.blobs: list[Box] = []  # last frame's blob boxes
        self.patches: list[np.ndarray | None] = []  # with register: what each blob showed last frame (half size, grey)
        self.entries: list[list[Scored]] = []  # per blob of last frame

    def shift(self, dx: float, dy: float) -> None:
        """The camera moved: every pooled window (and blob) moves with the table."""
        mv = lambda b: (int(round(b[0] + dx)), int(round(b[1] + dy)), b[2], b[3])  # noqa: E731
        self.blobs = [mv(b) for b in self.blobs]
        for es in self.entries:
            for e in es:
                e.box = mv(e.box)

    def plan(self, blobs: Sequence[Blob], sig: Callable[[Box], np.ndarray] | None = None,
             small: np.ndarray | None = None) -> list[list[Scored]]:  # fmt: skip
        """Per blob, its pooled windows (moved to this frame) and the ones to embed now
        (``scores is None``); ``blob.windows`` are the fresh windows a full search would score.
        About ``budget`` crops (None: no limit): the items due (every ``anchor_every`` frames) and
        new blobs' windows always, and at least ``explore`` more windows. ``sig`` (a box's
        :func:`thumb` in this frame): a pooled window that no longer shows what it was embedded on
        (a hand came or went over it) is stale: an item's is embedded again now, another window is
        dropped and explored again like any unscored one. ``small`` (this frame, :func:`half`;
        with ``register``): a blob's windows move as its items did, not as its edges."""
        budget = self.budget
        carried: list[list[Scored]] = [[] for _ in blobs]
        changed: set[int] = set()
        for bi, (pb, es) in enumerate(zip(self.blobs, self.entries, strict=True)):
            j = max(range(len(blobs)), key=lambda k: iou(pb, blobs[k].box), default=None)
            if j is None or iou(pb, blobs[j].box) < 0.3:
                continue  # the blob left (or changed beyond recognition): its windows go with it
            cur = blobs[j].box
            dx, dy = blob_shift(pb, cur)
            whole = [e.anchor and iou(e.box, pb) >= 0.8 for e in es]  # a pick that was the whole blob
            if self.register and small is not None:
                items = [(e.box, e.tpl) for e, w in zip(es, whole, strict=True) if e.anchor and not w and e.tpl is not None]
                if not items and bi < len(self.patches):  # no item named last frame (a hand over them all): the blob's tiles
                    items = _tiles(pb, self.patches[bi])
                dx, dy = register_shift(small, items, self.register, (dx, dy))
            # a blob that grew or shrank (a hand came or went, an item was put down or taken away):
            # last frame's picks are pooled windows like the others, not items to keep
            steady = abs(cur[2] - pb[2]) <= self.steady * pb[2] and abs(cur[3] - pb[3]) <= self.steady * pb[3]
            if not steady:
                changed.add(j)
            for e, whole_pick in zip(es, whole, strict=True):
                if e.age + 1 >= self.max_age and not e.anchor:
                    continue
                if whole_pick:
                    box = cur  # a pick that was the whole blob stays the whole blob
                else:
                    box = (int(round(e.box[0] + dx)), int(round(e.box[1] + dy)), e.box[2], e.box[3])
                for k, b in enumerate(blobs):  # the blob it now lies in (a blob may have split)
                    if _inside(box, b.box) >= 0.6:
                        box = _clip(box, b.box)
                        if e.anchor and not whole_pick and self._misfit(box, b.windows[1:]):
                            box, stale = max(b.windows[1:], key=lambda w: iou(w, box)), True  # fitted again, embedded now
                        else:
                            stale = self.change is not None and sig is not None and e.sig is not None and 1.0 - float(e.sig @ sig(box)) > self.change
                        if e.anchor or not stale:  # a stale item is embedded again now; any other stale window is dropped
                            carried[k].append(Scored(box, None if stale else e.scores, e.age + 1, e.anchor and steady,
                                                     0 if stale else e.skipped + 1, e.sig))  # fmt: skip
                        break
        # the items: scored afresh, every frame (anchor_every 1), or the stalest 1/anchor_every of them
        anchors = sorted((e for es in carried for e in es if e.anchor), key=lambda e: -e.skipped)
        for e in anchors[: -(-len(anchors) // self.anchor_every)]:
            e.scores, e.skipped = None, 0
        explore: list[tuple[int, int, int, int, Box]] = []
        for k, b in enumerate(blobs):
            es = carried[k]
            if not es:  # seen for the first time (or nothing of it is left): every window now
                es[:] = [Scored(w, None) for w in b.windows]
                continue
            covered = covered_columns(b.box[0], b.box[2], (e.box for e in es if e.anchor))
            for n, w in enumerate(b.windows):
                fresh = [e for e in es if iou(e.box, w) >= self.match]
                if fresh and all(e.scores is None for e in fresh):
                    continue  # an anchor embedded now covers it
                age = min((e.age for e in fresh), default=self.max_age)
                x0 = max(0, w[0] - b.box[0])
                uncovered = 1.0 - float(covered[x0 : x0 + w[2]].mean()) if w[2] > 0 else 0.0
                # parts no item covers first (a hand, an item put down), then the stalest
                new_part = uncovered > 0.3
                if not fresh or new_part or age >= self.max_age - 1:
                    explore.append((-int(new_part), -age, n, k, w))
        if self.burst:
            now = [x for x in explore if x[3] in changed]
            explore = [x for x in explore if x[3] not in changed]
        else:
            now = []
        need = sum(e.scores is None for es in carried for e in es) + len(now)
        room = len(explore) if budget is None else max(self.min_explore, budget - need)
        for *_, k, w in now + sorted(explore)[:room]:
            carried[k] = [e for e in carried[k] if iou(e.box, w) < self.match or e.anchor] + [Scored(w, None)]
        return carried

    def _misfit(self, box: Box, windows: Sequence[Box]) -> bool:
        """An item's window no longer as wide as any window its blob makes now (within ``refit`` of
        its width): it was made when the blob's items looked another height (an item lowered from
        above, a hand), and a part that narrow names a narrow distractor on the seam (#16)."""
        return self.refit is not None and bool(windows) and min(abs(box[2] - w[2]) for w in windows) > self.refit * box[2]

    def commit(self, blobs: Sequence[Blob], carried: list[list[Scored]], picked: list[list[int]],
               small: np.ndarray | None = None) -> None:  # fmt: skip
        """Remember this frame's windows (scored by now) and which of them were picked as items
        (with ``register`` and ``small``, this frame by :func:`half`: what each item shows)."""
        self.blobs = [b.box for b in blobs]
        self.patches = [_patch(small, b.box) for b in blobs] if self.register else []
        self.entries = []
        for es, pk in zip(carried, picked, strict=True):
            keep = set(pk)
            self.entries.append([Scored(e.box, e.scores, e.age, i in keep, e.skipped, e.sig,
                                        _patch(small, e.box) if i in keep and self.register else None)
                                 for i, e in enumerate(es) if e.scores is not None])  # fmt: skip


def _tiles(box: Box, patch: np.ndarray | None) -> list[tuple[Box, np.ndarray]]:
    """A blob's last-frame patch cut in square tiles half its height: each registered like an item."""
    if patch is None:
        return []
    t = max(4, patch.shape[0] // 2)
    return [((box[0] + 2 * x, box[1] + 2 * y, 2 * t, 2 * t), patch[y : y + t, x : x + t])
            for y in range(0, patch.shape[0] - t + 1, t) for x in range(0, patch.shape[1] - t + 1, t)]  # fmt: skip


def _patch(small: np.ndarray | None, box: Box) -> np.ndarray | None:
    if small is None:
        return None
    x, y = max(0, box[0] // 2), max(0, box[1] // 2)
    return small[y : y + box[3] // 2, x : x + box[2] // 2].copy()
