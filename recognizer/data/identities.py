"""Synthetic training identities at scale: tens of thousands of really distinct printed products.

The catalog generator of :mod:`.synthetic` (the demo's data) draws a package from one recipe
(gradient, a few stripes and shapes, a logo, two words). Training an embedding on 10,000
identities needs more ways to differ, or many identities collapse to near-twins that teach
nothing. Each identity here draws independently:

* **form**: 11 outlines (box, can, jar, pouch, bottle, tube, tub, carton, sachet, tin, tray)
  and its aspect ratio;
* **print**: a palette of 2-4 colours (analogous, complementary, or muted), a ground (flat,
  linear or radial gradient, stripes, checks, dots, waves, a woven or noise texture), 1-6
  motifs (discs, polygons, stars, rings, bands) and often a *photo panel*: a crop of a real
  photo, as product pictures on packs are;
* **text**: a brand word in one of 5 fonts, horizontal or vertical, a product line, small
  print lines, a barcode, sometimes a price badge;
* **material**: matte, glossy (a specular streak), metallic (banded shading) or cylindrical.

Its photos are the catalog shot on white (photo 0) and "wild" photos (photo k >= 1) from
:func:`.synthetic.wild_photo`: perspective, lighting, shadow, occlusion, blur and noise on a
real background. Everything is drawn from ``numpy.random.Generator`` seeded by
``(seed, identity, photo)``, so any identity renders the same on every machine, in any order,
in any worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .synthetic import catalog_image, wild_photo

FORMS: tuple[str, ...] = ("box", "can", "jar", "pouch", "bottle", "tube", "tub", "carton", "sachet", "tin", "tray")
GROUNDS: tuple[str, ...] = ("flat", "linear", "radial", "stripes", "checks", "dots", "waves", "weave", "noise")
MATERIALS: tuple[str, ...] = ("matte", "glossy", "metallic", "cylinder")
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_PLAIN)  # fmt: skip
_SYL = ("ka", "lo", "mi", "ta", "ro", "ve", "su", "ne", "bi", "zo", "pa", "qu", "fi", "do", "ly", "ex", "an",
        "or", "ul", "ti", "gra", "vel", "mon", "pri", "sto", "nu", "ha", "je", "wo", "ri", "cy", "be")  # fmt: skip


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h % 180, np.clip(s, 0, 1) * 255, np.clip(v, 0, 1) * 255]]], np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def palette(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """2-4 colours under one scheme: analogous, complementary, triadic or muted."""
    h0 = rng.uniform(0, 180)
    scheme = int(rng.integers(4))
    n = int(rng.integers(2, 5))
    hues = {0: [h0 + rng.uniform(-20, 20) for _ in range(n)], 1: [h0 + 90 * (i % 2) for i in range(n)],
            2: [h0 + 60 * i for i in range(n)], 3: [h0 + rng.uniform(-40, 40) for _ in range(n)]}[scheme]  # fmt: skip
    sat = (0.05, 0.4) if scheme == 3 else (0.4, 1.0)
    cols = [_hsv(h, rng.uniform(*sat), rng.uniform(0.25, 1.0)) for h in hues]
    if rng.random() < 0.3:  # a black or white as one of the colours
        cols[-1] = np.full(3, 245.0 if rng.random() < 0.5 else 25.0, np.float32)
    return [tuple(int(v) for v in c) for c in cols]


def _ground(rng: np.random.Generator, h: int, w: int, cols: list, kind: str) -> np.ndarray:
    a, b = np.array(cols[0], np.float32), np.array(cols[1 % len(cols)], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        t = np.zeros((h, w), np.float32)
    elif kind == "linear":
        ang = rng.uniform(0, np.pi)
        t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h) * rng.uniform(0.3, 1.0)
    elif kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(h, w) * rng.uniform(0.8, 2.0)
    elif kind in ("stripes", "waves"):
        ang, period = rng.uniform(0, np.pi), rng.uniform(0.04, 0.25) * max(h, w)
        u = np.cos(ang) * xx + np.sin(ang) * yy
        if kind == "waves":
            u = u + rng.uniform(3, 15) * np.sin((np.sin(ang) * xx - np.cos(ang) * yy) / rng.uniform(8, 40))
        t = (np.sin(2 * np.pi * u / period) > rng.uniform(-0.6, 0.6)).astype(np.float32)
    elif kind == "checks":
        p = rng.uniform(0.05, 0.2) * max(h, w)
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    elif kind == "dots":
        p = rng.uniform(0.05, 0.15) * max(h, w)
        r = rng.uniform(0.15, 0.4) * p
        t = ((((xx % p) - p / 2) ** 2 + ((yy % p) - p / 2) ** 2) < r * r).astype(np.float32)
    elif kind == "weave":
        p = rng.uniform(4, 14)
        t = 0.5 + 0.25 * np.sin(xx / p) * np.sin(yy / (p * rng.uniform(0.5, 2)))
    else:  # noise: smoothed random field, a paper or wood grain
        small = rng.random((max(2, h // 16), max(2, w // 16))).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    t = np.clip(t, 0, 1)[:, :, None]
    return (a * (1 - t) + b * t).astype(np.uint8)


def _form_mask(form: str, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if form in ("box", "tray"):
        m[:] = 255
        if form == "tray":
            cv2.rectangle(m, (0, 0), (w - 1, h // 10), 0, -1)
    elif form in ("can", "tub", "tin"):
        r = max(2, w // (6 if form == "can" else 8 if form == "tub" else 3))
        if form == "tin":
            cv2.ellipse(m, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 255, -1)
        else:
            cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
            cv2.ellipse(m, (w // 2, r), (w // 2, r), 0, 0, 360, 255, -1)
            cv2.ellipse(m, (w // 2, h - 1 - r), (w // 2, r), 0, 0, 360, 255, -1)
    elif form in ("jar", "bottle"):
        neck = h // (6 if form == "jar" else 3)
        nw = w // 4 if form == "jar" else w // 6
        cv2.rectangle(m, (w // 2 - nw, 0), (w // 2 + nw, neck), 255, -1)
        cv2.rectangle(m, (0, neck + w // 6), (w - 1, h - 1), 255, -1)
        cv2.ellipse(m, (w // 2, neck + w // 6), (w // 2, w // 6), 0, 180, 360, 255, -1)
    elif form == "tube":
        pts = np.array([[w * 0.05, 0], [w * 0.95, 0], [w * 0.7, h * 0.9], [w * 0.3, h * 0.9]], np.int32)
        cv2.fillPoly(m, [pts], 255)
        cv2.rectangle(m, (int(w * 0.38), int(h * 0.88)), (int(w * 0.62), h - 1), 255, -1)
    elif form == "carton":
        roof = h // 6
        cv2.rectangle(m, (0, roof), (w - 1, h - 1), 255, -1)
        cv2.fillPoly(m, [np.array([[0, roof], [w // 2, 4], [w - 1, roof]], np.int32)], 255)
        cv2.rectangle(m, (w // 2 - w // 8, 0), (w // 2 + w // 8, roof // 2), 255, -1)
    elif form == "sachet":
        cv2.rectangle(m, (0, h // 12), (w - 1, h - 1 - h // 12), 255, -1)
        for y in (h // 12, h - 1 - h // 12):  # crimped seals
            for x in range(0, w, max(4, w // 16)):
                cv2.circle(m, (x, y), max(2, w // 40), 0, -1)
    else:  # pouch
        pts = np.array([[w * 0.1, 0], [w * 0.9, 0], [w - 1, h - 1], [0, h - 1]], np.int32)
        cv2.fillPoly(m, [pts], 255)
    return m


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(n)).upper()


def _text(canvas: np.ndarray, rng: np.random.Generator, word: str, y: float, rel: float, color, bold: int) -> None:
    h, w = canvas.shape[:2]
    font = int(rng.choice(FONTS))
    scale = rel * w / 140
    (tw, th), _ = cv2.getTextSize(word, font, scale, bold)
    if tw > 0.9 * w:
        scale *= 0.9 * w / tw
        (tw, th), _ = cv2.getTextSize(word, font, scale, bold)
    x = int(rng.uniform(0.05 * w, max(0.05 * w + 1, w - tw - 0.05 * w))) if rng.random() < 0.5 else (w - tw) // 2
    cv2.putText(canvas, word, (x, int(y * h)), font, scale, color, bold, cv2.LINE_AA)


def _motifs(canvas: np.ndarray, rng: np.random.Generator, cols: list, photos: Sequence[np.ndarray]) -> None:
    h, w = canvas.shape[:2]
    if photos and rng.random() < 0.45:  # a product picture: a crop of a real photo in a panel
        src = photos[int(rng.integers(len(photos)))]
        ph, pw = int(rng.uniform(0.2, 0.5) * h), int(rng.uniform(0.4, 0.9) * w)
        sy, sx = int(rng.integers(0, max(1, src.shape[0] - ph))), int(rng.integers(0, max(1, src.shape[1] - pw)))
        side = int(rng.uniform(0.3, 1.0) * min(src.shape[:2]))
        crop = src[sy : sy + side, sx : sx + side]
        patch = cv2.resize(np.ascontiguousarray(crop), (pw, ph), interpolation=cv2.INTER_AREA)
        y0, x0 = int(rng.uniform(0.05, 0.95) * (h - ph)), int(rng.uniform(0, 1) * (w - pw))
        if rng.random() < 0.5:
            mask = np.zeros((ph, pw), np.uint8)
            cv2.ellipse(mask, (pw // 2, ph // 2), (pw // 2, ph // 2), 0, 0, 360, 255, -1)
            region = canvas[y0 : y0 + ph, x0 : x0 + pw]
            canvas[y0 : y0 + ph, x0 : x0 + pw] = np.where(mask[:, :, None] > 0, patch, region)
        else:
            canvas[y0 : y0 + ph, x0 : x0 + pw] = patch
    for _ in range(int(rng.integers(1, 7))):
        c = cols[int(rng.integers(len(cols)))] if rng.random() < 0.7 else tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(5))
        cx, cy = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
        r = int(rng.uniform(0.05, 0.3) * min(h, w)) + 2
        if kind == 0:
            cv2.circle(canvas, (cx, cy), r, c, -1 if rng.random() < 0.6 else max(2, r // 5), cv2.LINE_AA)
        elif kind == 1:
            k = int(rng.integers(3, 9))
            ang = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k
            cv2.fillPoly(canvas, [np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).astype(np.int32)], c, cv2.LINE_AA)
        elif kind == 2:
            k = int(rng.integers(4, 9))
            ang = rng.uniform(0, np.pi) + np.arange(2 * k) * np.pi / k
            rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.35, 0.6))
            cv2.fillPoly(canvas, [np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)], c, cv2.LINE_AA)
        elif kind == 3:
            y, t, sl = int(rng.uniform(0, h)), int(rng.uniform(0.03, 0.2) * h), rng.uniform(-0.5, 0.5)
            cv2.fillPoly(canvas, [np.array([[0, y], [w, y + int(w * sl)], [w, y + int(w * sl) + t], [0, y + t]], np.int32)], c)
        else:
            cv2.rectangle(canvas, (cx - r, cy - r // 2), (cx + r, cy + r // 2), c, -1 if rng.random() < 0.7 else 2)


def _barcode(canvas: np.ndarray, rng: np.random.Generator) -> None:
    h, w = canvas.shape[:2]
    bw, bh = int(w * rng.uniform(0.2, 0.35)), int(h * rng.uniform(0.06, 0.1))
    x0, y0 = int(rng.uniform(0.05, 0.95) * (w - bw)), int(h * 0.97) - bh
    canvas[y0 : y0 + bh, x0 : x0 + bw] = 255
    x = x0 + 2
    while x < x0 + bw - 2:
        t = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            canvas[y0 + 2 : y0 + bh - 2, x : x + t] = 0
        x += t


def _material(canvas: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    h, w = canvas.shape[:2]
    x = np.linspace(-1, 1, w, dtype=np.float32)
    img = canvas.astype(np.float32)
    if kind == "cylinder":
        img *= (0.72 + 0.28 * np.sqrt(np.clip(1 - x**2, 0, 1)))[None, :, None]
    elif kind == "metallic":
        img *= (0.8 + 0.2 * np.cos(x * rng.uniform(4, 10) + rng.uniform(0, 6)))[None, :, None]
    if kind in ("glossy", "cylinder", "metallic"):  # a specular streak
        c, s = rng.uniform(-0.7, 0.7), rng.uniform(0.04, 0.15)
        img += (rng.uniform(60, 140) * np.exp(-((x - c) ** 2) / (2 * s * s)))[None, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_identity(index: int, seed: int = 1, size: int = 192, photos: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Identity ``index`` as an RGBA ``size x size`` image (alpha = its outline); deterministic in ``(seed, index)``.

    ``photos``: real photos for the product-picture panels (default: scikit-image's, loaded once).
    """
    rng = np.random.default_rng([seed, index, 7])
    form = FORMS[int(rng.integers(len(FORMS)))]
    aspect = rng.uniform(1.1, 1.6) if form in ("tub", "tin", "tray") else rng.uniform(0.45, 1.0)
    h = size if aspect <= 1 else int(size / aspect)
    w = max(32, int(h * aspect))
    cols = palette(rng)
    canvas = np.ascontiguousarray(_ground(rng, h, w, cols, GROUNDS[int(rng.integers(len(GROUNDS)))]))
    _motifs(canvas, rng, cols, _default_photos() if photos is None else photos)
    lum = np.asarray(cols[0], np.float32).mean()
    ink = (250, 250, 250) if lum < 120 else (15, 15, 15)
    if rng.random() < 0.3:
        ink = tuple(int(v) for v in _hsv(rng.uniform(0, 180), 0.9, 0.9 if lum < 120 else 0.3))
    brand = _word(rng, int(rng.integers(1, 4)))
    if rng.random() < 0.2:  # vertical brand
        side = np.ascontiguousarray(np.rot90(canvas))
        _text(side, rng, brand, rng.uniform(0.3, 0.8), 0.9, ink, 2)
        canvas[:] = np.rot90(side, -1)
    else:
        _text(canvas, rng, brand, rng.uniform(0.2, 0.65), rng.uniform(0.6, 1.2), ink, int(rng.integers(1, 4)))
    _text(canvas, rng, _word(rng, int(rng.integers(2, 5))), rng.uniform(0.7, 0.85), rng.uniform(0.35, 0.6), ink, 1)
    for _ in range(int(rng.integers(0, 4))):  # small print
        line = " ".join(_word(rng, 1) for _ in range(int(rng.integers(2, 5))))
        _text(canvas, rng, line, rng.uniform(0.1, 0.95), rng.uniform(0.15, 0.25), ink, 1)
    if rng.random() < 0.5:
        _barcode(canvas, rng)
    if rng.random() < 0.25:  # price badge
        bx, by, br = int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.1, 0.4) * h), int(0.12 * min(h, w)) + 3
        cv2.circle(canvas, (bx, by), br, tuple(int(v) for v in _hsv(0 if rng.random() < 0.5 else 25, 1, 1)), -1, cv2.LINE_AA)
        cv2.putText(canvas, f"{int(rng.integers(1, 99))}%", (bx - br + 3, by + br // 3), cv2.FONT_HERSHEY_SIMPLEX,
                    br / 30, (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    mask = _form_mask(form, h, w)
    canvas = _material(canvas, rng, MATERIALS[int(rng.integers(len(MATERIALS)))] if form not in ("can", "tin") else "cylinder")
    outline = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    cv2.polylines(canvas, outline, True, tuple(int(v) for v in rng.integers(10, 80, 3)), int(rng.integers(1, 3)))
    out = np.zeros((size, size, 4), np.uint8)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = np.dstack([canvas, mask])
    return out


_PHOTOS: list[np.ndarray] = []


def _default_photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from .backgrounds import load_backgrounds

        _PHOTOS.extend(load_backgrounds())
    return _PHOTOS


def identity_photo(
    rgba: np.ndarray, index: int, photo: int, seed: int, backgrounds: Sequence[np.ndarray], size: int = 160
) -> np.ndarray:
    """Photo ``photo`` of identity ``index``: 0 is the catalog shot on white, k >= 1 a wild photo."""
    if photo == 0:
        return catalog_image(rgba, size)
    return wild_photo(rgba, np.random.default_rng([seed, index, 1, photo]), backgrounds, size)
