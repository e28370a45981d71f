"""Cheap extra cues fused with the embedding score: an item's colours.

Packages of one brand often differ mostly in colour (flavours, variants), and a CNN embedding
trained for shape and texture under colour jitter weighs colour little. The cue: an HSV
histogram per enrolled photo (stored at enrolment like keypoints, as the ``hsv`` feature
method), compared with the query's by the Hellinger affinity (the Bhattacharyya coefficient,
1 for identical histograms). The fused score is ``embedding + weight * affinity`` for the
best items; calibration picks the weight (0 switches it off).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

COLOUR_METHOD = "hsv"
BINS = (8, 4, 4)  # hue, saturation, value


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """L1-normalised HSV histogram (``prod(BINS)`` float32) of an RGB image."""
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA) if max(rgb.shape[:2]) > 64 else rgb
    hsv = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, list(BINS), [0, 180, 0, 256, 0, 256]).ravel().astype(np.float32)
    return h / max(float(h.sum()), 1e-12)


def as_feature(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The histogram in the gallery's feature layout: no keypoints, one descriptor row."""
    return np.zeros((0, 2), np.float32), hist.reshape(1, -1).astype(np.float32)


def colour_affinity(query_hist: np.ndarray, item_hists: Sequence[np.ndarray]) -> float:
    """Best Hellinger affinity of the query's histogram with any of an item's (0 when it has none)."""
    if not len(item_hists):
        return 0.0
    g = np.sqrt(np.stack([np.asarray(h, np.float32).ravel() for h in item_hists]))
    return float((g @ np.sqrt(query_hist)).max())


def add_colour(
    scores: np.ndarray, items: Sequence[str], query_hist: np.ndarray, hists: dict[str, list], weight: float, top_k: int
) -> np.ndarray:
    """``scores`` with ``weight * affinity`` added to the ``top_k`` best items (``hists``: item -> histograms)."""
    out = np.asarray(scores, np.float32).copy()
    for j in np.argsort(-out)[:top_k]:
        if np.isfinite(out[j]):
            out[j] += weight * colour_affinity(query_hist, hists.get(items[j], []))
    return out
