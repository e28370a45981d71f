"""Where the items are: a background model of the table, its blobs, and boxes that separate touching items.

The background (:class:`TableBackground`) is learnt from the first frames of the empty table,
then followed as the scene changes without taking what is on it for background:

* **light**: each frame is compared with the background times a smooth gain map (medians of
  the brightness ratio over a coarse grid, on pixels that were background last frame), so
  dimming to half and back makes no objects;
* **shadows**: darker by 5-60 % with the background's colour kept is a shadow, not an object;
* **camera motion**: phase correlation against the background measures a pan or a bump; the
  background (and the tracks' boxes, by the caller) move with it and the newly seen strip is
  learnt at once, so a pan floods nothing with phantom objects.

A blob may hold several touching items. Two ways to separate them, both scored by the
candidate items in the same batched forward as everything else (:func:`select_boxes`):

* ``windows``: candidate-guided windows, several widths (relative to the blob's height) at
  several positions along the blob, each fitted to the mask in its columns;
* ``split``: the mask itself split by a distance transform and watershed (the whole blob is
  kept when its parts do not score better than it).

Windows that score below the threshold are never picked; a wide part of a blob that no picked
window covers (a hand, a cup) becomes a box of its own, which the tracker labels ``unknown``.

The candidates also say how wide their items are (:func:`~.item_looks.item_aspects`: the object's width over
its height in enrolled photos with a plain background, catalog or turntable shots): a blob no
wider than the item its whole box names is that one item, and is never cut into parts. Without
this, half of a lone package could be named after a distractor that half-resembles it; with
it, touching items (a blob far wider than any one of them) are still separated.

:class:`Proposer` is the camera's use of all this, one frame at a time (or a fixed ROI, a grid,
the full frame, or OpenCV's MOG2 for comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .tracking import Box, covered_columns


@dataclass
class Blob:
    """A foreground blob (frame coordinates) and the candidate boxes to score inside it."""

    box: Box
    windows: list[Box] = field(default_factory=list)  # windows[0] is the blob itself
    kind: str = "windows"  # how its windows are chosen among: windows | split | whole


class TableBackground:
    """Background of a fixed camera over a table, robust to light changes, shadows and pans."""

    def __init__(self, warmup: int = 10, scale: float = 0.5, learn: float = 0.1, diff: float = 28.0):
        self.warmup, self.scale, self.learn, self.diff = warmup, scale, learn, diff
        self.bg: np.ndarray | None = None  # float32, at ``scale``, at the first frames' light
        self.n = 0
        self.last_fg: np.ndarray | None = None
        self.gain: np.ndarray | None = None  # the light now over the light learnt, per pixel (at ``scale``)
        self.shift_total = np.zeros(2)
        self._hann = None

    def _small(self, frame: np.ndarray) -> np.ndarray:
        H, W = frame.shape[:2]
        s = cv2.resize(frame, (max(8, int(W * self.scale)), max(8, int(H * self.scale))), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(s, (3, 3), 0).astype(np.float32)

    def apply(self, frame: np.ndarray, hold: list[Box]) -> tuple[np.ndarray, tuple[float, float]]:
        """Foreground mask (at ``scale``) and the camera's shift since the last frame (frame px).

        ``hold``: boxes of known items (frame coordinates) the background must not learn.
        """
        cur = self._small(frame)
        if self.bg is None or self.n < self.warmup:
            self.bg = cur if self.bg is None else self.bg + (cur - self.bg) / (self.n + 1)
            self.n += 1
            return np.zeros(cur.shape[:2], np.uint8), (0.0, 0.0)
        h, w = cur.shape[:2]
        gray, bg_gray = _sum3(cur), _sum3(self.bg)  # channel sums: elementwise, faster than a reduce
        dx, dy = self._motion(gray, bg_gray)
        fresh = None
        if dx or dy:  # the camera moved: so does the table
            M = np.float32([[1, 0, dx], [0, 1, dy]])
            self.bg = cv2.warpAffine(self.bg, M, (w, h), borderMode=cv2.BORDER_REPLICATE)
            fresh = cv2.warpAffine(np.ones((h, w), np.uint8), M, (w, h), borderValue=0) == 0
            bg_gray = _sum3(self.bg)
            if self.last_fg is not None:
                self.last_fg = cv2.warpAffine(self.last_fg, M, (w, h), borderValue=0)
        held = np.zeros((h, w), bool)
        for x, y, bw, bh in hold:
            x0, y0 = max(0, int(x * self.scale)), max(0, int(y * self.scale))
            held[y0 : int((y + bh) * self.scale) + 1, x0 : int((x + bw) * self.scale) + 1] = True
        gain = self._gain(gray, bg_gray, held)
        self.gain = gain
        expect = self.bg * gain[:, :, None]
        diff = cv2.absdiff(cur, expect)
        dist = np.maximum(np.maximum(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2])
        fg = dist > self.diff * np.maximum(gain, 0.35)
        # shadows: darker than expected with the background's colour kept (judged only where it differs)
        ys, xs = np.nonzero(fg)
        if len(ys):
            c, e = cur[ys, xs], expect[ys, xs]
            cg, eg = c.sum(axis=1) + 3.0, e.sum(axis=1) + 3.0
            ratio = (cg - 3.0) / eg
            chroma = np.abs(c / cg[:, None] - e / eg[:, None]).sum(axis=1)
            shadow = (ratio > 0.4) & (ratio < 0.95) & (chroma < 0.06)
            fg[ys[shadow], xs[shadow]] = False
        if fresh is not None:
            fg &= ~fresh
        mask = fg.astype(np.uint8) * 255
        k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        k7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k3)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k7, iterations=2)
        learn = ((mask == 0) & ~held).astype(np.uint8)
        norm = cur / gain[:, :, None]
        cv2.accumulateWeighted(norm, self.bg, self.learn, mask=learn)
        if fresh is not None:
            self.bg[fresh] = norm[fresh]
        self.last_fg = mask
        return mask, (dx / self.scale, dy / self.scale)

    def _motion(self, gray: np.ndarray, bg_gray: np.ndarray) -> tuple[float, float]:
        if self._hann is None or self._hann.shape != gray.shape:
            self._hann = cv2.createHanningWindow(gray.shape[::-1], cv2.CV_32F)
        (dx, dy), resp = cv2.phaseCorrelate(bg_gray.astype(np.float32), gray.astype(np.float32), self._hann)
        if resp < 0.15 or np.hypot(dx, dy) < 0.75:
            return 0.0, 0.0
        return float(dx), float(dy)

    def _gain(self, gray: np.ndarray, bg_gray: np.ndarray, held: np.ndarray, grid: tuple[int, int] = (3, 4)) -> np.ndarray:
        """A smooth brightness gain map: medians of cur/bg over a coarse grid of background pixels
        (every other row and column: the medians barely move, at a quarter of the cost)."""
        H, W = gray.shape
        ok = ~held
        if self.last_fg is not None:
            ok &= cv2.dilate(self.last_fg, np.ones((5, 5), np.uint8)) == 0
        ok, ratio = ok[::2, ::2], (gray[::2, ::2] + 12.0) / (bg_gray[::2, ::2] + 12.0)
        h, w = ratio.shape
        overall = float(np.median(ratio[ok])) if ok.sum() > 50 else float(np.median(ratio))
        g = np.full(grid, overall, np.float32)
        for r in range(grid[0]):
            for c in range(grid[1]):
                sl = (slice(r * h // grid[0], (r + 1) * h // grid[0]), slice(c * w // grid[1], (c + 1) * w // grid[1]))
                m = ok[sl]
                if m.sum() > 0.2 * m.size:
                    g[r, c] = np.median(ratio[sl][m])
        return cv2.resize(g, (W, H), interpolation=cv2.INTER_LINEAR)


def _sum3(a: np.ndarray) -> np.ndarray:
    return a[:, :, 0] + a[:, :, 1] + a[:, :, 2]


# ----------------------------------------------------------------------------- blobs and windows


def blobs_from_mask(mask: np.ndarray, scale: float, min_area: float, max_blobs: int) -> list[tuple[Box, np.ndarray]]:
    """Connected components of the mask over ``min_area`` (share of the frame): frame boxes and their masks."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_px = min_area * mask.shape[0] * mask.shape[1]
    out = []
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:max_blobs] + 1:
        x, y, w, h, a = stats[i]
        if a < min_px:
            continue
        sub = (labels[y : y + h, x : x + w] == i).astype(np.uint8)
        out.append(((int(x / scale), int(y / scale), int(w / scale), int(h / scale)), sub))
    return out


