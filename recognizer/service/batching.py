"""Micro-batching: concurrent requests' images embedded in one forward pass, as model servers do.

A request puts a job on the queue and waits on its future. One worker thread takes the
first waiting job, then keeps collecting until it holds ``max_images`` images or
``wait_ms`` has passed since that first job, and hands the whole batch to ``run`` (which
embeds every image at once and scores each job against its own candidates). With
``max_images=1`` every request runs alone: one at a time, the baseline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One request's work: its images and whatever ``run`` needs to score them; ``future`` gets the result."""

    images: Sequence[Any]
    params: dict[str, Any]
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """A queue and one worker thread; ``run(jobs)`` returns one result (or exception) per job."""

    def __init__(self, run: Callable[[list[Job]], list[Any]], *, max_images: int = 16, wait_ms: float = 5.0,
                 on_batch: Callable[[int, float], None] | None = None):  # fmt: skip
        self.run = run
        self.max_images = max_images
        self.wait_s = wait_ms / 1000.0
        self.on_batch = on_batch  # (images, seconds the first job waited) per batch
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: Sequence[Any], **params: Any) -> Future:
        if self._stop:
            raise RuntimeError("the batcher is stopped")
        job = Job(images, params)
        self._q.put(job)
        return job.future

    def close(self) -> None:
        self._stop = True
        self._q.put(None)
        self._thread.join(timeout=10)

    def _collect(self, first: Job) -> list[Job]:
        jobs, n = [first], len(first.images)
        deadline = time.perf_counter() + self.wait_s
        while n < self.max_images:
            left = deadline - time.perf_counter()
            try:
                job = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._q.put(None)  # let the loop see the stop
                break
            jobs.append(job)
            n += len(job.images)
        return jobs

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            jobs = self._collect(first) if self.max_images > len(first.images) else [first]
            if self.on_batch is not None:
                self.on_batch(sum(len(j.images) for j in jobs), time.perf_counter() - first.queued)
            try:
                results = self.run(jobs)
            except Exception as e:  # noqa: BLE001 - a failed batch fails its jobs, never the worker
                results = [e] * len(jobs)
            for job, res in zip(jobs, results, strict=True):
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)
