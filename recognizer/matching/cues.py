"""Cheap extra cues fused with the embedding score: an item's colours.

Packages of one brand often differ mostly in colour (flavours, variants), and a CNN embedding
trained for shape and texture under colour jitter weighs colour little. The cue: an HSV
histogram per enrolled photo (stored at enrolment like keypoints, as the ``hsv`` feature
method), compared with the query's by the Hellinger affinity (the Bhattacharyya coefficient,
1 for identical histograms). The fused score is ``embedding + weight * affinity`` for the
best items; calibration picks the weight (0 switches it off).

The camera uses the cue its own way (:func:`colour_penalty`, ``CameraConfig.colour``): it knows
the object's pixels (the table background's mask) and the items' (their plain-background
photos), so histograms of the objects alone are compared, and each crop's best items fall by how
much worse their colours match than the best-matching one's: a crop that matches no item (a
hand) stays below the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

COLOUR_METHOD = "hsv"
BINS = (8, 4, 4)  # hue, saturation, value
COLOUR_TOP_K = 10  # items per crop the camera's colour cue re-scores


def colour_histogram(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """L1-normalised HSV histogram (``prod(BINS)`` float32) of an RGB image, or of its ``mask``-ed
    pixels (the object alone: all pixels when the mask holds under 1% of them)."""
    if mask is not None and (mask > 0).mean() < 0.01:
        mask = None
    if max(rgb.shape[:2]) > 64:
        rgb = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize((mask > 0).astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    m = None if mask is None else (mask > 0).astype(np.uint8)
    h = cv2.calcHist([hsv], [0, 1, 2], m, list(BINS), [0, 180, 0, 256, 0, 256]).ravel().astype(np.float32)
    return h / max(float(h.sum()), 1e-12)


def as_feature(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The histogram in the gallery's feature layout: no keypoints, one descriptor row."""
    return np.zeros((0, 2), np.float32), hist.reshape(1, -1).astype(np.float32)


def colour_affinity(query_hist: np.ndarray, item_hists: Sequence[np.ndarray]) -> float:
    """Best Hellinger affinity of the query's histogram with any of an item's (0 when it has none)."""
    if not len(item_hists):
        return 0.0
    g = np.stack([np.asarray(h, np.float32).ravel() for h in item_hists])
    return float(colour_affinities(np.asarray(query_hist, np.float32).reshape(1, -1), [g])[0, 0])


def colour_affinities(queries: np.ndarray, items: Sequence[np.ndarray]) -> np.ndarray:
    """``Q x I`` best Hellinger affinity of each query histogram with each item's (``n_i x bins``);
    NaN for an item without histograms."""
    q = np.sqrt(np.asarray(queries, np.float32))
    out = np.full((len(q), len(items)), np.nan, np.float32)
    for j, h in enumerate(items):
        if len(h):
            out[:, j] = (q @ np.sqrt(np.asarray(h, np.float32)).T).max(axis=1)
    return out


def add_colour(
    scores: np.ndarray, items: Sequence[str], query_hist: np.ndarray, hists: dict[str, list], weight: float, top_k: int
) -> np.ndarray:
    """``scores`` with ``weight * affinity`` added to the ``top_k`` best items (``hists``: item -> histograms)."""
    out = np.asarray(scores, np.float32).copy()
    for j in np.argsort(-out)[:top_k]:
        if np.isfinite(out[j]):
            out[j] += weight * colour_affinity(query_hist, hists.get(items[j], []))
    return out


def colour_penalty(scores: np.ndarray, affinity: np.ndarray, weight: float, top_k: int = COLOUR_TOP_K) -> np.ndarray:
    """``scores`` (``Q x I``) with each row's ``top_k`` best items lowered by ``weight`` x how much
    worse their colours match than the best-matching of them (``affinity``, ``Q x I``; NaN: unknown
    colour, not lowered). The best colour match keeps its score, so a crop that matches no item
    (a hand) reads unknown as before; only the others fall back."""
    out = np.asarray(scores, np.float32).copy()
    if not weight or not out.size:
        return out
    top = np.argsort(-out, axis=1)[:, :top_k]
    a = np.take_along_axis(affinity, top, axis=1)
    known = np.isfinite(a)
    if not known.any():
        return out
    best = np.where(known, a, -np.inf).max(axis=1, keepdims=True)
    drop = np.where(known & np.isfinite(best), weight * (best - np.where(known, a, 0.0)), 0.0)
    np.put_along_axis(out, top, np.take_along_axis(out, top, axis=1) - drop.astype(np.float32), axis=1)
    return out
