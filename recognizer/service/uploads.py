"""Uploaded bytes -> RGB arrays, with exactly the image loader's checks and messages.

The bytes go through :func:`recognizer.data.imageio.load_image` (EXIF orientation, every PIL
mode, truncated files refused, the pixel limit), via a short-lived file, so an upload and a
file on disk are judged by the same code. Enrolled photos are kept content-addressed in the
uploads folder (the name is the SHA-256, never the client's file name or the item id).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..data.imageio import MAX_PIXELS, ImageLoadError, load_image
from .security import ServiceError

_SUFFIXES = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"GI": ".gif", b"BM": ".bmp", b"RI": ".webp"}


def _suffix(data: bytes) -> str:
    return _SUFFIXES.get(data[:2], ".img")


def describe(name: str | None, index: int) -> str:
    return f"image {index + 1}" + (f" ({name!r})" if name else "")


def decode_image(data: bytes, name: str, *, tmp_dir: str | os.PathLike | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:  # fmt: skip
    """Decode an upload; a bad one raises a 400 :class:`ServiceError` naming ``name`` and the reason."""
    if not data:
        raise ServiceError(400, f"{name}: empty file (0 bytes)")
    fd, path = tempfile.mkstemp(suffix=_suffix(data), dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_image(path, max_pixels=max_pixels)
    except ImageLoadError as e:
        raise ServiceError(400, f"{name}: {e.reason}") from None
    finally:
        os.unlink(path)


def store_upload(data: bytes, folder: Path) -> Path:
    """Keep an enrolled photo as ``folder/<sha256><suffix>`` (atomic; the same bytes land on the same file)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / (hashlib.sha256(data).hexdigest() + _suffix(data))
    if not dest.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    return dest
