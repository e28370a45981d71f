"""Per-track geometric verification off the frame's path: one worker thread, results ``lag`` frames later.

Verifying a track's top candidates (SIFT on its crop, a homography per stored view) takes 5-20 ms
on a CPU: run inline it was most of the camera's slowest frames (the frames a track is born on,
is challenged, or jumps box). Here the frame only copies the crop and reads the items' stored
features (cached by the gallery, on the caller's thread: the worker never touches the gallery's
database); the worker thread runs the rest (OpenCV releases the GIL) while the next frames'
proposals and embedding run. A result is applied at the start of the ``lag``-th frame after the
request, waiting for it there if the worker is not done yet, so labels do not depend on how fast
the worker was: a verification always lands exactly ``lag`` frames after it was asked for (2:
before a challenger's third win, when ``switch_frames`` = 3 lets it switch). On 2 cores the worker
shares the CPU with the embedder, so one frame is often too short for it (measured in #16).
``lag=0`` runs it inline, in the frame (the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from .rerank import RerankConfig, verify_items
from .tracking import Track

__all__ = ["TrackVerifier"]


class TrackVerifier:
    """Verifies labels of a track on its crop; ``request`` now, the bonus ``collect``-ed next frame."""

    def __init__(self, gallery, labels: Sequence[str], cfg: RerankConfig, lag: int = 2):
        self.gallery, self.labels, self.cfg, self.lag = gallery, list(labels), cfg, lag
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="verify") if lag > 0 else None
        self._pending: list[tuple[int, Track, np.ndarray, int, Future]] = []  # (frames left, ...)

    def _bonus(self, rgb: np.ndarray, cols: np.ndarray, base: np.ndarray, stored) -> np.ndarray:
        names = [self.labels[c] for c in cols]
        cfg = replace(self.cfg, top_k=len(names))
        bonus = np.zeros(len(self.labels), np.float32)
        bonus[cols] = verify_items(self.gallery, rgb, names, base, cfg, stored=stored) - base
        return bonus

    def request(self, tr: Track, cols: np.ndarray, rgb: np.ndarray) -> np.ndarray | None:
        """Verify ``cols`` on this crop of the track: the bonus per label now (inline), or None (pending)."""
        base = tr.scores[cols].astype(np.float32)
        stored = self.gallery.features.read([self.labels[c] for c in cols], self.cfg.method, self.cfg.per_item)
        if self._pool is None:
            return self._bonus(rgb, cols, base, stored)
        fut = self._pool.submit(self._bonus, np.ascontiguousarray(rgb), cols, base, stored)
        self._pending.append((self.lag, tr, cols, tr.verify_epoch, fut))
        return None

    def collect(self) -> list[tuple[Track, np.ndarray, np.ndarray]]:
        """Call once a frame: the results due now, (track, labels, bonus), waiting for unfinished
        ones. A result for a crop the track has since left (its box jumped) is dropped."""
        self._pending = [(n - 1, *rest) for n, *rest in self._pending]
        due = [p for p in self._pending if p[0] <= 0]
        self._pending = [p for p in self._pending if p[0] > 0]
        out = []
        for _, tr, cols, epoch, fut in due:
            bonus = fut.result()
            if tr.verify_epoch == epoch:
                out.append((tr, cols, bonus))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
