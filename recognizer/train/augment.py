"""Background augmentation: cut the item out and paste it on a random real photo.

A catalog shot on white, a COIL object on black, or an image with an alpha channel gives
a clean mask; other photos can use GrabCut (slow, so opt-in). The item is then scaled,
rotated and shadowed onto a crop of a real photo (the user's folder, or scikit-image's
by default), so the embedding learns the item, not its studio background.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.synthetic import plain_background

MASK_METHODS = ("auto", "plain", "grabcut")


def foreground_mask(rgb: np.ndarray, method: str = "auto", tol: int = 30) -> np.ndarray | None:
    """0/255 mask of the item, or None when no clean mask can be had with ``method``.

    ``plain``/``auto``: a white (border > 220) or black (border < 50) background with
    little variation is thresholded away; ``auto`` gives up otherwise, ``grabcut`` runs
    OpenCV's GrabCut from a rectangle 5% inside the border.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"mask method {method!r} is not one of {', '.join(MASK_METHODS)}")
    mean = plain_background(rgb)
    if method in ("auto", "plain") and mean is not None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        fg = np.abs(gray - mean) > tol  # differs from the plain background
        mask = fg.astype(np.uint8) * 255
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k, iterations=2), cv2.MORPH_OPEN, k)
        return mask if mask.mean() > 255 * 0.02 else None
    if method == "grabcut":
        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        rect = (int(w * 0.05), int(h * 0.05), int(w * 0.9), int(h * 0.9))
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, rect, bgd, fgd, 3, cv2.GC_INIT_WITH_RECT)
        out = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
        return out if out.mean() > 255 * 0.02 else None
    return None


def load_background_folder(folder: str | os.PathLike, limit: int = 200) -> list[np.ndarray]:
    """Up to ``limit`` photos from a user's folder of backgrounds."""
    from ..data.imageio import ImageLoadError, load_image

    out = []
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp") and len(out) < limit:
            try:
                out.append(load_image(p))
            except ImageLoadError:
                continue
    if not out:
        raise ValueError(f"{folder}: no readable background photos")
    return out


@dataclass
class BackgroundPaste:
    """Callable: ``rgb -> rgb`` with the item pasted on a random background (or unchanged)."""

    backgrounds: Sequence[np.ndarray]
    p: float = 0.5
    mask_method: str = "auto"
    scale: tuple[float, float] = (0.55, 0.95)
    rotate: float = 20.0
    shadow: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.backgrounds:
            raise ValueError("BackgroundPaste needs at least one background photo")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.rng.random() >= self.p:
            return rgb
        mask = foreground_mask(rgb, self.mask_method)
        if mask is None:
            return rgb
        from ..data.backgrounds import random_background

        size = max(rgb.shape[:2])
        bg = random_background(self.rng, self.backgrounds, size).astype(np.float32)
        h, w = rgb.shape[:2]
        s = self.rng.uniform(*self.scale) * size / max(h, w)
        M = cv2.getRotationMatrix2D((w / 2, h / 2), self.rng.uniform(-self.rotate, self.rotate), s)
        M[:, 2] += (size - np.array([w, h])) / 2 + self.rng.uniform(-0.15, 0.15, 2) * size
        item = cv2.warpAffine(rgb, M, (size, size), flags=cv2.INTER_LINEAR)
        alpha = (
            cv2.warpAffine(mask, M, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32)[:, :, None] / 255
        )
        if self.shadow > 0:
            dx, dy = (int(v) for v in self.rng.integers(-size // 20, size // 20 + 1, 2))
            sh = cv2.GaussianBlur(np.roll(alpha[:, :, 0], (dy, dx), axis=(0, 1)), (0, 0), max(1.0, size / 60))
            bg *= 1 - self.shadow * self.rng.uniform(0.5, 1.0) * sh[:, :, None]
        return (item * alpha + bg * (1 - alpha)).clip(0, 255).astype(np.uint8)


def augment_grid(
    images: Sequence[np.ndarray], augment, out_path: str | os.PathLike, copies: int = 4, cell: int = 160
) -> Path:
    """A PNG grid: each row an image followed by ``copies`` augmented versions, for a person to look at."""
    rows = []
    for im in images:
        cells = [im] + [augment(im) for _ in range(copies)]
        rows.append(np.hstack([cv2.resize(c, (cell, cell), interpolation=cv2.INTER_AREA) for c in cells]))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return out
