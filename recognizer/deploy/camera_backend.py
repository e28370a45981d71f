"""The camera's embedder: ONNX Runtime by itself where it is installed, else torch.

A camera frame's crops are its hot path: with ONNX Runtime they embed 2-3x faster on a CPU
(``tools/bench.py --suite camera_table``). The export is the gallery's own model in fp32,
verified against torch when made (:func:`~recognizer.deploy.export.export_model`), so the
gallery accepts it as equivalent; it is made once and kept by the model's fingerprint.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..gallery import Gallery, GalleryError
from ..models.onnx import sidecar_path
from ..session import load_gallery_embedder, load_gallery_model, open_gallery_export
from .export import export_model


def export_cache_dir() -> Path:
    """Where verified exports made for the camera are kept: ``$RECOGNIZER_CACHE`` or ``~/.cache/recognizer``."""
    return Path(os.environ.get("RECOGNIZER_CACHE") or Path.home() / ".cache" / "recognizer") / "exports"


def load_camera_embedder(gallery: Gallery, model_spec: str | None = None, *, backend: str | None = None,
                         onnx: str | os.PathLike | None = None, threads: int | None = None, log=print):  # fmt: skip
    """The camera's embedder. ``backend`` torch or onnx as asked; unasked (``None`` or ``auto``),
    ONNX Runtime when it is installed, because a frame's crops embed 2-3x faster with it on a CPU
    (``tools/bench.py --suite camera_table``): an fp32 export of the gallery's model, verified
    against torch when made (once, ~15 s, kept under :func:`export_cache_dir` by fingerprint).
    Without ONNX Runtime, or when the export cannot be made or verified, torch, with a note why.
    """
    if backend not in (None, "auto") or onnx or model_spec:
        asked = ("onnx" if onnx else "torch") if backend in (None, "auto") else backend
        return load_gallery_embedder(gallery, model_spec, backend=asked, onnx=onnx, threads=threads)
    if "export" in gallery.model_description:  # built with an export: only that file makes its embeddings
        return open_gallery_export(gallery, None, threads=threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log("camera: torch backend (install the deploy extra for ONNX Runtime: frames about 2x faster)")
        return load_gallery_model(gallery)
    folder = export_cache_dir() / "".join(c if c.isalnum() or c in "-_." else "_" for c in gallery.fingerprint)
    path = folder / "model.onnx"
    try:
        if not path.exists() or not sidecar_path(path).exists():
            log(f"camera: exporting the gallery's model to ONNX once, verified against torch ({folder})")
            export_model(load_gallery_model(gallery), folder, model_spec=gallery.model_spec)
        emb = open_gallery_export(gallery, path, threads=threads)
    except GalleryError:  # the gallery refused the export (or is broken): not a reason to hide it behind torch
        raise
    except Exception as e:  # noqa: BLE001 - any failure to export or load falls back to the reference backend
        log(f"camera: torch backend (the ONNX export could not be made or loaded: {e})")
        return load_gallery_model(gallery)
    log(f"camera: ONNX Runtime backend ({path})")
    return emb
