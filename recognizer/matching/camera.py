"""Real-time camera matching: live frames against a constrained candidate set, with stable labels.

Pipeline per frame: capture (own thread; the worker always takes the newest frame, so
lag never builds up) -> proposals (full frame, a fixed ROI, a grid of crops, or blobs over
a background model of the table that follows light changes, shadows and camera pans; a
blob of touching items is separated by candidate-guided windows or by splitting its mask,
:mod:`.proposals`; a window's scores are kept a few frames, :mod:`.window_pool`, so a frame
embeds last frame's items and only as many more windows as fit in ``frame_ms``) -> the
frame's crops embedded as one batch -> scores against the candidate items only (never a scan
of the gallery), each crop's best items re-scored by their colours (the object's pixels, relit to
the light the table was learnt in, against the items' plain-background photos, :mod:`.item_looks`)
-> windows picked by score (NMS; what matches no candidate stays ``unknown``)
-> tracks (:mod:`.tracking`: IoU association, EMA, one-to-one Hungarian assignment,
hysteresis, coasting through short occlusions, geometric verification once per track and
again when its box jumps) -> JSONL events (appear, change, leave), an optional per-frame
state stream, and an annotated frame with per-stage latencies.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..gallery import Gallery
from ..models.model import EmbeddingModel
from .camera_config import BACKGROUNDS, PROPOSALS, VERIFY, CameraConfig
from .cues import COLOUR_TOP_K, colour_affinities, colour_histogram, colour_penalty
from .item_looks import item_aspects, item_colours
from .pipeline import Recognizer
from .proposals import Blob, Proposer, select_boxes
from .rerank import RerankConfig
from .track_verify import TrackVerifier
from .tracking import UNKNOWN, Box, Event, LabelTracker, Track, assign, covered_columns, intersection, iou
from .video import FrameSource
from .window_pool import Scored, WindowPool, half, thumb

__all__ = ["BACKGROUNDS", "PROPOSALS", "UNKNOWN", "VERIFY", "Box", "CameraConfig", "CameraMatcher", "Event", "LabelTracker",
           "Track", "assign", "held_tracks", "iou", "label_accuracy", "latency_table", "run_camera"]  # fmt: skip

_MS_PER_CROP: dict[tuple[int, str], tuple[weakref.ref, float]] = {}


def ms_per_crop(rec: Recognizer) -> float:
    """Milliseconds to embed one crop (a batch of 4) with this recognizer's embedder and framing.

    Timed once per embedder and framing in a process, so the crop budget is fixed for a run and
    the same for every camera on one embedder (labels do not follow the machine's load, and a
    benchmark's configurations get one budget): the median of 9 timings after 3 untimed calls
    (the first calls after loading run slower; a median of 3 after one call gave budgets of 2-6
    crops from one ONNX export here, and 3-6 from 5 timings, each camera timing it anew).
    """
    key = (id(rec.model), repr(rec.query))
    hit = _MS_PER_CROP.get(key)
    if hit is not None and hit[0]() is rec.model:
        return hit[1]
    rng = np.random.default_rng(0)
    dummy = [rng.integers(0, 256, (150, 110, 3), np.uint8) for _ in range(4)]
    for _ in range(3):
        rec.embed_arrays(dummy)
    ms = []
    for _ in range(9):
        t = time.perf_counter()
        rec.embed_arrays(dummy)
        ms.append(1000 * (time.perf_counter() - t) / 4)
    out = float(np.median(ms))
    with contextlib.suppress(TypeError):  # an embedder without weak references is timed again next time
        _MS_PER_CROP[key] = (weakref.ref(rec.model), out)
    return out


def held_tracks(tracks: Sequence[Track], mask: np.ndarray | None, frames: int, fill: float = 0.6, min_age: int = 10) -> set[int]:
    """Ids of named tracks that lost their box but whose place is still covered: a hand over the
    items, or items merged with it into one blob that no window could part this frame. They stay
    shown where they coast (their last box, moved on as it moved) for ``frames`` frames (#16:
    without it every item under the hand vanished for a few frames; hand recall 0.935 -> 0.958
    over 5 seeds). Not held: a track whose place is empty (under ``fill`` of its box foreground
    in ``mask``: the item was taken away), whose columns are half under items shown now (what
    covers its place is them), whose name is shown on another box, or younger than ``min_age``
    frames seen (a seam's short-lived phantom)."""
    if mask is None or not frames:
        return set()
    shown = [tr.box for tr in tracks if tr.missed == 0 and tr.label != UNKNOWN]
    names = {tr.label for tr in tracks if tr.missed == 0}
    out: set[int] = set()
    for tr in sorted(tracks, key=lambda tr: tr.missed):  # the most recently seen first
        if not 0 < tr.missed <= frames or not tr.announced or tr.label in (UNKNOWN, *names) or tr.age < min_age:
            continue
        x, y, w, h = tr.box
        part = mask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]
        if not part.size or (part > 0).mean() < fill:
            continue
        if covered_columns(x, w, shown).mean() < 0.5:
            out.add(tr.track_id)
            shown.append(tr.box)
    return out


def relit(rgb: np.ndarray, light: float) -> np.ndarray:
    """The crop as under the light the table was learnt in (``light``: :meth:`~.proposals.Proposer.light`):
    an item's colours, brightness included, are compared with its photos' (#16: light dimmed to half
    moved a white carton's HSV value bins, and the colour cue lost it)."""
    if abs(light - 1.0) < 0.05 or light <= 0:
        return rgb
    return np.clip(rgb.astype(np.float32) / light, 0, 255).astype(np.uint8)


def pad_square(rgb: np.ndarray, fill: int) -> np.ndarray:
    """The crop centred on a square of ``fill``: the model sees the item's true shape, not a stretched one."""
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    n = max(h, w)
    out = np.full((n, n, 3), fill, np.uint8)
    y, x = (n - h) // 2, (n - w) // 2
    out[y : y + h, x : x + w] = rgb
    return out


def crop(frame_rgb: np.ndarray, box: Box, pad: float) -> np.ndarray:
    """The box with ``pad`` context on each side, clipped to the frame."""
    H, W = frame_rgb.shape[:2]
    x, y, w, h = box
    px, py = int(w * pad), int(h * pad)
    x0, y0 = max(0, x - px), max(0, y - py)
    x1, y1 = min(W, x + w + px), min(H, y + h + py)
    return frame_rgb[y0:y1, x0:x1]


# ---------------------------------------------------------------------------- the loop


@dataclass
class StageTimes:
    """Per-stage latencies in milliseconds, one entry per processed frame."""

    names: tuple[str, ...] = (
        "capture_wait",
        "proposals",
        "preprocess_embed",
        "search",
        "track",
        "verify",
        "total",
        "crops",
    )
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.values.setdefault(k, []).append(v)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            k: {
                "mean": float(np.mean(v)),
                "p50": float(np.percentile(v, 50)),
                "p95": float(np.percentile(v, 95)),
            }
            for k, v in self.values.items()
            if v
        }