def _fit_rows(sub: np.ndarray, c0: int, c1: int) -> tuple[int, int] | None:
    """Top and bottom rows of the mask within columns [c0, c1)."""
    rows = np.nonzero(sub[:, c0:c1].sum(axis=1) > max(1, 0.08 * (c1 - c0)))[0]
    return (int(rows[0]), int(rows[-1]) + 1) if len(rows) else None


def column_height(sub: np.ndarray) -> float:
    """The blob's typical height: the median over its columns of the mask's extent (top to bottom).

    An item being put down from above, or a hand reaching in over a few items, makes the blob's
    box far taller than the items standing in it; windows as wide as a share of the box's height
    are then too wide to hold one narrow item (#16: the swap scene's 62 px items got windows of
    99, 154 and 220 px while a 220 px tall blob lasted)."""
    on = sub > 0
    cols = on.any(axis=0)
    if not cols.any():
        return float(sub.shape[0])
    top = np.argmax(on, axis=0)
    bottom = sub.shape[0] - np.argmax(on[::-1], axis=0)
    return float(np.median((bottom - top)[cols]))


def window_boxes(box: Box, sub: np.ndarray, scale: float, widths: tuple[float, ...], stride: float, per_width: int,
                 tall: float | None = 0.8) -> list[Box]:  # fmt: skip
    """Candidate-guided windows in a blob: each width (x the items' height) at up to ``per_width``
    positions ``stride`` of its width apart, fitted vertically to the mask in its columns. The items'
    height is the blob box's, or, when the median column height of its mask (:func:`column_height`)
    is under ``tall`` x that (an item lowered from above, a hand reaching in), the median; only
    then: windows narrower than the box's height allows on every blob make seams that a
    distractor names (#16: dim scene, wrong-label frames 1.6% -> 5.4% over 5 seeds)."""
    x, y, w, h = box
    sh, sw = sub.shape
    if tall is not None:
        hc = int(round(column_height(sub) / scale))
        h = hc if hc < tall * h else h
    out: list[Box] = [box]
    for r in widths:
        ww = int(r * h)
        if ww < 0.25 * h or ww > 0.85 * w:
            continue
        n = min(per_width, max(1, int(np.ceil((w - ww) / max(1, stride * ww))) + 1))
        for x0 in np.linspace(x, x + w - ww, n).astype(int):
            c0, c1 = int((x0 - x) * scale), int((x0 - x + ww) * scale)
            rows = _fit_rows(sub, max(0, c0), min(sw, max(c1, c0 + 1)))
            if rows is None:
                continue
            y0, y1 = y + int(rows[0] / scale), y + int(rows[1] / scale)
            if y1 - y0 >= 0.3 * h:
                out.append((int(x0), y0, ww, y1 - y0))
    return out


