"""Video capture for the camera: a file, a device index or a stream URL, read on its own thread.

The consumer always takes the newest frame, so a slow matcher never builds up lag; a file
can also be read at its own pace (every frame, for reproducible tests and benchmarks).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def parse_source(source: str | int | os.PathLike) -> str | int:
    """``"0"`` -> camera 0; anything else is a file path or stream URL."""
    if isinstance(source, int):
        return source
    source = os.fspath(source)
    return int(source) if source.isdigit() else source


class FrameSource:
    """Frames from a camera, file or stream, read on a background thread.

    ``live=True`` (cameras, streams, or a file played at its real rate) keeps only the
    newest frame: a slow worker skips frames instead of falling behind. ``live=False``
    (a file as fast as possible) hands over every frame in order.
    """

    def __init__(self, source: str | int | os.PathLike, *, realtime: bool | None = None):
        src = parse_source(source)
        self.is_file = isinstance(src, str) and "://" not in src
        if self.is_file and not Path(src).is_file():
            raise FileNotFoundError(f"{src}: no such video file")
        self.cap = cv2.VideoCapture(src)
        if not self.cap.isOpened():
            raise OSError(f"cannot open video source {source!r}")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0
        self.realtime = (not self.is_file) if realtime is None else realtime
        self.live = self.realtime or not self.is_file
        self._q: queue.Queue = queue.Queue(maxsize=1 if self.live else 4)
        self._stop = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index = 0
        t_start = time.perf_counter()
        while not self._stop.is_set():
            if self.is_file and self.realtime:  # pace a file at its own frame rate
                delay = t_start + index / self.fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            ok, frame = self.cap.read()
            if not ok:
                break
            item = (index, time.perf_counter(), frame)
            index += 1
            if self.live:
                try:
                    self._q.get_nowait()  # drop the stale frame
                    self.dropped += 1
                except queue.Empty:
                    pass
                self._q.put(item)
            else:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        self._q.put(None)

    def read(self, timeout: float = 5.0) -> tuple[int, float, np.ndarray] | None:
        """The next (index, capture time, BGR frame), or None at the end of the source."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.cap.release()
