"""The Live page's back end: browser camera frames through :class:`~recognizer.matching.camera.CameraMatcher`.

Each browser tab is a session with its own matcher (tracks, smoothing and the background
model live there), keyed by the session id the page picks and its candidate set; the
oldest sessions are dropped beyond ``max_sessions``. The matcher uses the gallery's stored
camera settings (``resolve_query(gallery, "camera")``), on its own gallery object, so frames
never wait for the photo matcher's lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from ..gallery import Gallery
from ..matching.camera import CameraMatcher
from ..matching.camera_config import PROPOSALS, CameraConfig
from ..matching.settings import resolve_query
from .metrics import Metrics
from .security import ServiceError


class LiveSessions:
    """Frames in, the visible tracks' labels out."""

    def __init__(self, gallery_root, model: Any, metrics: Metrics, max_sessions: int = 4):
        self.gallery = Gallery.open(gallery_root)
        self.model = model
        self.metrics = metrics
        self.max_sessions = max_sessions
        self.lock = threading.Lock()
        self._sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def frame(self, session: str, candidates: list[str] | None, proposals: str, rgb: np.ndarray) -> dict[str, Any]:
        if proposals not in PROPOSALS:
            raise ServiceError(422, f"proposals {proposals!r} is not one of {', '.join(PROPOSALS)}")
        if not session or len(session) > 64 or not session.isprintable():
            raise ServiceError(422, "session must be 1-64 printable characters")
        with self.lock:
            self.gallery.refresh()
            if not self.gallery.item_ids:
                raise ServiceError(409, "the gallery is empty: enrol items first")
            if candidates:
                missing = [c for c in candidates if c not in self.gallery]
                if missing:
                    raise ServiceError(422, "unknown candidate(s): "
                                     + self.gallery.unknown_message(missing).replace(f" {self.gallery.root}", ""))
            key = (tuple(candidates or ()), proposals)
            s = self._sessions.get(session)
            if s is None or s["key"] != key:
                if s is not None:
                    s["matcher"].close()
                query, rerank = resolve_query(self.gallery, "camera")
                cfg = CameraConfig(proposals=proposals, query=query, rerank=rerank)
                s = {"key": key, "matcher": CameraMatcher(self.gallery, self.model, candidates or None, cfg),
                     "index": 0, "t0": time.perf_counter()}  # fmt: skip
                self._sessions[session] = s
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)[1]["matcher"].close()
            self._sessions.move_to_end(session)
            m: CameraMatcher = s["matcher"]
            t0 = time.perf_counter()
            m.process(s["index"], t0 - s["t0"], np.ascontiguousarray(rgb[:, :, ::-1]))
            s["index"] += 1
            self.metrics.stage.labels("live_frame").observe(time.perf_counter() - t0)
            names = {i.item_id: i.name for i in self.gallery.items()}
            labels = [{"box": [int(v) for v in box], "label": label, "name": names.get(label, label),
                       "score": None if not np.isfinite(score) else round(float(score), 4)}
                      for box, label, score in m.labels()]  # fmt: skip
            return {"frame": s["index"], "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                    "labels": labels, "ms": round(1000 * (time.perf_counter() - t0), 1)}  # fmt: skip