def split_boxes(box: Box, sub: np.ndarray, scale: float, min_peak: float = 0.45) -> list[Box]:
    """The blob and, when its mask has several cores, the parts a watershed on its distance transform gives."""
    x, y, w, h = box
    dist = cv2.distanceTransform(sub, cv2.DIST_L2, 5)
    peak = dist.max()
    if peak <= 0:
        return [box]
    cores = (dist >= min_peak * peak).astype(np.uint8)
    n, markers = cv2.connectedComponents(cores)
    if n <= 2:
        return [box]
    markers = markers + 1
    markers[(sub > 0) & (cores == 0)] = 0
    img = cv2.cvtColor(np.clip(255 - dist / peak * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    ws = cv2.watershed(img, markers.astype(np.int32))
    out = [box]
    for k in range(2, n + 1):
        ys, xs = np.nonzero(ws == k)
        if len(ys) < 0.05 * sub.sum():
            continue
        out.append((x + int(xs.min() / scale), y + int(ys.min() / scale), int((xs.max() - xs.min() + 1) / scale), int((ys.max() - ys.min() + 1) / scale)))
    return out


def _px_overlap(a: Box, b: Box) -> int:
    return max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))


def _overlap_x(a: Box, b: Box) -> float:
    return _px_overlap(a, b) / max(1, min(a[2], b[2]))


