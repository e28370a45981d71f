"""Real-time camera matching: live frames against a constrained candidate set, with stable labels.

Pipeline per frame: capture (own thread; the worker always takes the newest frame, so
lag never builds up) -> proposals (full frame, a fixed ROI, a grid of crops, or
foreground contours) -> all crops embedded as one batch -> scores against the candidate
items only (never a scan of the gallery) -> tracks (boxes associated across frames by
IoU) whose scores are smoothed by an EMA -> a one-to-one assignment (Hungarian) of
candidate items to tracks -> labels that change only after a few consistent frames
(hysteresis), "unknown" below the gallery's threshold -> JSONL events (appear, change,
leave) and an annotated frame with per-stage latencies.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..gallery import Gallery
from ..models.model import EmbeddingModel
from .options import QueryOptions
from .pipeline import Recognizer
from .rerank import RerankConfig
from .video import FrameSource

PROPOSALS = ("full", "roi", "grid", "foreground")
UNKNOWN = "unknown"
Box = tuple[int, int, int, int]  # x, y, w, h


@dataclass
class CameraConfig:
    """Everything that shapes the live loop; defaults suit a fixed camera over a table."""

    proposals: str = "foreground"
    roi: Box | None = None
    grid: tuple[int, int] = (2, 2)
    min_area: float = 0.01  # foreground blobs smaller than this share of the frame are ignored
    max_crops: int = 8
    pad: float = 0.08  # context around each box, as a share of its size
    ema: float = 0.5  # weight of the newest frame's scores
    switch_frames: int = 3  # consecutive frames a new label must win before it replaces the old one
    switch_margin: float = 0.03  # ... and by at least this much over the current label's smoothed score
    leave_frames: int = 8  # frames without a box before a track is dropped
    iou_match: float = 0.25
    threshold: float | None = None  # default: the gallery's
    query: QueryOptions = field(default_factory=QueryOptions)  # framing of each crop (zoom, multi-crop)
    rerank: RerankConfig | None = None  # geometric verification of each crop's top candidates
    warmup_frames: int = 10  # foreground: frames of the empty scene to learn the background from
    bg_learning_rate: float = 0.0005  # foreground: background adaptation after the warm-up

    def __post_init__(self) -> None:
        if self.proposals not in PROPOSALS:
            raise ValueError(f"proposals {self.proposals!r} is not one of {', '.join(PROPOSALS)}")
        if self.proposals == "roi" and self.roi is None:
            raise ValueError("proposals='roi' needs roi=(x, y, w, h)")
        if not 0 < self.ema <= 1:
            raise ValueError(f"ema must be in (0, 1], got {self.ema}")


# ----------------------------------------------------------------------------- proposals


class Proposer:
    """Where the items are: boxes in frame coordinates."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg
        self._bg = None
        self._frames = 0

    def __call__(self, frame: np.ndarray) -> list[Box]:
        H, W = frame.shape[:2]
        cfg = self.cfg
        x0, y0, w0, h0 = cfg.roi if cfg.roi is not None else (0, 0, W, H)
        if cfg.proposals in ("full", "roi"):
            return [(x0, y0, w0, h0)]
        if cfg.proposals == "grid":
            rows, cols = cfg.grid
            return [
                (x0 + c * w0 // cols, y0 + r * h0 // rows, w0 // cols, h0 // rows)
                for r in range(rows)
                for c in range(cols)
            ]
        return self._foreground(frame, (x0, y0, w0, h0))

    def _foreground(self, frame: np.ndarray, roi: Box) -> list[Box]:
        if self._bg is None:
            self._bg = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=32, detectShadows=False)
        x0, y0, w0, h0 = roi
        sub = frame[y0 : y0 + h0, x0 : x0 + w0]
        small = cv2.resize(sub, (max(1, w0 // 2), max(1, h0 // 2)), interpolation=cv2.INTER_AREA)
        self._frames += 1
        if self._frames <= self.cfg.warmup_frames:  # learn the empty scene
            self._bg.apply(small)
            return []
        # then learn slowly, so items lying still are not absorbed into the background
        mask = self._bg.apply(small, learningRate=self.cfg.bg_learning_rate)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k, iterations=3)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.cfg.min_area * small.shape[0] * small.shape[1]
        boxes = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= min_area]
        boxes.sort(key=lambda b: -b[2] * b[3])
        return [(x0 + 2 * x, y0 + 2 * y, 2 * w, 2 * h) for x, y, w, h in boxes[: self.cfg.max_crops]]


def crop(frame_rgb: np.ndarray, box: Box, pad: float) -> np.ndarray:
    """The box with ``pad`` context on each side, clipped to the frame."""
    H, W = frame_rgb.shape[:2]
    x, y, w, h = box
    px, py = int(w * pad), int(h * pad)
    x0, y0 = max(0, x - px), max(0, y - py)
    x1, y1 = min(W, x + w + px), min(H, y + h + py)
    return frame_rgb[y0:y1, x0:x1]


def iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------ tracking


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
        d["box"] = list(self.box)
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


class LabelTracker:
    """Associates boxes across frames and keeps each track's label stable (EMA + hysteresis)."""

    def __init__(self, labels: Sequence[str], cfg: CameraConfig, threshold: float, one_to_one: bool):
        self.labels = list(labels)
        self.cfg = cfg
        self.threshold = threshold
        self.one_to_one = one_to_one
        self.tracks: list[Track] = []
        self._next_id = 1
        self._col = {it: j for j, it in enumerate(self.labels)}

    def update(self, frame_index: int, t: float, boxes: list[Box], scores: np.ndarray) -> list[Event]:
        """Feed one frame's boxes and their ``len(boxes) x len(labels)`` scores; returns events."""
        cfg = self.cfg
        events: list[Event] = []
        unmatched = set(range(len(boxes)))
        pairs = sorted(
            ((iou(tr.box, b), ti, bi) for ti, tr in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        used_tracks: set[int] = set()
        for ov, ti, bi in pairs:
            if ov < cfg.iou_match or ti in used_tracks or bi not in unmatched:
                continue
            tr = self.tracks[ti]
            tr.box = boxes[bi]
            tr.scores = cfg.ema * scores[bi] + (1 - cfg.ema) * tr.scores
            tr.missed = 0
            tr.age += 1
            used_tracks.add(ti)
            unmatched.discard(bi)
        for ti, tr in enumerate(self.tracks):
            if ti not in used_tracks:
                tr.missed += 1
        for bi in sorted(unmatched):
            self.tracks.append(Track(self._next_id, boxes[bi], scores[bi].copy()))
            self._next_id += 1
        # drop tracks gone too long
        keep = []
        for tr in self.tracks:
            if tr.missed > cfg.leave_frames:
                if tr.announced:
                    events.append(
                        Event("leave", frame_index, t, tr.track_id, tr.label, None, tr.score, tr.box)
                    )
            else:
                keep.append(tr)
        self.tracks = keep
        visible = [tr for tr in self.tracks if tr.missed == 0]
        if visible and self.labels:
            mat = np.stack([tr.scores for tr in visible])
            chosen = assign(mat, self.one_to_one)
            for tr, c in zip(visible, chosen, strict=True):
                s = float(tr.scores[c])
                proposal = self.labels[c] if s >= self.threshold else UNKNOWN
                cur = self._col.get(tr.label)
                if (
                    proposal not in (tr.label, UNKNOWN)
                    and cur is not None
                    and tr.scores[cur] + cfg.switch_margin > s
                ):
                    proposal, s = tr.label, float(tr.scores[cur])  # a challenger must win clearly
                events += self._hysteresis(tr, proposal, s, frame_index, t)
        return events

    def _hysteresis(self, tr: Track, proposal: str, score: float, frame_index: int, t: float) -> list[Event]:
        if proposal == tr.label:
            tr.pending, tr.pending_count, tr.score = None, 0, score
            return []
        if proposal == tr.pending:
            tr.pending_count += 1
        else:
            tr.pending, tr.pending_count = proposal, 1
        need = 1 if not tr.announced else self.cfg.switch_frames
        if tr.pending_count < need:
            return []
        prev = tr.label
        tr.label, tr.score, tr.pending, tr.pending_count = proposal, score, None, 0
        kind = "appear" if not tr.announced else "change"
        tr.announced = True
        return [
            Event(
                kind, frame_index, t, tr.track_id, proposal, None if kind == "appear" else prev, score, tr.box
            )
        ]


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
        self.tracker = LabelTracker(self.candidates, self.cfg, thr, one_to_one=bool(candidates))
        self.proposer = Proposer(self.cfg)
        self.times = StageTimes()

    def process(
        self, index: int, t: float, frame_bgr: np.ndarray, capture_wait_ms: float = 0.0
    ) -> list[Event]:
        t0 = time.perf_counter()
        boxes = self.proposer(frame_bgr)
        t1 = time.perf_counter()
        rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
        crops = [crop(rgb, b, self.cfg.pad) for b in boxes]
        views = self.rec.embed_arrays(crops)
        t2 = time.perf_counter()
        if crops:
            _, scores = self.rec.scores(views, range(len(crops)), self.candidates)
            scores = self.rec.verify(self.candidates, scores, lambda i: crops[i])
        else:
            scores = np.zeros((0, len(self.candidates)), np.float32)
        t3 = time.perf_counter()
        events = self.tracker.update(index, t, boxes, scores)
        t4 = time.perf_counter()
        self.times.add(
            capture_wait=capture_wait_ms,
            proposals=1000 * (t1 - t0),
            preprocess_embed=1000 * (t2 - t1),
            search=1000 * (t3 - t2),
            track=1000 * (t4 - t3),
            total=capture_wait_ms + 1000 * (t4 - t0),
            crops=float(len(boxes)),
        )
        return events

    def annotate(self, frame_bgr: np.ndarray, fps: float) -> np.ndarray:
        out = frame_bgr.copy()
        for tr in self.tracker.tracks:
            if tr.missed:
                continue
            x, y, w, h = tr.box
            color = (0, 200, 0) if tr.label != UNKNOWN else (0, 0, 230)
            cv2.rectangle(out, (x, y), (x + w, y + h), color, 2)
            text = f"{tr.label} {tr.score:.2f}" if np.isfinite(tr.score) else tr.label
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
            ty = max(th + 4, y - 4)
            cv2.rectangle(out, (x, ty - th - 4), (x + tw + 4, ty + 3), color, -1)
            cv2.putText(
                out, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
            )
        last = {k: v[-1] for k, v in self.times.values.items() if v}
        lines = [f"{fps:.1f} fps, {int(last.get('crops', 0))} crops"] + [
            f"{k} {last[k]:.1f} ms" for k in ("proposals", "preprocess_embed", "search", "track") if k in last
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
        return [(tr.box, tr.label, tr.score) for tr in self.tracker.tracks if tr.missed == 0 and tr.announced]


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
) -> dict[str, Any]:
    """Run the live loop until the source ends (or ``max_frames``); returns stats and latencies.

    ``frame_log``, when given, receives ``(frame index, [(box, label, score), ...])`` per
    processed frame, for evaluation against a known truth.
    """
    matcher = CameraMatcher(gallery, model, candidates, cfg)
    show = not headless and _display_available()
    if not headless and not show:
        print("no display (or OpenCV without GUI support): running headless")
    src = FrameSource(source, realtime=realtime)
    writer = None
    events_f = open(jsonl, "w", encoding="utf-8") if jsonl else None  # noqa: SIM115
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
        src.close()
        if writer is not None:
            writer.release()
        if events_f:
            events_f.close()
        if show:
            cv2.destroyAllWindows()
    return {"frames": n, "dropped_frames": src.dropped, "fps": fps, "latency_ms": matcher.times.summary()}


def latency_table(stats: dict[str, Any]) -> str:
    """Markdown table of per-stage latencies."""
    lines = ["| stage | mean ms | p50 ms | p95 ms |", "|---|---|---|---|"]
    for k, v in stats["latency_ms"].items():
        if k == "crops":
            continue
        lines.append(f"| {k} | {v['mean']:.2f} | {v['p50']:.2f} | {v['p95']:.2f} |")
    crops = stats["latency_ms"].get("crops", {}).get("mean", 0.0)
    lines.append(
        f"\n{stats['frames']} frames, {stats['fps']:.1f} frames/s, {crops:.1f} crops/frame, {stats['dropped_frames']} dropped"
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
