"""Table scenes for the camera, composed from real photos, with the truth of every frame.

A scene is what a fixed camera over a counter sees: real objects standing side by side,
touching or overlapping, sliding together over a real background photo (scikit-image's),
while a skin-coloured hand crosses them, the light dims to about half and comes back, the
camera pans by about a tenth of the frame, and one item is taken away and another put down.

Objects come from the shared real data: COIL-100 turntable sequences (``coil:objN``; the
object turns by 5 degrees a frame, so consecutive frames are real consecutive views, and
the gallery's enrolled angles 0/90/180/270 are never shown) and grocery catalog cut-outs
(``grocery:NAME``, cut from their white background and put in perspective, since the
catalog image is all there is of them). The table is empty for the first ``enter`` seconds
so that a background model can learn it.

Truth per frame: every item on the table with its box in frame coordinates, the share of
it that is visible (items in front, the hand and the frame's edges hide parts), whether it
is being lifted or put down, and the hand's box. Paths to the data are given by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from .backgrounds import load_backgrounds
from .imageio import load_image
from .synthetic import rgba_from_plain_background

Box = tuple[int, int, int, int]
COIL_ENROLLED_ANGLES = (0, 90, 180, 270)  # the coil_unseen manifest enrols these views; scenes never show them


@dataclass(frozen=True)
class SceneSpec:
    """One scene. Times are in seconds; ``None`` leaves an event out."""

    name: str
    items: tuple[str, ...]  # "coil:obj5" or "grocery:Oatly-Natural-Oatghurt", left to right
    seconds: float = 10.0
    fps: int = 10
    size: tuple[int, int] = (640, 360)  # W, H
    item_height: float = 0.34  # share of the frame height
    overlap: float = 0.25  # neighbours overlap by up to this share of the narrower one's width (0: touching)
    gap: float = 0.0  # > 0: items stand apart by this share of the frame width instead
    slide: float = 0.10  # amplitude of the group's slide, share of the frame width
    enter: float = 1.5  # the items are put down at this time
    hand: tuple[float, float] | None = None  # a hand crosses the items between these times
    dim: tuple[float, float] | None = None  # the light goes to ``dim_to`` and back between these times
    dim_to: float = 0.5
    pan: tuple[float, float] | None = None  # the camera pans by ``pan_share`` of the width between these times
    pan_share: float = 0.10
    swap: float | None = None  # at this time the last item is lifted away and ``extra`` put down
    extra: str | None = None
    background: str = "coffee"
    seed: int = 0

    @property
    def shown(self) -> tuple[str, ...]:
        """Item ids that appear at some time."""
        return tuple(i.split(":", 1)[1] for i in (*self.items, *([self.extra] if self.extra else [])))


@dataclass
class ItemTruth:
    item_id: str
    box: Box  # the whole item, clipped to the frame
    visible: float  # share of its pixels that can be seen
    moving: bool = False  # being lifted or put down


@dataclass
class FrameTruth:
    frame: int
    items: list[ItemTruth] = field(default_factory=list)
    hand: Box | None = None
    light: float = 1.0
    pan_px: float = 0.0


# ----------------------------------------------------------------------------- sprites


def _coil_views(root: Path, obj: str) -> list[np.ndarray]:
    """The object's turntable views in order (RGBA), enrolled angles and missing files left out."""
    out = []
    for a in range(0, 360, 5):
        p = root / obj / f"{obj}__{a}.jpg"
        if a in COIL_ENROLLED_ANGLES or not p.is_file():
            continue
        out.append(_tight(rgba_from_plain_background(load_image(p), dark=True)))
    if not out:
        raise FileNotFoundError(f"no COIL views of {obj} under {root}")
    return out