def select_boxes(blob: Blob, scores: np.ndarray, accept: float, nms: float = 0.5,
                 aspects: np.ndarray | None = None, aspect_slack: float | None = 1.25,
                 keep: np.ndarray | None = None, shape_slack: float | None = None,
                 part_margin: float | None = None, seam: float | None = None) -> tuple[list[int], list[Box]]:  # fmt: skip
    """Which of the blob's windows are items (indices into ``blob.windows``), and unknown leftovers.

    ``scores``: ``len(blob.windows) x I`` candidate scores. ``windows`` blobs: the row of windows
    (left to right, neighbours overlapping by at most ``nms`` of the narrower's width) with the
    largest total of (best score - ``accept``), by dynamic programming as in weighted interval
    scheduling: three tight windows on three touching items beat one wide window on all of them
    or a window that takes in half a neighbour, and a window that matches no candidate (a hand)
    is never worth taking. ``aspects`` (per candidate column, its narrowest and widest width /
    height, NaN where unknown): when the whole blob passes ``accept`` and is no wider than
    ``aspect_slack`` x the widest its best-named item is at the blob's height, the blob is that
    one item; a window whose width / height is over ``shape_slack`` x its best-named item's widest
    holds more than that item (a hand, a neighbour), under its narrowest / ``shape_slack`` is a
    part of it, and is never picked. ``part_margin``: two neighbouring picks where one scores the
    other's item within this of its own best, and both together are no wider than that item
    (``aspect_slack`` x its widest), are two parts of that one item, never two items (#16: a
    mug's right half named after a distractor, 0.68, that it scores the mug at 0.65; the sum of
    gains favours two halves over the whole). ``seam``: a pick whose picks on either side cover
    more than this share of its width lies on the seam between them, not on a third item (#16: a
    55 px window 38% under each of two touching items named a distractor carton between them;
    ``nms`` alone judges one neighbour at a time). ``keep`` (per window) is added to the gain of a window that
    passes ``accept``: last frame's items stay picked unless the alternative is clearly better.
    ``split`` blobs keep their parts only when the parts' mean score beats the whole blob's.
    """
    best = scores.max(axis=1) if scores.size else np.zeros(len(blob.windows))
    arg = scores.argmax(axis=1) if scores.size else np.zeros(len(blob.windows), np.int64)
    if blob.kind == "split":
        if len(blob.windows) > 1 and best[1:].mean() > best[0]:
            return list(range(1, len(blob.windows))), []
        return [0], []
    if blob.kind == "whole":
        return [0], []
    wins = blob.windows
    if aspects is not None:
        lo, hi = (aspects, aspects) if aspects.ndim == 1 else (aspects[:, 0], aspects[:, 1])
    if aspects is not None and aspect_slack and scores.size and best[0] > accept:
        a = float(hi[arg[0]])
        if np.isfinite(a) and blob.box[2] <= aspect_slack * a * blob.box[3]:
            return [0], []  # as narrow as the item it names: one item, not parts
    order = sorted(range(len(wins)), key=lambda i: (wins[i][0] + wins[i][2], wins[i][0]))
    gain = best - accept
    if keep is not None:  # last frame's items: picked again unless another row clearly beats them
        gain = gain + np.where(gain > 0, keep, 0.0)
    if aspects is not None and shape_slack and scores.size:
        # far wider than the item it names holds more (a hand, a neighbour); far narrower is a part of it
        r = np.array([w[2] / max(1, w[3]) for w in wins])
        a0, a1 = lo[arg], hi[arg]
        off = np.isfinite(a0) & ((r > shape_slack * a1) | (r < a0 / shape_slack))
        gain = np.where(off, -np.inf, gain)
    total = {i: -np.inf for i in order}
    prev: dict[int, int | None] = {}
    for n, i in enumerate(order):
        if gain[i] <= 0:
            continue
        total[i], prev[i] = float(gain[i]), None
        for j in order[:n]:
            if total[j] == -np.inf or wins[j][0] >= wins[i][0] or _overlap_x(wins[i], wins[j]) > nms:
                continue
            if arg[i] == arg[j] and _overlap_x(wins[i], wins[j]) > 0:
                continue  # one name, one object
            if part_margin is not None and aspects is not None and _one_item(
                wins[j], wins[i], scores[j], scores[i], hi, part_margin, aspect_slack or 1.0
            ):
                continue  # nearly as much its neighbour's item as its own, and both fit in that item
            k = prev.get(j)
            if seam is not None and k is not None and _px_overlap(wins[k], wins[j]) + _px_overlap(wins[j], wins[i]) > seam * wins[j][2]:
                continue  # j lies mostly under its two neighbours: a seam between two items, not a third
            if total[j] + gain[i] > total[i]:
                total[i], prev[i] = total[j] + float(gain[i]), j
    if not prev:
        return [], _leftovers(blob, [])
    end = max(prev, key=lambda i: total[i])
    picked: list[int] = []
    k: int | None = end
    while k is not None:
        picked.append(k)
        k = prev[k]
    picked.reverse()
    return picked, _leftovers(blob, [wins[i] for i in picked])