def fit_caption(label: str, score: float, width: int) -> tuple[str, tuple[int, int]]:
    """A box's caption no wider than ``width`` px where it can be: a long name shortened with ".."
    (the score kept), then for ``unknown`` the score dropped (the word is never cut)."""
    tail = f" {score:.2f}" if np.isfinite(score) else ""
    if label == UNKNOWN:
        options = [label + tail, label]
    else:
        options = [label + tail] + [label[:k] + ".." + tail for k in range(len(label) - 3, 3, -1)]
    for text in options:
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0]
        if size[0] + 4 <= width:
            break
    return text, size


def caption_row(placed: Sequence[Box], x: int, ty: int, w: int, h: int) -> int:
    """Baseline for a ``w`` x ``h`` caption at ``x``: its box's top (``ty``), else the nearest row
    above (or, where the frame's top leaves no room, below) that no caption already drawn takes:
    touching items' names stack, none hides another."""
    rows = [ty - k * h for k in range(len(placed) + 1) if ty - k * h >= h - 3]
    rows += [ty + k * h for k in range(1, len(placed) + 1)]
    for row in rows:
        if not any(intersection((x, row - h + 3, w, h), p) for p in placed):
            return row
    return ty


class CameraMatcher:
    """Matches frames against a gallery's candidate items; usable on any frame source or in tests."""

    def __init__(
        self,
        gallery: Gallery,
        model: EmbeddingModel,
        candidates: Sequence[str] | None = None,
        cfg: CameraConfig | None = None,
    ):
        self.gallery = gallery
        self.model = model
        gallery.check_model(model.fingerprint, "the camera's model")
        self.cfg = cfg or CameraConfig()
        self.candidates = list(dict.fromkeys(candidates)) if candidates else list(gallery.item_ids)
        gallery.item_scores(np.ones((1, gallery.embedding_dim), np.float32), self.candidates)  # unknown ids raise
        self.rec = Recognizer(gallery, model, self.cfg.query, self.cfg.rerank)
        thr = gallery.threshold if self.cfg.threshold is None else self.cfg.threshold
        self.threshold = max(thr, self.cfg.min_score)
        verify_cfg = self._verify_config()
        self.verifier = TrackVerifier(gallery, self.candidates, verify_cfg, self.cfg.verify_lag) if verify_cfg else None
        self.tracker = LabelTracker(
            self.candidates, self.cfg, self.threshold, one_to_one=bool(candidates),
            verifier=self._verify_track if self.verifier else None,
        )  # fmt: skip
        self.proposer = Proposer(self.cfg)
        # how narrow and wide each candidate's item looks (plain-background photos): a lone item's blob stays
        # whole, a window of the wrong shape is not that item; a table's candidates are read at start, a
        # 10,000-item gallery without a candidate list reads an item when a window is first named after it
        self._use_aspects = self.cfg.proposals == "windows" and bool(self.cfg.aspect_slack or self.cfg.shape_slack)
        self.aspects = np.full((len(self.candidates), 2), np.nan, np.float32)
        self._aspect_known = np.zeros(len(self.candidates), bool)
        if self._use_aspects and candidates and len(self.candidates) <= 64:  # a table's few: read now, not mid-stream
            self.aspects[:] = item_aspects(gallery, self.candidates)
            self._aspect_known[:] = True
        # each candidate's colours (CameraConfig.colour), read like its widths: a table's now, a large gallery's when first needed
        self._colours: list[np.ndarray | None] = [None] * len(self.candidates)
        if self.cfg.colour and candidates and len(self.candidates) <= 64:
            self._colours = list(item_colours(gallery, self.candidates))
        self.times = StageTimes()
        self._rgb: np.ndarray | None = None
        self._held: set[int] = set()  # tracks shown though they lost their box this frame (:func:`held_tracks`)
        budget = self.cfg.crop_budget or (self._crop_budget() if self.cfg.proposals == "windows" else None)
        self.pool = WindowPool(self.cfg.refresh_frames, budget, explore=self.cfg.explore_min,
                               burst=self.cfg.search_on_change, anchor_every=self.cfg.anchor_every, change=self.cfg.stale_change,
                               refit=self.cfg.refit_width, register=self.cfg.register_px)  # fmt: skip

    def _verify_config(self) -> RerankConfig | None:
        method = self.cfg.verify
        if method == "auto":
            stored = self.gallery.features.methods()
            method = next((m for m in ("sift", "orb") if m in stored), "none")
        return None if method == "none" else RerankConfig(method=method, top_k=self.cfg.verify_top)

    def _verify_track(self, tr: Track, cols: np.ndarray) -> np.ndarray | None:
        """Verify these labels on the track's current crop: the bonus per label (zero elsewhere)
        now, or None when the worker thread delivers it at the next frame."""
        if self._rgb is None:
            return np.zeros(len(self.candidates), np.float32)
        return self.verifier.request(tr, cols, crop(self._rgb, tr.box, self.cfg.pad))

    def close(self) -> None:
        """Stop the verification worker (a matcher dropped without it leaves an idle thread)."""
        if self.verifier is not None:
            self.verifier.close()

    def process(
        self, index: int, t: float, frame_bgr: np.ndarray, capture_wait_ms: float = 0.0
    ) -> list[Event]:
        t0 = time.perf_counter()
        if self.verifier is not None:  # verifications asked for verify_lag frames ago (waits for them)
            self.tracker.deliver(self.verifier.collect())
        tv = time.perf_counter()
        blobs = self.proposer(frame_bgr, [tr.box for tr in self.tracker.tracks])
        dx, dy = self.proposer.shift
        if dx or dy:
            self.tracker.shift(dx, dy)
            self.pool.shift(dx, dy)
        pooled = self.cfg.proposals == "windows"
        gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if pooled and (self.pool.change or self.pool.register) else None
        sig = (lambda b: thumb(gray, b)) if gray is not None and self.pool.change is not None else None  # noqa: E731
        small = half(gray) if gray is not None and self.pool.register else None  # registers items: CameraConfig.register_px
        plan = self.pool.plan(blobs, sig, small) if pooled else [[Scored(w, None) for w in b.windows] for b in blobs]
        t1 = time.perf_counter()
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        self._rgb = rgb
        todo = [e for es in plan for e in es if e.scores is None]
        crops = [crop(rgb, e.box, self.cfg.pad) for e in todo]
        mask = self.proposer.mask
        masks = [crop(mask, e.box, self.cfg.pad) for e in todo] if mask is not None else [None] * len(todo)
        # the colour cue reads the object's own pixels: only where the table background says which they are
        hists = [colour_histogram(relit(c, self.proposer.light(e.box)), m) for c, m, e in zip(crops, masks, todo, strict=True)] if self.cfg.colour and mask is not None else []
        if self.cfg.mask_fill is not None and mask is not None and crops:
            fill = self.cfg.mask_fill
            crops = [np.where(m[:, :, None] > 0, c, np.uint8(fill)) for c, m in zip(crops, masks, strict=True)]
        if self.cfg.square and self.cfg.proposals in ("foreground", "split", "windows"):
            crops = [pad_square(c, 128 if self.cfg.mask_fill is None else self.cfg.mask_fill) for c in crops]
        views = self.rec.embed_arrays(crops)  # every crop of the frame in one forward
        t2 = time.perf_counter()
        if crops:
            _, scores = self.rec.scores(views, range(len(crops)), self.candidates)
            scores = self.rec.verify(self.candidates, scores, lambda i: crops[i])
            if hists:
                scores = colour_penalty(scores, self._colour_affinities(np.stack(hists), scores), self.cfg.colour)
            for e, row in zip(todo, scores, strict=True):
                e.scores, e.sig = row, None if sig is None else sig(e.box)
        boxes, rows, unnamed = self._select(blobs, plan, small)
        t3 = time.perf_counter()
        events = self.tracker.update(index, t, boxes, rows, unnamed, view=(0, 0, frame_bgr.shape[1], frame_bgr.shape[0]))
        cfg = self.cfg
        self._held = held_tracks(self.tracker.tracks, self.proposer.mask, cfg.hold_frames, cfg.hold_fill, cfg.hold_age)
        t4 = time.perf_counter()
        self.tracker.verify_new(self.cfg.verify_top)
        t5 = time.perf_counter()
        self.times.add(
            capture_wait=capture_wait_ms,
            proposals=1000 * (t1 - tv),
            preprocess_embed=1000 * (t2 - t1),
            search=1000 * (t3 - t2),
            track=1000 * (t4 - t3),
            verify=1000 * (t5 - t4 + tv - t0),
            total=capture_wait_ms + 1000 * (t5 - t0),
            crops=float(len(crops)),
        )
        return events

    def _crop_budget(self, other_ms: float = 10.0) -> int | None:
        """Crops a frame can embed within ``frame_ms``, from the embedder's ms per crop
        (:func:`ms_per_crop`, timed once per embedder and framing in a process); ``other_ms``: the
        rest of a frame (background 5-8 ms, cropping, scoring, tracking; measured in #16)."""
        if self.cfg.frame_ms is None:
            return None
        return max(1, int((self.cfg.frame_ms - other_ms) / max(ms_per_crop(self.rec), 0.1)))

    def _select(self, blobs: list[Blob], plan: list[list[Scored]], small: np.ndarray | None = None) -> tuple[list[Box], np.ndarray, list[bool]]:
        """The item boxes of each blob (among its scored windows, pooled ones included), their
        score rows, and which are leftovers: those get the scores of the window overlapping them
        most (below the threshold, so they read unknown). ``small`` (this frame, grey, half size)
        goes to the pool with the picks: what each item shows (``register_px``)."""
        boxes: list[Box] = []
        unnamed: list[bool] = []  # a leftover: a part of a blob no window named
        rows: list[np.ndarray] = []
        picks: list[list[int]] = []
        n = len(self.candidates)
        for b, es in zip(blobs, plan, strict=True):
            # the whole blob first (select_boxes' one-item rule reads it); unscored now: zeros, never picked
            whole = next((i for i, e in enumerate(es) if iou(e.box, b.box) >= 0.9), None)
            order = ([whole] if whole is not None else []) + [i for i in range(len(es)) if i != whole]
            wins = [b.box] + [es[i].box for i in order[1 if whole is not None else 0 :]]
            s = np.stack([es[i].scores for i in order]) if order else np.zeros((0, n), np.float32)
            if whole is None:
                s = np.concatenate([np.zeros((1, n), np.float32), s])
            blob = Blob(b.box, wins, b.kind)
            if self._use_aspects:
                for c in set(np.argmax(s, axis=1).tolist()):
                    self._read_aspect(int(c))
            src = order if whole is not None else [-1] + order  # window index -> pool entry
            keep = np.array([self.cfg.keep_bonus if k >= 0 and es[k].anchor else 0.0 for k in src], np.float32)
            picked, rest = select_boxes(blob, s, self.threshold, self.cfg.nms, self.aspects if self._use_aspects else None,
                                        self.cfg.aspect_slack, keep, self.cfg.shape_slack, self.cfg.part_margin, self.cfg.seam_cover)  # fmt: skip
            picks.append([src[j] for j in picked if src[j] >= 0])
            for j in picked:
                boxes.append(wins[j])
                rows.append(s[j])
                unnamed.append(False)
            for box in rest:
                j = int(np.argmax([iou(box, w) for w in wins]))
                boxes.append(box)
                rows.append(np.minimum(s[j], self.threshold - 1e-3))
                unnamed.append(True)
        if self.cfg.proposals == "windows":
            self.pool.commit(blobs, plan, picks, small)
        return boxes, np.array(rows, np.float32).reshape(len(rows), n), unnamed

    def _shown(self, tr: Track) -> bool:
        return tr.announced and (tr.missed == 0 or tr.track_id in self._held)

    def _colour_affinities(self, hists: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """``crops x candidates`` colour affinities, for the items the colour cue re-scores (NaN elsewhere)."""
        need = np.unique(np.argsort(-scores, axis=1)[:, :COLOUR_TOP_K])
        new = [int(c) for c in need if self._colours[c] is None]
        for c, h in zip(new, item_colours(self.gallery, [self.candidates[c] for c in new]), strict=True):
            self._colours[c] = h
        out = np.full(scores.shape, np.nan, np.float32)
        out[:, need] = colour_affinities(hists, [self._colours[int(c)] for c in need])
        return out

    def _read_aspect(self, col: int) -> None:
        if not self._aspect_known[col]:
            self.aspects[col] = item_aspects(self.gallery, [self.candidates[col]])[0]
            self._aspect_known[col] = True

    def state(self, index: int, t: float) -> dict[str, Any]:
        """Every alive, named track at this frame: one line of ``--frames-jsonl``. ``visible``: shown
        this frame (seen, or held under a hand); hidden ones coast until they leave."""
        return {
            "frame": index, "time": round(float(t), 4),
            "tracks": [{**tr.to_state(), "visible": self._shown(tr)} for tr in self.tracker.tracks if tr.announced],
        }  # fmt: skip

    def annotate(self, frame_bgr: np.ndarray, fps: float) -> np.ndarray:
        out = frame_bgr.copy()
        # unknown boxes first: a named item's label is never hidden under a neighbouring unknown's
        # left to right: each caption takes the lowest row free of those drawn (caption_row)
        shown = [
            tr for tr in sorted(self.tracker.tracks, key=lambda tr: (tr.label != UNKNOWN, tr.box[0]))
            if not tr.missed or tr.track_id in self._held
        ]  # fmt: skip
        color = {tr.track_id: (0, 200, 0) if tr.label != UNKNOWN else (0, 0, 230) for tr in shown}
        for tr in shown:  # every box first: no box's outline is drawn across a caption
            x, y, w, h = tr.box
            cv2.rectangle(out, (x, y), (x + w, y + h), color[tr.track_id], 1 if tr.missed else 2)  # held: thin
        placed: list[Box] = []  # captions drawn so far
        for tr in shown:
            x, y, w, _ = tr.box
            text, (tw, th) = fit_caption(tr.label, tr.score, max(w, 72))
            ty = caption_row(placed, x, max(th + 4, y - 4), tw + 4, th + 7)
            placed.append((x, ty - th - 4, tw + 4, th + 7))
            px, py, pw, ph = placed[-1]
            cv2.rectangle(out, (px, py), (px + pw, py + ph), color[tr.track_id], -1)
            cv2.putText(
                out, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
            )
        last = {k: v[-1] for k, v in self.times.values.items() if v}
        lines = [f"{fps:.1f} fps, {int(last.get('crops', 0))} crops"] + [
            f"{k} {last[k]:.1f} ms" for k in ("proposals", "preprocess_embed", "search", "track", "verify") if k in last
        ]
        panel = out[0 : 8 + 15 * len(lines), 0:210]
        panel[:] = (panel * 0.35).astype(np.uint8)  # darken behind the text
        for i, ln in enumerate(lines):
            cv2.putText(
                out, ln, (6, 16 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA
            )
        return out

    def labels(self) -> list[tuple[Box, str, float]]:
        """The current frame's visible tracks: (box, label, score)."""
        return [(tr.box, tr.label, tr.score) for tr in self.tracker.tracks if self._shown(tr)]


def _display_available() -> bool:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    try:  # opencv-python-headless has no GUI backend
        cv2.namedWindow("recognizer")
        return True
    except cv2.error:
        return False


def run_camera(
    gallery: Gallery,
    model: EmbeddingModel,
    source: str | int | os.PathLike,
    *,
    candidates: Sequence[str] | None = None,
    cfg: CameraConfig | None = None,
    headless: bool = False,
    out_video: str | os.PathLike | None = None,
    jsonl: str | os.PathLike | None = None,
    realtime: bool | None = None,
    max_frames: int | None = None,
    frame_log: list | None = None,
    frames_jsonl: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the live loop until the source ends (or ``max_frames``); returns stats and latencies.

    ``frame_log``, when given, receives ``(frame index, [(box, label, score), ...])`` per
    processed frame, for evaluation against a known truth. ``frames_jsonl``: one JSON line per
    processed frame with every alive track (:meth:`CameraMatcher.state`), so a consumer never
    has to replay the events.
    """
    matcher = CameraMatcher(gallery, model, candidates, cfg)
    show = not headless and _display_available()
    if not headless and not show:
        print("no display (or OpenCV without GUI support): running headless")
    src = FrameSource(source, realtime=realtime)
    writer = None
    events_f = open(jsonl, "w", encoding="utf-8") if jsonl else None  # noqa: SIM115
    frames_f = open(frames_jsonl, "w", encoding="utf-8") if frames_jsonl else None  # noqa: SIM115
    n = 0
    t_first = None
    fps = 0.0
    try:
        while max_frames is None or n < max_frames:
            t_wait = time.perf_counter()
            got = src.read()
            if got is None:
                break
            index, t_cap, frame = got
            wait_ms = 1000 * (time.perf_counter() - t_wait)
            events = matcher.process(index, t_cap, frame, wait_ms)
            n += 1
            now = time.perf_counter()
            t_first = t_first or now
            fps = (n - 1) / (now - t_first) if now > t_first else 0.0
            if events_f:
                for e in events:
                    events_f.write(e.to_json() + "\n")
            if frames_f:
                frames_f.write(json.dumps(matcher.state(index, t_cap)) + "\n")
            if frame_log is not None:
                frame_log.append((index, matcher.labels()))
            if out_video or show:
                vis = matcher.annotate(frame, fps)
                if out_video:
                    if writer is None:
                        h, w = vis.shape[:2]
                        writer = cv2.VideoWriter(
                            str(out_video), cv2.VideoWriter_fourcc(*"mp4v"), src.fps, (w, h)
                        )
                    writer.write(vis)
                if show:
                    cv2.imshow("recognizer", vis)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
    finally:
        matcher.close()
        src.close()
        if writer is not None:
            writer.release()
        if events_f:
            events_f.close()
        if frames_f:
            frames_f.close()
        if show:
            cv2.destroyAllWindows()
    return {
        "frames": n, "dropped_frames": src.dropped, "fps": fps, "latency_ms": matcher.times.summary(),
        "verifications": matcher.tracker.verifications, "crop_budget": matcher.pool.budget,
    }  # fmt: skip


def latency_table(stats: dict[str, Any]) -> str:
    """Markdown table of per-stage latencies."""
    lines = ["| stage | mean ms | p50 ms | p95 ms |", "|---|---|---|---|"]
    for k, v in stats["latency_ms"].items():
        if k == "crops":
            continue
        lines.append(f"| {k} | {v['mean']:.2f} | {v['p50']:.2f} | {v['p95']:.2f} |")
    crops = stats["latency_ms"].get("crops", {}).get("mean", 0.0)
    budget = stats.get("crop_budget")
    lines.append(
        f"\n{stats['frames']} frames, {stats['fps']:.1f} frames/s, {crops:.1f} crops/frame"
        + (f" (budget {budget} a frame)" if budget else "") + f", {stats['dropped_frames']} dropped"
    )
    return "\n".join(lines)


def label_accuracy(
    truth: Sequence[tuple[int, list[tuple[str, Box]]]],
    frame_log: Sequence[tuple[int, list[tuple[Box, str, float]]]],
    fps: float,
    *,
    settle_seconds: float = 1.0,
    min_iou: float = 0.3,
) -> dict[str, float]:
    """Share of (frame, visible item) pairs, after each item's first ``settle_seconds``, labelled right.

    A truth box counts as right when the output box overlapping it most (IoU >= ``min_iou``)
    carries its item id; a missing box counts as wrong.
    """
    first_seen: dict[str, int] = {}
    for f, vis in truth:
        for item, _ in vis:
            first_seen.setdefault(item, f)
    out = dict(frame_log)
    settle = int(round(settle_seconds * fps))
    right = total = 0
    per_item: dict[str, list[int]] = {}
    for f, vis in truth:
        if f not in out:
            continue
        for item, box in vis:
            if f < first_seen[item] + settle:
                continue
            best = max(out[f], key=lambda o: iou(o[0], box), default=None)
            ok = best is not None and iou(best[0], box) >= min_iou and best[1] == item
            right += ok
            total += 1
            per_item.setdefault(item, [0, 0])
            per_item[item][0] += ok
            per_item[item][1] += 1
    return {
        "accuracy": right / total if total else float("nan"),
        "evaluated": total,
        **{f"item:{k}": v[0] / v[1] for k, v in per_item.items()},
    }
