"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Request counts and latencies per endpoint, latencies per stage, batch sizes, gallery size."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recognizer_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("recognizer_request_seconds", "HTTP request latency", ["endpoint", "method"],
                                 buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.stage = Histogram("recognizer_stage_seconds", "Time per processing stage", ["stage"],
                               buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_images = Histogram("recognizer_batch_images", "Images embedded per micro-batch",
                                      buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)  # fmt: skip
        self.items = Gauge("recognizer_gallery_items", "Items in the gallery", registry=r)
        self.vectors = Gauge("recognizer_gallery_vectors", "Vectors in the gallery", registry=r)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)

    @contextmanager
    def timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - t0)

    def gallery_size(self, items: int, vectors: int) -> None:
        self.items.set(items)
        self.vectors.set(vectors)

    def render(self) -> bytes:
        return generate_latest(self.registry)