def _one_item(a: Box, b: Box, sa: np.ndarray, sb: np.ndarray, widest: np.ndarray, margin: float, slack: float) -> bool:
    """Two neighbouring windows (scores ``sa``, ``sb`` per item) that are parts of one item: one
    scores the other's best item within ``margin`` of its own best, and the two together are no
    wider than ``slack`` x that item's ``widest`` width / height."""
    span = max(a[0] + a[2], b[0] + b[2]) - min(a[0], b[0])
    h = max(a[3], b[3])
    for s, other in ((sb, int(sa.argmax())), (sa, int(sb.argmax()))):
        if s[other] >= s.max() - margin and np.isfinite(widest[other]) and span <= slack * widest[other] * h:
            return True
    return False


def _leftovers(blob: Blob, picked: list[Box], min_width: float = 0.45) -> list[Box]:
    """Runs of the blob's width that no picked window covers, as wide as ``min_width`` x its height."""
    x, y, w, h = blob.box
    covered = covered_columns(x, w, picked)
    out, start = [], None
    for i, c in enumerate(np.append(covered, True)):
        if not c and start is None:
            start = i
        elif c and start is not None:
            if i - start >= min_width * h:
                out.append((x + start, y, i - start, h))
            start = None
    return out


# ------------------------------------------------------------------------ the camera's proposer


