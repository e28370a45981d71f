"""Real background photos (shipped by scikit-image, no download) for pasting items onto.

Used by the synthetic catalog and by training's background augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# scikit-image's bundled real photos (no download needed); grayscale ones are made RGB.
BACKGROUND_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "brick",
    "grass", "gravel", "camera", "clock", "coins", "page",
)  # fmt: skip


def load_backgrounds(names: Sequence[str] = BACKGROUND_PHOTOS) -> list[np.ndarray]:
    """scikit-image's real photos as RGB uint8 arrays."""
    import skimage.data

    out = []
    for name in names:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs
            img = img[0]
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3].astype(np.uint8)))
    return out


def random_background(rng: np.random.Generator, backgrounds: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A random crop of a random real photo, resized to ``size x size``."""
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    H, W = bg.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(H, W))
    y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    crop = bg[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)
