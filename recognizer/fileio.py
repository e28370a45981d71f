"""Atomic file replacement: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_replace(tmp: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Flush ``tmp`` to disk, rename it over ``dst``, and flush the folder entry."""
    tmp, dst = Path(tmp), Path(dst)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(dst: str | os.PathLike) -> Path:
    """The temporary sibling that :func:`fsync_replace` later renames over ``dst``."""
    dst = Path(dst)
    return dst.with_name(dst.name + ".tmp")