class Proposer:
    """Where the items are: blobs (frame coordinates) with the windows to score in each.

    ``cfg``: a :class:`~.camera.CameraConfig` (proposals, roi, grid, background, windows...)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self._bg = None
        self._frames = 0
        self.shift = (0.0, 0.0)  # the camera's motion at the last frame (table background only)
        self.mask: np.ndarray | None = None  # the last foreground mask at frame size (table background only)

    def __call__(self, frame: np.ndarray, hold: Sequence[Box] = ()) -> list[Blob]:
        H, W = frame.shape[:2]
        cfg = self.cfg
        x0, y0, w0, h0 = cfg.roi if cfg.roi is not None else (0, 0, W, H)
        self.shift = (0.0, 0.0)
        if cfg.proposals in ("full", "roi"):
            return [Blob((x0, y0, w0, h0), [(x0, y0, w0, h0)], "whole")]
        if cfg.proposals == "grid":
            rows, cols = cfg.grid
            return [
                Blob(b, [b], "whole")
                for r in range(rows)
                for c in range(cols)
                for b in [(x0 + c * w0 // cols, y0 + r * h0 // rows, w0 // cols, h0 // rows)]
            ]
        sub = frame[y0 : y0 + h0, x0 : x0 + w0]
        if cfg.background == "mog2":
            mask, scale = self._mog2(sub), 0.5
        else:
            if self._bg is None:
                self._bg = TableBackground(cfg.warmup_frames)
            mask, self.shift = self._bg.apply(sub, [(x - x0, y - y0, w, h) for x, y, w, h in hold])
            scale = self._bg.scale
            full = np.zeros((H, W), np.uint8)
            full[y0 : y0 + h0, x0 : x0 + w0] = cv2.dilate(cv2.resize(mask, (w0, h0), interpolation=cv2.INTER_NEAREST), np.ones((5, 5), np.uint8))
            self.mask = full
        out = []
        for (bx, by, bw, bh), m in blobs_from_mask(mask, scale, cfg.min_area, cfg.max_crops):
            box = (x0 + bx, y0 + by, bw, bh)
            if cfg.proposals == "windows":
                wins = window_boxes(box, m, scale, cfg.window_widths, cfg.window_stride, cfg.window_positions, cfg.window_tall)
                out.append(Blob(box, wins, "windows"))
            elif cfg.proposals == "split":
                out.append(Blob(box, split_boxes(box, m, scale), "split"))
            else:
                out.append(Blob(box, [box], "whole"))
        return out

    def light(self, box: Box) -> float:
        """How bright the light is at ``box`` (frame coordinates) against the light the table
        background was learnt in (0.5: dimmed to half); 1 before it is learnt or without it."""
        bg = self._bg if isinstance(self._bg, TableBackground) else None
        if bg is None or bg.gain is None:
            return 1.0
        x0, y0 = self.cfg.roi[:2] if self.cfg.roi is not None else (0, 0)
        x, y, w, h = box
        s = bg.scale
        part = bg.gain[max(0, int((y - y0) * s)) : max(0, int((y - y0 + h) * s)) + 1, max(0, int((x - x0) * s)) : max(0, int((x - x0 + w) * s)) + 1]
        return float(np.median(part)) if part.size else 1.0

    def _mog2(self, sub: np.ndarray) -> np.ndarray:
        """Today's foreground before the table background: MOG2, no shadow or motion handling."""
        if self._bg is None:
            self._bg = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=32, detectShadows=False)
        h0, w0 = sub.shape[:2]
        small = cv2.resize(sub, (max(1, w0 // 2), max(1, h0 // 2)), interpolation=cv2.INTER_AREA)
        self._frames += 1
        if self._frames <= self.cfg.warmup_frames:  # learn the empty scene
            self._bg.apply(small)
            return np.zeros(small.shape[:2], np.uint8)
        # then learn slowly, so items lying still are not absorbed into the background
        mask = self._bg.apply(small, learningRate=self.cfg.bg_learning_rate)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k, iterations=3)
