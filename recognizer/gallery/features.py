"""Local features (keypoints + descriptors, e.g. SIFT or ORB) of enrolled images, for geometric re-ranking.

Stored per vector id in the gallery database (``local_features``), so they follow the
vector's life: removing an item removes its features. Read per item, oldest photos first,
and cached per gallery generation (``Gallery.features``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import numpy as np

from .errors import GalleryError
from .store import FEATURES_SCHEMA, GalleryStore

Features = tuple[np.ndarray, np.ndarray]  # (N x 2 float32 keypoints, N x D descriptors)


def store_features(store: GalleryStore, method: str, feats: dict[int, Features]) -> int:
    """Store keypoints and descriptors per vector id (one transaction); returns how many."""
    rows = [
        (
            int(v),
            method,
            kp.astype(np.float32).tobytes(),
            d.tobytes(),
            d.dtype.str,
            int(d.shape[1]) if d.ndim == 2 else 0,
        )
        for v, (kp, d) in feats.items()
    ]
    if not rows:
        return 0
    with store.writer() as conn:
        vids = [r[0] for r in rows]
        known: set[int] = set()
        for i in range(0, len(vids), 500):
            chunk = vids[i : i + 500]
            known.update(
                r[0]
                for r in conn.execute(
                    f"SELECT vid FROM vectors WHERE vid IN ({','.join('?' * len(chunk))})", chunk
                )
            )
        unknown = [v for v in vids if v not in known]
        if unknown:
            raise GalleryError(f"{store.root}: no vectors with ids {unknown[:5]}")
        conn.executescript(FEATURES_SCHEMA)
        store.transaction(
            conn, [("INSERT OR REPLACE INTO local_features VALUES (?, ?, ?, ?, ?, ?)", rows)], bump=()
        )
    return len(rows)


def read_features(
    store: GalleryStore, items: Sequence[str], method: str, per_item: int
) -> dict[str, list[Features]]:
    """Stored features of up to ``per_item`` images of each item (oldest first); none where not stored."""
    out: dict[str, list[Features]] = {}
    with store.reading() as conn:
        for it in items:
            try:
                rows = conn.execute(
                    "SELECT f.kp, f.descriptors, f.dtype, f.dim FROM local_features f JOIN vectors v ON f.vid=v.vid "
                    "WHERE v.item_id=? AND f.method=? ORDER BY v.vid LIMIT ?",
                    (it, method, per_item),
                ).fetchall()
            except sqlite3.OperationalError:  # no feature table yet
                rows = []
            out[it] = [
                (
                    np.frombuffer(kp, np.float32).reshape(-1, 2),
                    np.frombuffer(d, np.dtype(dt)).reshape(-1, dim),
                )
                for kp, d, dt, dim in rows
            ]
    return out


def read_vector_features(store: GalleryStore, vids: Sequence[int], method: str) -> dict[int, Features]:
    """Stored features of these vectors (those that have them)."""
    out: dict[int, Features] = {}
    vids = [int(v) for v in vids]
    with store.reading() as conn:
        for i in range(0, len(vids), 500):
            chunk = vids[i : i + 500]
            try:
                rows = conn.execute(
                    f"SELECT vid, kp, descriptors, dtype, dim FROM local_features WHERE method=? "
                    f"AND vid IN ({','.join('?' * len(chunk))})", (method, *chunk),
                ).fetchall()  # fmt: skip
            except sqlite3.OperationalError:  # no feature table yet
                return out
            for vid, kp, d, dt, dim in rows:
                out[int(vid)] = (np.frombuffer(kp, np.float32).reshape(-1, 2), np.frombuffer(d, np.dtype(dt)).reshape(-1, dim))
    return out


def feature_methods(store: GalleryStore) -> list[str]:
    """The local-feature methods stored for at least one vector."""
    with store.reading() as conn:
        try:
            return [r[0] for r in conn.execute("SELECT DISTINCT method FROM local_features")]
        except sqlite3.OperationalError:
            return []


def vectors_without(store: GalleryStore, method: str) -> list[tuple[int, str]]:
    """``(vid, source path)`` of vectors that have no stored features of ``method``.

    Only each photo's first view is listed: its other views (``sha256`` ``...#view``) share its keypoints.
    """
    with store.reading() as conn:
        try:
            cur = conn.execute(
                "SELECT v.vid, v.path FROM vectors v LEFT JOIN local_features f ON f.vid=v.vid AND f.method=? "
                "WHERE f.vid IS NULL AND instr(v.sha256, '#') = 0 ORDER BY v.vid",
                (method,),
            )
        except sqlite3.OperationalError:
            cur = conn.execute("SELECT vid, path FROM vectors WHERE instr(sha256, '#') = 0 ORDER BY vid")
        return [(int(v), p) for v, p in cur]


class LocalFeatures:
    """A gallery's local features (``Gallery.features``): store, read (cached per generation), list."""

    def __init__(self, store: GalleryStore, generation: Callable[[], int]) -> None:
        self.store, self._generation = store, generation
        self._cache: dict[tuple, list[Features]] = {}

    def store_features(self, method: str, feats: dict[int, Features]) -> int:
        """Store keypoints and descriptors per vector id (one transaction); returns how many."""
        return store_features(self.store, method, feats)

    def read(self, items: Sequence[str], method: str, per_item: int = 3) -> dict[str, list[Features]]:
        """Stored features of up to ``per_item`` images of each item (oldest first)."""
        key = (self._generation(), method, per_item)
        missing = [it for it in items if (*key, it) not in self._cache]
        for it, feats in (read_features(self.store, missing, method, per_item) if missing else {}).items():
            self._cache[(*key, it)] = feats
        return {it: self._cache[(*key, it)] for it in items}

    def of_vectors(self, vids: Sequence[int], method: str) -> dict[int, Features]:
        """Stored features of these vector ids (those that have them)."""
        return read_vector_features(self.store, vids, method)

    def methods(self) -> list[str]:
        """The methods stored for at least one vector."""
        return feature_methods(self.store)

    def missing(self, method: str) -> list[tuple[int, str]]:
        """``(vid, source path)`` of vectors without stored features of ``method``."""
        return vectors_without(self.store, method)
