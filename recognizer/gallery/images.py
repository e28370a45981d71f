"""The gallery's image store: a content-addressed copy of every enrolled photo, so that the gallery can be
re-embedded with another model (``recognizer.migrate``) after the source files have moved or gone.

Files live in the gallery folder, shared by all its versions (:mod:`.versions`):
``images/ab/abcdef....jpg`` holds the original bytes of the photo whose SHA-256 is ``abcdef...``
(written once: temp file, fsync, rename; a second enrolment of the same bytes reuses it). With the
``thumbnails`` option (``settings["store_images"]``, ``tools/enroll.py --store-images thumbnails``) only a
small JPEG ``images/ab/abcdef....thumb.jpg`` is kept, and a re-embed reads the source paths again.

Each version's database lists its photos in the ``images`` table (hash, copy, thumbnail, source path,
size), committed before the vectors that use them: a crash leaves at worst a copy nobody lists yet.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import write_bytes_atomic
from .store import IMAGES_SCHEMA, GalleryStore, storable

IMAGES_DIR = "images"
STORE_MODES = ("full", "thumbnails")
DEFAULT_STORE_MODE = "full"
THUMB_PX = 256
_EXT = re.compile(r"\.[a-z0-9]{1,5}")


def photo_hash(sha256: str) -> str:
    """The file hash in a vector's ``sha256``: ``hash``, ``hash#view`` or ``hash:(bbox)`` all start with it."""
    return sha256[:64]


class ImageStore:
    """A gallery's kept photos (``Gallery.images``): :meth:`keep` at enrolment, :meth:`path` to read one back."""

    def __init__(self, home: Path, store: GalleryStore) -> None:
        self.home, self.store = Path(home), store

    def relative(self, sha: str, suffix: str) -> str:
        return f"{IMAGES_DIR}/{sha[:2]}/{sha}{suffix}"

    def keep(self, photos: Sequence[tuple[str, str | os.PathLike]], mode: str = DEFAULT_STORE_MODE) -> dict[int, str]:
        """Keep ``(file sha256, source path)`` photos (a full copy, or a thumbnail) and list them in one transaction.

        Returns ``{position: reason}`` for the photos that could not be kept (unreadable, or changed since
        they were hashed); they must not be enrolled.
        """
        if mode not in STORE_MODES:
            raise ValueError(f"store_images {mode!r} is not one of {', '.join(STORE_MODES)}")
        rows, failed = [], {}
        for i, (sha, src) in enumerate(photos):
            try:
                rows.append(self._write(sha, Path(src), mode))
            except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
                failed[i] = f"{src}: cannot keep a copy ({getattr(e, 'strerror', None) or e})"
        self.record(rows)
        return failed

    def _write(self, sha: str, src: Path, mode: str) -> tuple:
        data = src.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError("the file changed since it was hashed")
        ext = src.suffix.lower() if _EXT.fullmatch(src.suffix.lower()) else ".img"
        file = thumb = None
        if mode == "full":
            file = self.relative(sha, ext)
            if not (self.home / file).is_file():  # content-addressed: the same bytes are kept once
                write_bytes_atomic(self.home / file, data)
        else:
            thumb = self.relative(sha, ".thumb.jpg")
            if not (self.home / thumb).is_file():
                write_bytes_atomic(self.home / thumb, _thumbnail(data))
        return sha, file, thumb, storable(src.absolute()), len(data), time.time()

    def record(self, rows: Sequence[tuple]) -> None:
        """List ``(sha256, file, thumb, source, bytes, added)`` rows (already written) in this version's database."""
        if not rows:
            return
        with self.store.writer() as conn:
            conn.executescript(IMAGES_SCHEMA)  # galleries from before the image store get the table here
            self.store.transaction(conn, [("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?)", list(rows))], bump=())

    def rows(self) -> list[tuple]:
        """Every listed photo as ``(sha256, file, thumb, source, bytes, added)``."""
        import sqlite3

        with self.store.reading() as conn:
            try:
                return [tuple(r) for r in conn.execute("SELECT sha256, file, thumb, source, bytes, added FROM images")]
            except sqlite3.OperationalError:
                return []

    def path(self, sha256: str) -> Path | None:
        """The kept full copy of the photo of vector hash ``sha256`` (any of its forms), or None."""
        return self._lookup(photo_hash(sha256), "file")

    def thumbnail(self, sha256: str) -> Path | None:
        """The kept thumbnail of that photo, or None (full copies have none: thumbnail the copy)."""
        return self._lookup(photo_hash(sha256), "thumb")

    def _lookup(self, sha: str, col: str) -> Path | None:
        row = next((r for r in self.rows() if r[0] == sha), None)
        rel = None if row is None else row[1 if col == "file" else 2]
        return self.home / rel if rel and (self.home / rel).is_file() else None

    def resolve(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records whose ``path`` is where the photo can be read now (the kept copy when there is one) and
        ``source`` the file it was enrolled from."""
        for r in records:
            r["source"] = r["path"]
            rel = r.pop("image", None)
            if rel:
                r["path"] = str(self.home / rel)
        return records


def _thumbnail(data: bytes) -> bytes:
    """A small JPEG of an image's bytes (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return buf.getvalue()