def _grocery_view(root: Path, name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The catalog image cut from its white background, tilted in perspective (one fixed view)."""
    paths = sorted(root.glob(f"iconic-images-and-descriptions/**/{name}/{name}_Iconic.jpg"))
    if not paths:
        raise FileNotFoundError(f"no iconic image of {name} under {root}")
    rgba = rgba_from_plain_background(load_image(paths[0]), dark=False)
    h, w = rgba.shape[:2]
    d = 0.08 * np.array([w, h])
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-1, 1, (4, 2)).astype(np.float32) * d.astype(np.float32)
    dst -= dst.min(axis=0)
    M = cv2.getPerspectiveTransform(src, dst)
    size = (int(dst[:, 0].max()) + 1, int(dst[:, 1].max()) + 1)
    warped = cv2.warpPerspective(rgba, M, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    return [_tight(warped)]


def _tight(rgba: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(rgba[:, :, 3] > 40)
    if len(ys) == 0:
        return rgba
    return np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def hand_sprite(height: int, rng: np.random.Generator) -> np.ndarray:
    """A skin-coloured open hand with its forearm (RGBA), pointing right; ``height`` px tall."""
    h = height
    w = int(2.6 * h)
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(1.75 * h), h // 2
    cv2.ellipse(mask, (cx, cy), (int(0.36 * h), int(0.34 * h)), 0, 0, 360, 255, -1)  # palm
    cv2.rectangle(mask, (0, cy - int(0.2 * h)), (cx, cy + int(0.2 * h)), 255, -1)  # forearm
    for k, dy in enumerate((-0.24, -0.08, 0.08, 0.24)):  # fingers
        y = cy + int(dy * h)
        L = int((0.42 - 0.05 * abs(k - 1.5)) * h)
        cv2.line(mask, (cx + int(0.2 * h), y), (cx + int(0.2 * h) + L, y), 255, max(3, int(0.11 * h)))
    cv2.line(mask, (cx - int(0.1 * h), cy - int(0.25 * h)), (cx + int(0.18 * h), cy - int(0.48 * h)),
             255, max(3, int(0.12 * h)))  # thumb  # fmt: skip
    mask = cv2.GaussianBlur(mask, (5, 5), 0)
    base = np.array([224, 172, 140], np.float32) * rng.uniform(0.85, 1.05)
    shade = np.linspace(0.85, 1.05, h, dtype=np.float32)[:, None, None]  # lit from above
    tex = cv2.GaussianBlur(rng.normal(0, 6, (h, w)).astype(np.float32), (0, 0), 2)[:, :, None]
    rgb = np.clip(base[None, None, :] * shade + tex, 0, 255).astype(np.uint8)
    return np.dstack([rgb, mask])


# ----------------------------------------------------------------------------- rendering


class _Item:
    def __init__(self, item_id: str, views: list[np.ndarray], height: int, phase: int):
        self.item_id = item_id
        self.views = [self._scale(v, height) for v in views]
        self.phase = phase

    @staticmethod
    def _scale(rgba: np.ndarray, height: int) -> np.ndarray:
        s = height / rgba.shape[0]
        w = max(8, int(round(rgba.shape[1] * s)))
        return cv2.resize(rgba, (w, height), interpolation=cv2.INTER_AREA)

    def view(self, f: int) -> np.ndarray:
        return self.views[(self.phase + f) % len(self.views)]

    @property
    def width(self) -> int:
        return int(np.median([v.shape[1] for v in self.views]))


def _load_item(spec_item: str, coil_root: Path | None, grocery_root: Path | None, rng, height: int, phase: int):
    kind, _, name = spec_item.partition(":")
    if kind == "coil" and coil_root is not None:
        return _Item(name, _coil_views(coil_root, name), height, phase)
    if kind == "grocery" and grocery_root is not None:
        return _Item(name, _grocery_view(grocery_root, name, rng), height, phase)
    raise ValueError(f"scene item {spec_item!r}: use coil:objN (with coil_root) or grocery:NAME (with grocery_root)")


def _paste(canvas: np.ndarray, owner: np.ndarray, rgba: np.ndarray, x: int, y: int, oid: int) -> None:
    """Alpha-blend ``rgba`` at (x, y) into the float canvas; ``owner`` records who is on top per pixel."""
    H, W = canvas.shape[:2]
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x1 <= x0 or y1 <= y0:
        return
    sub = rgba[y0 - y : y1 - y, x0 - x : x1 - x]
    a = sub[:, :, 3:4].astype(np.float32) / 255.0
    region = canvas[y0:y1, x0:x1]
    region[:] = sub[:, :, :3] * a + region * (1 - a)
    owner[y0:y1, x0:x1][sub[:, :, 3] > 127] = oid


def _ramp(t: float, window: tuple[float, float] | None) -> float:
    """0 outside the window, rising to 1 in its middle and back (a cosine bump)."""
    if window is None or not window[0] <= t <= window[1]:
        return 0.0
    u = (t - window[0]) / (window[1] - window[0])
    return 0.5 - 0.5 * np.cos(2 * np.pi * u)


def _step(t: float, window: tuple[float, float] | None) -> float:
    """0 before the window, 1 after it, smooth in between."""
    if window is None or t <= window[0]:
        return 0.0
    if t >= window[1]:
        return 1.0
    u = (t - window[0]) / (window[1] - window[0])
    return 0.5 - 0.5 * np.cos(np.pi * u)


def render_scene(
    spec: SceneSpec,
    *,
    coil_root: str | os.PathLike | None = None,
    grocery_root: str | os.PathLike | None = None,
) -> Iterator[tuple[np.ndarray, FrameTruth]]:
    """Frames (RGB uint8) of ``spec`` with their truth, one by one."""
    rng = np.random.default_rng(spec.seed)
    W, H = spec.size
    coil = Path(coil_root) if coil_root else None
    groc = Path(grocery_root) if grocery_root else None
    ih = int(spec.item_height * H)
    items = [_load_item(s, coil, groc, rng, ih, int(rng.integers(0, 60))) for s in spec.items]
    extra = _load_item(spec.extra, coil, groc, rng, ih, int(rng.integers(0, 60))) if spec.extra else None
    # the table: the background photo, a bit larger than the view so that the camera can pan over it
    CW, CH = int(W * (1 + spec.pan_share + 0.04)), H
    bg_src = load_backgrounds([spec.background])[0]
    table = cv2.resize(bg_src, (CW, CH), interpolation=cv2.INTER_AREA).astype(np.float32)
    # layout on the table: a row standing on one baseline, neighbours touching or overlapping
    xs = [0.0]
    for a, b in zip(items, items[1:], strict=False):
        step = a.width + spec.gap * W if spec.gap > 0 else a.width - rng.uniform(0, spec.overlap) * min(a.width, b.width)
        xs.append(xs[-1] + step)
    row_w = xs[-1] + items[-1].width
    x_start = 0.02 * W + (W - row_w) / 2
    base_y = int(0.62 * H + ih / 2)
    hand = hand_sprite(int(0.8 * ih), rng) if spec.hand else None
    n = int(round(spec.seconds * spec.fps))
    lift = 0.6  # seconds to lift an item away or put one down
    for f in range(n):
        t = f / spec.fps
        canvas = table.copy()
        owner = np.zeros((CH, CW), np.int16)
        slide_x = spec.slide * W * np.sin(2 * np.pi * max(0.0, t - spec.enter) / 6.0)
        slide_y = 0.03 * H * np.sin(2 * np.pi * max(0.0, t - spec.enter) / 4.3)
        placed: list[tuple[int, _Item, int, int, np.ndarray, bool]] = []
        for k, it in enumerate(items):
            t_in = spec.enter + 0.25 * k
            if t < t_in:
                continue
            dy = 0.0
            moving = False
            if spec.swap is not None and k == len(items) - 1 and t >= spec.swap:
                if t >= spec.swap + lift:
                    continue
                dy, moving = -(t - spec.swap) / lift * (base_y + 10), True  # lifted up and out
            sp = it.view(f)
            x = int(x_start + xs[k] + slide_x + (it.width - sp.shape[1]) / 2)
            y = int(base_y - sp.shape[0] + slide_y + dy)
            placed.append((k + 1, it, x, y, sp, moving))
        if extra is not None and spec.swap is not None and t >= spec.swap + lift:
            k = len(items) - 1
            u = min(1.0, (t - spec.swap - lift) / lift)
            sp = extra.view(f)
            x = int(x_start + xs[k] + slide_x + (items[k].width - sp.shape[1]) / 2)
            y = int(base_y - sp.shape[0] + slide_y - (1 - u) * (base_y + 10))  # put down from above
            placed.append((len(items) + 1, extra, x, y, sp, u < 1.0))
        for oid, _, x, y, sp, _ in placed:
            _paste(canvas, owner, sp, x, y, oid)
        hand_box = None
        if hand is not None and spec.hand[0] <= t <= spec.hand[1]:
            u = (t - spec.hand[0]) / (spec.hand[1] - spec.hand[0])
            hx = int(-hand.shape[1] + u * (CW + hand.shape[1]))
            hy = int(base_y - 1.0 * ih + 0.1 * ih * np.sin(6 * u))
            sh = hand[:, :, 3].astype(np.float32) / 255.0  # its soft shadow on the table first
            shadow = np.zeros((CH, CW), np.float32)
            sx, sy = hx + int(0.12 * ih), hy + int(0.15 * ih)
            x0, y0, x1, y1 = max(0, sx), max(0, sy), min(CW, sx + sh.shape[1]), min(CH, sy + sh.shape[0])
            if x1 > x0 and y1 > y0:
                shadow[y0:y1, x0:x1] = sh[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
                shadow = cv2.GaussianBlur(shadow, (0, 0), 6)
                canvas *= (1 - 0.35 * shadow)[:, :, None]
            _paste(canvas, owner, hand, hx, hy, -1)
            hand_box = (hx, hy, hand.shape[1], hand.shape[0])
        # the camera: its view of the table, then light and sensor noise
        pan_px = spec.pan_share * W * _step(t, spec.pan)
        ox = int(round(0.02 * W + pan_px))
        frame = canvas[:, ox : ox + W]
        light = 1.0 - (1.0 - spec.dim_to) * _ramp(t, spec.dim)
        if light < 1.0:  # uneven: one side of the table darkens a little more
            grad = np.linspace(1.0, 0.9, W, dtype=np.float32)[None, :, None]
            frame = frame * (light * (grad if light < 0.98 else 1.0))
        frame = frame + rng.normal(0, 2.0, frame.shape).astype(np.float32)
        own = owner[:, ox : ox + W]
        truth = FrameTruth(f, light=light, pan_px=pan_px)
        for oid, it, x, y, sp, moving in placed:
            total = int((sp[:, :, 3] > 127).sum())
            vis = int((own == oid).sum())
            bx0, by0 = max(0, x - ox), max(0, y)
            bx1, by1 = min(W, x - ox + sp.shape[1]), min(H, y + sp.shape[0])
            if bx1 > bx0 and by1 > by0 and vis > 0:
                truth.items.append(ItemTruth(it.item_id, (bx0, by0, bx1 - bx0, by1 - by0), vis / max(1, total), moving))
        if hand_box is not None:
            hx, hy, hw, hh = hand_box
            bx0, bx1 = max(0, hx - ox), min(W, hx - ox + hw)
            if bx1 > bx0:
                truth.hand = (bx0, hy, bx1 - bx0, hh)
        yield np.clip(frame, 0, 255).astype(np.uint8), truth


def write_scene(
    path: str | os.PathLike,
    spec: SceneSpec,
    *,
    coil_root: str | os.PathLike | None = None,
    grocery_root: str | os.PathLike | None = None,
) -> list[FrameTruth]:
    """Render ``spec`` into an mp4 at ``path``; returns the truth per frame."""
    W, H = spec.size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), spec.fps, (W, H))
    if not writer.isOpened():
        raise OSError(f"{path}: cannot write video")
    truth = []
    try:
        for rgb, tr in render_scene(spec, coil_root=coil_root, grocery_root=grocery_root):
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            truth.append(tr)
    finally:
        writer.release()
    return truth


def candidate_set(spec: SceneSpec, pool: Sequence[str], n_distractors: int = 5) -> list[str]:
    """The items shown plus ``n_distractors`` others from ``pool`` (chosen by the scene's seed)."""
    shown = list(spec.shown)
    others = [p for p in pool if p not in shown]
    if len(others) < n_distractors:
        raise ValueError(f"scene {spec.name}: only {len(others)} distractors in the pool, need {n_distractors}")
    rng = np.random.default_rng(spec.seed + 1)
    pick = [others[i] for i in sorted(rng.choice(len(others), n_distractors, replace=False))]
    return shown + pick


# ----------------------------------------------------------------------------- the standard scenes

_COIL3 = ("coil:obj5", "coil:obj13", "coil:obj24")


def table_scenes(fps: int = 10) -> list[SceneSpec]:
    """The scenes the camera is measured on: one difficulty each, then all of them together."""
    base = SceneSpec("apart", _COIL3, gap=0.06, overlap=0.0, fps=fps, seed=1)
    touching = replace(base, name="touching", gap=0.0, overlap=0.30, seed=2)
    return [
        base,
        touching,
        replace(touching, name="hand", hand=(4.0, 6.5), seed=3),
        replace(touching, name="dim", dim=(3.5, 7.5), seed=4),
        replace(touching, name="pan", pan=(4.0, 5.0), seed=5),
        replace(touching, name="swap", swap=5.0, extra="coil:obj36", seed=6),
        SceneSpec(
            "table", ("coil:obj2", "grocery:Oatly-Natural-Oatghurt", "coil:obj30", "coil:obj45"),
            seconds=16.0, fps=fps, overlap=0.30, hand=(3.5, 6.0), dim=(6.5, 10.0), pan=(10.5, 11.5),
            swap=12.5, extra="coil:obj11", background="coffee", seed=7,
        ),  # fmt: skip
    ]
