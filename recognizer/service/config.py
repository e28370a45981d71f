"""What a service instance is configured with (``tools/serve.py`` flags map one to one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServiceConfig:
    """Settings of one service over one gallery.

    ``batch_max_images`` / ``batch_wait_ms``: concurrent match requests are embedded together,
    up to this many images, waiting at most this long for company (``batch_max_images=1``
    turns micro-batching off: one request at a time). ``token_file``: where the bearer token
    for writes lives (generated with mode 0600 at first start when missing; default
    ``<gallery>/service.token``). ``protect_reads``: reads need the token too.
    ``photo_query``: settings that win over the gallery's stored ones (as ``--set-photo-query`` takes them).
    ``uploads_dir``: where enrolled photos are kept (default ``<gallery>/uploads``), so
    thumbnails and the Check page can show them. ``report_dir``: a ``tools/report.py`` output
    folder shown on the Report page.
    """

    gallery: Path
    model_spec: str | None = None
    backend: str = "torch"
    onnx: str | None = None
    threads: int | None = None
    token_file: Path | None = None
    protect_reads: bool = False
    max_upload_bytes: int = 20 * 1024 * 1024
    max_images_per_request: int = 16
    batch_max_images: int = 16
    batch_wait_ms: float = 5.0
    uploads_dir: Path | None = None
    report_dir: Path | None = None
    photo_query: dict | None = None  # overrides of the gallery's stored photo-query settings (e.g. rerank=none)
    live_sessions: int = 4

    def __post_init__(self) -> None:
        self.gallery = Path(self.gallery)
        self.token_file = Path(self.token_file) if self.token_file else self.gallery / "service.token"
        self.uploads_dir = Path(self.uploads_dir) if self.uploads_dir else self.gallery / "uploads"
        self.report_dir = Path(self.report_dir) if self.report_dir else None
        if self.batch_max_images < 1:
            raise ValueError(f"batch_max_images must be >= 1, got {self.batch_max_images}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes must be >= 1024, got {self.max_upload_bytes}")
