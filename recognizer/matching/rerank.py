"""Geometric re-ranking: verify the few top candidates with local features and a homography.

Flat printed items (boxes, cartons, books, labels) can be verified exactly: a query and
a gallery image of the same item share many keypoints related by one homography. Used
as a second stage on the embedding's top K items (or the candidate set), it turns
near-misses into sure matches and rejects lookalikes.

What makes it work (measured before, kept here): one-to-one matching (each gallery
keypoint keeps only its best query match) after Lowe's ratio test; rejecting degenerate
homographies (|det| of the linear part outside [1/50, 50]); and letting verification
override the embedding only when the best item has at least ``min_inliers`` inliers.
``cv2.USAC_FAST`` is used where OpenCV has it (2-4x faster than RANSAC on non-matches).
Gallery keypoints and descriptors are computed at enrollment and stored in the gallery.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("sift", "orb")


@dataclass(frozen=True)
class RerankConfig:
    method: str = "sift"
    top_k: int = 10  # items verified when the query has no candidate set
    per_item: int = 3  # gallery images verified per item, at most
    ratio: float = 0.8  # Lowe's ratio test
    min_inliers: int = 15  # verification overrides the embedding only from here on
    weight: float = 1.0  # final = embedding score + weight * inliers / (inliers + min_inliers)
    budget_ms: float = 1000.0  # per query; items left unverified keep their embedding score
    max_side: int = 640
    nfeatures: int = 1500
    reproj_px: float = 5.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")


_DETECTORS: dict[tuple[str, int], object] = {}


def _detector(method: str, nfeatures: int):
    key = (method, nfeatures)
    if key not in _DETECTORS:
        _DETECTORS[key] = (
            cv2.SIFT_create(nfeatures=nfeatures) if method == "sift" else cv2.ORB_create(nfeatures=nfeatures)
        )
    return _DETECTORS[key]


def extract(
    rgb: np.ndarray, method: str = "sift", *, max_side: int = 640, nfeatures: int = 1500
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint coordinates (``N x 2`` float32, in the resized image) and descriptors."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    s = min(1.0, max_side / max(h, w))
    if s < 1.0:
        gray = cv2.resize(gray, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    kps, desc = _detector(method, nfeatures).detectAndCompute(gray, None)
    if desc is None or not kps:
        dtype = np.float32 if method == "sift" else np.uint8
        return np.zeros((0, 2), np.float32), np.zeros((0, 128 if method == "sift" else 32), dtype)
    return np.array([k.pt for k in kps], np.float32), desc


def count_inliers(
    q: tuple[np.ndarray, np.ndarray], g: tuple[np.ndarray, np.ndarray], method: str, cfg: RerankConfig
) -> int:
    """Homography inliers between a query's and a gallery image's features (0 when none holds)."""
    (qk, qd), (gk, gd) = q, g
    if len(qd) < 2 or len(gd) < 2:
        return 0
    norm = cv2.NORM_L2 if method == "sift" else cv2.NORM_HAMMING
    knn = cv2.BFMatcher(norm).knnMatch(qd, gd, k=2)
    best: dict[int, tuple[float, int]] = {}  # gallery keypoint -> (distance, query keypoint)
    for pair in knn:
        if len(pair) < 2:
            continue
        m, n = pair
        if m.distance < cfg.ratio * n.distance and (
            m.trainIdx not in best or m.distance < best[m.trainIdx][0]
        ):
            best[m.trainIdx] = (
                m.distance,
                m.queryIdx,
            )  # one-to-one: each gallery keypoint keeps its best match
    if len(best) < 8:
        return 0
    gi = np.fromiter(best.keys(), np.int64)
    qi = np.array([v[1] for v in best.values()], np.int64)
    method_flag = getattr(cv2, "USAC_FAST", cv2.RANSAC)
    H, mask = cv2.findHomography(gk[gi], qk[qi], method_flag, cfg.reproj_px)
    if H is None or mask is None:
        return 0
    det = float(np.linalg.det(H[:2, :2]))
    if not (1 / 50 <= abs(det) <= 50):  # degenerate: collapsed onto a point or exploded
        return 0
    return int(mask.sum())


def rerank_scores(
    items: Sequence[str],
    emb_scores: np.ndarray,
    query_feats: tuple[np.ndarray, np.ndarray],
    gallery_feats: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    cfg: RerankConfig,
) -> tuple[np.ndarray, dict[str, int], bool]:
    """Re-score ``items`` (their embedding scores given) by verification, best embedding first.

    Returns the final scores, the inliers found per verified item, and whether the time
    budget cut verification short.
    """
    t0 = time.perf_counter()
    final = np.asarray(emb_scores, np.float32).copy()
    inliers: dict[str, int] = {}
    cut = False
    for j in np.argsort(-final):
        if 1000 * (time.perf_counter() - t0) > cfg.budget_ms:
            cut = True
            break
        item = items[j]
        n = max(
            (
                count_inliers(query_feats, g, cfg.method, cfg)
                for g in gallery_feats.get(item, [])[: cfg.per_item]
            ),
            default=0,
        )
        inliers[item] = n
        final[j] += verification_bonus(n, cfg)
    return final, inliers, cut


def verification_bonus(inliers: int, cfg: RerankConfig) -> float:
    """What ``inliers`` add to an item's embedding score: nothing below the gate ``min_inliers``."""
    return cfg.weight * inliers / (inliers + cfg.min_inliers) if inliers >= cfg.min_inliers else 0.0


def verify_items(
    gallery, query_rgb: np.ndarray, items: Sequence[str], scores: np.ndarray, cfg: RerankConfig,
    *, stored: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> np.ndarray:
    """Scores of ``items`` after verifying the ``cfg.top_k`` best against the gallery's stored features.

    The one re-ranking step that matching, the report and the camera share; items outside the
    top K keep their embedding scores. ``stored``: those items' features already read from the
    gallery (``gallery.features.read``), so a worker thread never touches the gallery's database.
    """
    scores = np.asarray(scores, np.float32)
    top = np.argsort(-scores)[: cfg.top_k]
    names = [items[j] for j in top]
    feats = extract(query_rgb, cfg.method, max_side=cfg.max_side, nfeatures=cfg.nfeatures)
    if stored is None:
        stored = gallery.features.read(names, cfg.method, cfg.per_item)
    final, _, _ = rerank_scores(names, scores[top], feats, stored, cfg)
    out = scores.copy()
    out[top] = final
    return out
