"""File helpers: atomic replacement (a reader, or a crash, sees the old file or the new one, never half of
one) and content hashes."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


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


def write_atomic(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` writes the content to a temp sibling, which then replaces ``path`` atomically.

    Readers never see a partial file; a failure (or a crash) leaves the old file as it was.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        fill(tmp)
        fsync_replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return out


def write_csv_atomic(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> Path:
    """Write a UTF-8 CSV atomically (see :func:`write_atomic`)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    return write_atomic(path, fill)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text through a temp file."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file (identical images are enrolled once)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, doc: Any) -> Path:
    """JSON through a temp file, fsync and rename: readers see the old document or the new one."""
    return write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True, default=float) + "\n")
