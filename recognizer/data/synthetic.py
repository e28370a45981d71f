"""A deterministic synthetic catalog: the embedded default data set.

A new user has no photos of their own yet, and the demo and fast tests must run without
``../shared``. This module draws N distinct "printed packages" (boxes, cans, jars with
colours, stripes, shapes, logos and text), a clean catalog image of each on white, and
"in the wild" photos: perspective, scale, rotation, lighting, shadow, blur, noise,
JPEG artefacts and partial occlusion, pasted on real photos shipped with scikit-image.

Everything is drawn from ``numpy.random.Generator`` seeded per item and per photo, so
the same ``seed`` gives the same images on every machine, in any order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .backgrounds import load_backgrounds, random_background
from .candidates import candidate_sets
from .manifest import ManifestRow, write_manifest

SHAPES: tuple[str, ...] = ("box", "can", "jar", "pouch")
_SYLLABLES = ("ka", "lo", "mi", "ta", "ro", "ve", "su", "ne", "bi", "zo", "pa", "qu", "fi", "do", "ly", "ex")
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN,
)  # fmt: skip



def _rand_color(rng: np.random.Generator, sat=(0.4, 1.0), val=(0.3, 1.0)) -> tuple[int, int, int]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n)).upper()


def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if shape == "box":
        m[:] = 255
    elif shape == "can":
        r = w // 6
        cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
        cv2.ellipse(m, (w // 2, r), (w // 2, r), 0, 0, 360, 255, -1)
        cv2.ellipse(m, (w // 2, h - 1 - r), (w // 2, r), 0, 0, 360, 255, -1)
    elif shape == "jar":
        neck = h // 6
        cv2.rectangle(m, (w // 4, 0), (3 * w // 4, neck), 255, -1)
        cv2.rectangle(m, (0, neck + w // 8), (w - 1, h - 1), 255, -1)
        cv2.ellipse(m, (w // 2, neck + w // 8), (w // 2, w // 8), 0, 180, 360, 255, -1)
    else:  # pouch: trapezoid with a sealed top
        pts = np.array([[w * 0.1, 0], [w * 0.9, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 255)
    return m


def render_item(item_index: int, seed: int = 0, size: int = 256, shape: str | None = None) -> np.ndarray:
    """Draw item ``item_index`` as an RGBA ``size x size``-bounded image (alpha = the package's outline).

    ``shape`` forces one of :data:`SHAPES` (``"box"`` gives a flat printed cover).
    """
    rng = np.random.default_rng([seed, item_index, 0])
    drawn = SHAPES[int(rng.integers(len(SHAPES)))]
    shape = shape or drawn
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")
    aspect = rng.uniform(0.55, 1.0)  # width / height
    h = size
    w = max(32, int(size * aspect))
    base = np.array(_rand_color(rng), np.float32)
    second = np.array(_rand_color(rng), np.float32)
    # vertical gradient between two tints of the base colour
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    canvas = (base * (1 - 0.35 * t) + second * 0.35 * t).repeat(w, axis=1).astype(np.uint8)
    canvas = np.ascontiguousarray(canvas)

    n_stripes = int(rng.integers(0, 4))
    for _ in range(n_stripes):  # bands across the package
        y = int(rng.uniform(0, h))
        thick = int(rng.uniform(0.03, 0.15) * h)
        ang = rng.uniform(-0.4, 0.4)
        c = _rand_color(rng)
        pts = np.array(
            [[0, y], [w, y + int(w * ang)], [w, y + int(w * ang) + thick], [0, y + thick]], np.int32
        )
        cv2.fillPoly(canvas, [pts], c)
    for _ in range(int(rng.integers(1, 5))):  # shapes
        kind = rng.integers(3)
        c = _rand_color(rng)
        cx, cy = int(rng.uniform(0.15, 0.85) * w), int(rng.uniform(0.15, 0.85) * h)
        r = int(rng.uniform(0.06, 0.22) * min(h, w))
        if kind == 0:
            cv2.circle(canvas, (cx, cy), r, c, -1 if rng.random() < 0.6 else max(2, r // 5), cv2.LINE_AA)
        elif kind == 1:
            k = int(rng.integers(3, 8))
            ang = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k
            pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(canvas, [pts], c, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (cx - r, cy - r // 2), (cx + r, cy + r // 2), c, -1)
    # logo: a star or ring with an initial
    lc = _rand_color(rng, val=(0.6, 1.0))
    lx, ly = int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.2, 0.45) * h)
    lr = int(0.12 * min(h, w))
    if rng.random() < 0.5:
        ang = np.arange(10) * np.pi / 5 + rng.uniform(0, np.pi)
        rad = np.where(np.arange(10) % 2 == 0, lr, lr * 0.45)
        pts = np.stack([lx + rad * np.cos(ang), ly + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(canvas, [pts], lc, cv2.LINE_AA)
    else:
        cv2.circle(canvas, (lx, ly), lr, lc, max(3, lr // 3), cv2.LINE_AA)
    # brand name and a product line
    text_color = (255, 255, 255) if base.mean() < 128 else (20, 20, 20)
    for line, (scale_f, y_f) in enumerate(((0.9, rng.uniform(0.55, 0.7)), (0.5, rng.uniform(0.75, 0.9)))):
        word = _word(rng, int(rng.integers(2, 4)) if line == 0 else int(rng.integers(3, 5)))
        font = int(rng.choice(_FONTS))
        thick = 2 if line == 0 else 1
        scale = scale_f * w / 140
        (tw, _), _ = cv2.getTextSize(word, font, scale, thick)
        if tw > 0.9 * w:
            scale *= 0.9 * w / tw
            (tw, _), _ = cv2.getTextSize(word, font, scale, thick)
        cv2.putText(canvas, word, ((w - tw) // 2, int(y_f * h)), font, scale, text_color, thick, cv2.LINE_AA)

    mask = _shape_mask(shape, h, w)
    if shape in ("can", "jar"):  # cylindrical shading
        x = np.linspace(-1, 1, w, dtype=np.float32)
        shade = (0.75 + 0.25 * np.sqrt(np.clip(1 - x**2, 0, 1)))[None, :, None]
        canvas = np.clip(canvas * shade, 0, 255).astype(np.uint8)
    cv2.polylines(
        canvas, cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], True, (40, 40, 40), 2
    )
    rgba = np.dstack([canvas, mask])
    out = np.zeros((size, size, 4), np.uint8)
    x0 = (size - w) // 2
    out[:, x0 : x0 + w] = rgba
    return out


def composite(bg: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Alpha-blend an RGBA layer of the same size over an RGB background."""
    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    return (rgba[:, :, :3].astype(np.float32) * a + bg.astype(np.float32) * (1 - a)).astype(np.uint8)


def catalog_image(rgba: np.ndarray, size: int = 224, margin: float = 0.08) -> np.ndarray:
    """The clean catalog shot: the item centred on white."""
    m = int(size * margin)
    item = cv2.resize(rgba, (size - 2 * m, size - 2 * m), interpolation=cv2.INTER_AREA)
    layer = np.zeros((size, size, 4), np.uint8)
    layer[m : size - m, m : size - m] = item
    return composite(np.full((size, size, 3), 255, np.uint8), layer)



def wild_photo(
    rgba: np.ndarray,
    rng: np.random.Generator,
    backgrounds: Sequence[np.ndarray],
    size: int = 224,
    *,
    hard: float = 1.0,
) -> np.ndarray:
    """An "in the wild" photo of an item: warped, lit, shadowed, occluded and blurred on a real background.

    ``hard`` in [0, 1] scales every nuisance (0 = centred, clean, on a real background).
    """
    S = rgba.shape[0]
    # geometry: scale, rotation, perspective and position in one homography
    scale = rng.uniform(0.45, 0.85) * size / S if hard > 0 else 0.7 * size / S
    scale *= 1 - 0.2 * hard * rng.random()
    angle = np.deg2rad(rng.uniform(-30, 30) * hard)
    src = np.float32([[0, 0], [S, 0], [S, S], [0, S]])
    jitter = rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * S * hard
    c, s = np.cos(angle), np.sin(angle)
    rot = np.float32([[c, -s], [s, c]])
    centred = (src + jitter - S / 2) @ rot.T * scale
    half = S * scale / 2
    cx = size / 2 + rng.uniform(-1, 1) * max(0.0, size / 2 - half * 0.8) * hard
    cy = size / 2 + rng.uniform(-1, 1) * max(0.0, size / 2 - half * 0.8) * hard
    dst = (centred + np.float32([cx, cy])).astype(np.float32)
    Hm = cv2.getPerspectiveTransform(src, dst)
    layer = cv2.warpPerspective(rgba, Hm, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))

    # lighting on the item: brightness, contrast, colour cast, and a linear light gradient
    rgb = layer[:, :, :3].astype(np.float32)
    gain = rng.uniform(1 - 0.35 * hard, 1 + 0.25 * hard)
    cast = 1 + rng.uniform(-0.12, 0.12, 3).astype(np.float32) * hard
    gx = np.linspace(-1, 1, size, dtype=np.float32)
    grad = 1 + 0.25 * hard * rng.uniform(-1, 1) * gx[None, :, None]
    rgb = np.clip(rgb * gain * cast * grad, 0, 255)
    layer = np.dstack([rgb.astype(np.uint8), layer[:, :, 3]])

    bg = random_background(rng, backgrounds, size)
    if hard > 0:  # soft shadow, offset from the item
        alpha = layer[:, :, 3].astype(np.float32) / 255.0
        dx, dy = (int(v) for v in rng.integers(-12, 13, 2))
        shadow = np.roll(alpha, (dy, dx), axis=(0, 1))
        shadow = cv2.GaussianBlur(shadow, (0, 0), 6) * rng.uniform(0.3, 0.6) * hard
        bg = (bg.astype(np.float32) * (1 - shadow[:, :, None])).astype(np.uint8)
    img = composite(bg, layer)

    if hard > 0 and rng.random() < 0.5 * hard:  # occlusion by another object: a blob of background or colour
        ys, xs = np.nonzero(layer[:, :, 3] > 0)
        if len(xs):
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            ow, oh = int((x1 - x0) * rng.uniform(0.2, 0.45)), int((y1 - y0) * rng.uniform(0.2, 0.45))
            ox = int(rng.choice([x0 - ow // 3, x1 - 2 * ow // 3]))
            oy = int(rng.uniform(y0, max(y0 + 1, y1 - oh)))
            occ = np.zeros((size, size), np.uint8)
            cv2.ellipse(
                occ,
                (ox + ow // 2, oy + oh // 2),
                (max(1, ow // 2), max(1, oh // 2)),
                rng.uniform(0, 180),
                0,
                360,
                255,
                -1,
            )
            filler = (
                random_background(rng, backgrounds, size)
                if rng.random() < 0.5
                else np.full_like(img, _rand_color(rng))
            )
            img = np.where(occ[:, :, None] > 0, filler, img)
    if hard > 0:
        sigma = rng.uniform(0, 1.8) * hard
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        noise = rng.normal(0, 4 * hard, img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img


def generate_catalog(
    out_dir: str | os.PathLike,
    n_items: int = 40,
    n_wild: int = 5,
    *,
    seed: int = 0,
    size: int = 224,
    unseen_fraction: float = 0.4,
    backgrounds: Sequence[np.ndarray] | None = None,
) -> Path:
    """Write a synthetic catalog to ``out_dir`` and return its manifest path.

    Layout: ``catalog/<item>.png`` (one clean image per item, ``role=gallery``) and
    ``wild/<item>_<k>.jpg`` (``n_wild`` photos per item, ``role=query``). Items are split
    by class: the last ``unseen_fraction`` are ``split=test`` (never trained on), the
    rest ``split=train``. Re-running with the same arguments rewrites identical files.
    """
    if n_items < 2:
        raise ValueError(f"n_items must be >= 2, got {n_items}")
    if n_wild < 0:
        raise ValueError(f"n_wild must be >= 0, got {n_wild}")
    out = Path(out_dir)
    (out / "catalog").mkdir(parents=True, exist_ok=True)
    (out / "wild").mkdir(parents=True, exist_ok=True)
    bgs = list(backgrounds) if backgrounds is not None else load_backgrounds()
    n_unseen = int(round(n_items * unseen_fraction))
    rows: list[ManifestRow] = []
    for i in range(n_items):
        item = f"item{i:04d}"
        split = "test" if i >= n_items - n_unseen else "train"
        rgba = render_item(i, seed)
        cat_path = f"catalog/{item}.png"
        cv2.imwrite(str(out / cat_path), cv2.cvtColor(catalog_image(rgba, size), cv2.COLOR_RGB2BGR))
        rows.append(ManifestRow(0, cat_path, item, split, "gallery"))
        for k in range(n_wild):
            rng = np.random.default_rng([seed, i, 1, k])
            img = wild_photo(rgba, rng, bgs, size)
            quality = int(rng.integers(70, 96))
            path = f"wild/{item}_{k:02d}.jpg"
            cv2.imwrite(
                str(out / path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
            rows.append(ManifestRow(0, path, item, split, "query"))
    manifest = out / "manifest.csv"
    write_manifest(manifest, rows, columns=("path", "item_id", "split", "role"))
    return manifest


def border_pixels(rgb: np.ndarray, width: int = 4) -> np.ndarray:
    """The grayscale values of the image's ``width``-pixel border (top, bottom, left, right)."""
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.concatenate([g[:width].ravel(), g[-width:].ravel(), g[:, :width].ravel(), g[:, -width:].ravel()])


def border_color(rgb: np.ndarray, width: int = 4) -> tuple[float, float]:
    """Mean and standard deviation of the image's border pixels (grayscale)."""
    b = border_pixels(rgb, width).astype(np.float32)
    return float(b.mean()), float(b.std())


def plain_background(rgb: np.ndarray) -> float | None:
    """The border's mean grey when it is one clean white (> 220) or black (< 50) colour, as on a
    catalog or turntable shot whose item can be cut out; else None."""
    mean, std = border_color(rgb)
    return mean if std < 12 and (mean > 220 or mean < 50) else None


def rgba_from_plain_background(rgb: np.ndarray, *, dark: bool, tol: int = 30) -> np.ndarray:
    """Cut an object out of a clean black (``dark=True``) or white background: RGBA with a soft mask."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    fg = (gray > tol) if dark else (gray < 255 - tol)
    mask = fg.astype(np.uint8) * 255
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k, iterations=2)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
    return np.dstack([rgb, cv2.GaussianBlur(mask, (3, 3), 0)])


def generate_video(
    path: str | os.PathLike,
    items: Sequence[tuple[str, np.ndarray]],
    *,
    seconds: float = 8.0,
    fps: int = 10,
    size: tuple[int, int] = (480, 320),
    item_height: float = 0.42,
    seed: int = 0,
    enter_after: float = 1.5,
    backgrounds: Sequence[np.ndarray] | None = None,
) -> list[tuple[int, list[tuple[str, tuple[int, int, int, int]]]]]:
    """Write an mp4 of RGBA ``items`` gliding over one real background photo; returns the truth.

    The camera starts on the empty scene; each item enters at its own time (staggered,
    from ``enter_after`` seconds on) and glides within its own lane, bouncing off the
    lane's edges, so items never overlap. The truth per frame is
    ``(frame, [(item_id, (x, y, w, h)), ...])`` with the visible box of each item.
    """
    rng = np.random.default_rng(seed)
    W, H = size
    bgs = list(backgrounds) if backgrounds is not None else load_backgrounds()
    bg_src = bgs[int(rng.integers(len(bgs)))]
    bg = cv2.resize(bg_src, (W, H), interpolation=cv2.INTER_AREA)
    n_frames = int(seconds * fps)
    tracks = []
    for k, (item_id, rgba) in enumerate(items):
        ys, xs = np.nonzero(rgba[:, :, 3] > 0)
        rgba = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        lane_w = W // len(items)
        h = int(item_height * H)
        w = max(8, int(rgba.shape[1] * h / rgba.shape[0]))
        margin = 16  # keeps neighbours at least 2 * margin apart
        if w > lane_w - 2 * margin - 8:  # fit the lane
            h = int(h * (lane_w - 2 * margin - 8) / w)
            w = lane_w - 2 * margin - 8
        sprite = cv2.resize(rgba, (w, h), interpolation=cv2.INTER_AREA)
        start = int((enter_after + k * 0.8) * fps)  # staggered entries
        lane = (k * lane_w + margin, (k + 1) * lane_w - w - margin)
        pos = np.array([rng.uniform(*lane), rng.uniform(0, H - h)], np.float64)
        vel = (
            np.array(
                [rng.uniform(-1, 1) * lane_w * 0.1, rng.choice([-1, 1]) * rng.uniform(0.5, 1) * H * 0.12]
            )
            / fps
        )
        tracks.append((item_id, sprite, start, pos, vel, lane))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    if not writer.isOpened():
        raise OSError(f"{path}: cannot write video")
    truth = []
    for f in range(n_frames):
        frame = bg.astype(np.float32)
        visible = []
        for item_id, sprite, start, pos, vel, lane in tracks:
            if f < start:
                continue
            h, w = sprite.shape[:2]
            pos += vel
            for d, lo, hi in ((0, lane[0], lane[1]), (1, 0, H - h)):
                if pos[d] < lo or pos[d] > hi:
                    vel[d] = -vel[d]
                    pos[d] = min(max(pos[d], lo), hi)
            x, y = int(pos[0]), int(pos[1])
            a = sprite[:, :, 3:4].astype(np.float32) / 255.0
            region = frame[y : y + h, x : x + w]
            frame[y : y + h, x : x + w] = sprite[:, :, :3] * a + region * (1 - a)
            visible.append((item_id, (x, y, w, h)))
        frame += rng.normal(0, 2.0, frame.shape)  # sensor noise
        writer.write(cv2.cvtColor(np.clip(frame, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        truth.append((f, visible))
    writer.release()
    return truth


def generate_covers(
    out_dir: str | os.PathLike,
    n_items: int = 40,
    n_queries: int = 2,
    *,
    seed: int = 0,
    size: int = 320,
    k_candidates: int = 10,
    backgrounds: Sequence[np.ndarray] | None = None,
) -> Path:
    """Flat printed covers: one clean scan per item (gallery) and photos at an angle in clutter (queries).

    Each query shows its cover with perspective, lighting, blur and partial occlusion, over
    a real photo strewn with other covers that are not enrolled. Query rows carry a seeded
    10-item candidate set holding the truth. Returns the manifest path.
    """
    out = Path(out_dir)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    bgs = list(backgrounds) if backgrounds is not None else load_backgrounds()
    covers = [render_item(i, seed, shape="box") for i in range(n_items)]
    distractors = [render_item(10_000 + i, seed, shape="box") for i in range(20)]
    gallery_rows, query_rows = [], []
    for i, rgba in enumerate(covers):
        item = f"cover{i:04d}"
        path = f"scans/{item}.png"
        cv2.imwrite(str(out / path), cv2.cvtColor(catalog_image(rgba, size), cv2.COLOR_RGB2BGR))
        gallery_rows.append(ManifestRow(0, path, item, "test", "gallery"))
        for k in range(n_queries):
            rng = np.random.default_rng([seed, i, 2, k])
            clutter = random_background(rng, bgs, size)
            for _ in range(int(rng.integers(2, 4))):  # other covers lying around
                d = distractors[int(rng.integers(len(distractors)))]
                clutter = composite(clutter, _place(d, rng, size, scale=(0.35, 0.6)))
            img = wild_photo(rgba, rng, [clutter], size)
            path = f"photos/{item}_{k:02d}.jpg"
            cv2.imwrite(str(out / path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
            query_rows.append(ManifestRow(0, path, item, "test", "query"))
    items = [r.item_id for r in gallery_rows]
    cands = candidate_sets([r.item_id for r in query_rows], items, min(k_candidates, len(items)), seed)
    query_rows = [
        ManifestRow(0, r.path, r.item_id, r.split, r.role, c) for r, c in zip(query_rows, cands, strict=True)
    ]
    manifest = out / "manifest.csv"
    write_manifest(manifest, gallery_rows + query_rows)
    return manifest


def _place(rgba: np.ndarray, rng: np.random.Generator, size: int, scale: tuple[float, float]) -> np.ndarray:
    """An RGBA layer of ``size x size`` with ``rgba`` rotated, scaled and placed at random."""
    S = rgba.shape[0]
    s = rng.uniform(*scale) * size / S
    M = cv2.getRotationMatrix2D((S / 2, S / 2), rng.uniform(-40, 40), s)
    M[:, 2] += rng.uniform(-0.1, 0.9, 2) * size - S * s / 2 + S * s / 2
    return cv2.warpAffine(rgba, M, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
