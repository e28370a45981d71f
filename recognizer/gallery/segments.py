"""Append-only vector segments: the FAISS files that hold a gallery's vectors, and their merges.

Each commit writes its new vectors as one segment file (a FAISS ``IndexIDMap2(IndexFlatIP)``
whose ids are vids) and lists it in the ``segments`` table in the same transaction as their
metadata; nothing already written is touched, so adding one item costs the same at 10k or
1M vectors. Removal deletes only metadata rows: the vectors stay in their segment as dead
rows (the missing metadata row is their tombstone) until a merge rewrites that segment.

Merges are log-structured: after a commit, when the newest ``MERGE_FACTOR`` segments are of
one size class (``floor(log_8(rows))``) they are rewritten as one, so a gallery holds a few
dozen segments at most and each vector is rewritten about log_8(N / batch) times in its life.
:func:`compact` rewrites every segment as one and drops all dead rows (``tools/enroll.py
--compact``). A merge never changes the live vectors, so readers are not disturbed; the old
files are deleted only after the switch (a reader that loses one mid-read reads again).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from ..fileio import fsync_replace
from .errors import GalleryCorruptError

SEGMENT_PREFIX = "vectors."
MERGE_FACTOR = 8


class _Store(Protocol):
    """What segment operations need of :class:`~.store.GalleryStore`: its folder and its transactions."""

    root: Path

    def transaction(self, conn: sqlite3.Connection, sql: Sequence, *, new_file: Path | None = None,
                    bump: Sequence[str] = ("generation",)) -> dict[str, str]: ...  # fmt: skip


class Segment(NamedTuple):
    seg: int
    file: str
    rows: int  # rows in the file, dead ones included
    min_vid: int
    max_vid: int


def list_segments(conn: sqlite3.Connection) -> list[Segment]:
    """The committed segments, oldest (lowest vids) first."""
    return [
        Segment(*r)
        for r in conn.execute("SELECT seg, file, rows, min_vid, max_vid FROM segments ORDER BY seg")
    ]


def dead_rows(conn: sqlite3.Connection) -> int:
    """Vectors still stored in segments whose metadata row was removed."""
    stored = conn.execute("SELECT COALESCE(SUM(rows), 0) FROM segments").fetchone()[0]
    return int(stored) - int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])


def plan_merge(rows: Sequence[int], factor: int = MERGE_FACTOR) -> int:
    """How many of the newest segments to merge: ``factor`` or more trailing ones of the newest one's
    size class (``floor(log_factor(rows))``), else 0."""
    if len(rows) < factor:
        return 0
    size_class = [int(math.log(max(r, 1), factor)) for r in rows]
    n = 1
    while n < len(rows) and size_class[-1 - n] == size_class[-1]:
        n += 1
    return n if n >= factor else 0


def read_segments(
    root: Path, segments: Sequence[Segment], dim: int, min_vid: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(vids, vectors)`` stored in these segment files with vid >= ``min_vid`` (dead rows included).

    A missing file raises ``FileNotFoundError`` (a writer merged it away: read again).
    """
    ids, vecs, keep_alive = [np.zeros(0, np.int64)], [np.zeros((0, dim), np.float32)], []
    for s in segments:
        index, i, v = _open_segment(root / s.file, dim)
        keep_alive.append(index)  # ``v`` views the index's memory until concatenated below
        keep = i >= min_vid
        ids.append(i[keep])
        vecs.append(v if keep.all() else v[keep])
    return np.concatenate(ids), np.concatenate(vecs)


def commit_segment(
    store: _Store, conn: sqlite3.Connection, vids: np.ndarray, vecs: np.ndarray, sql: list
) -> dict[str, str]:
    """Write ``vecs`` (consecutive ``vids``) as a new segment, then run ``sql`` with the segment's row in
    one transaction; merge if :func:`plan_merge` asks. Returns the new meta."""
    segs = list_segments(conn)
    seg = (segs[-1].seg if segs else 0) + 1
    path = store.root / f"{SEGMENT_PREFIX}{seg}.faiss"
    write_segment(path, vids, vecs)
    lo, hi = int(vids[0]), int(vids[-1])
    sql = [*sql, ("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", (seg, path.name, len(vids), lo, hi)),
           ("UPDATE meta SET value=? WHERE key='next_vid'", (str(hi + 1),))]  # fmt: skip
    meta = store.transaction(conn, sql, new_file=path)
    merge(store, conn, plan_merge([s.rows for s in list_segments(conn)]))
    return meta


def merge(store: _Store, conn: sqlite3.Connection, newest: int) -> int:
    """Rewrite the ``newest`` segments as one while :func:`plan_merge` asks (a merge can complete a larger
    size class); returns the dead rows dropped."""
    dropped = 0
    while newest > 1:
        dropped += _rewrite(store, conn, list_segments(conn)[-newest:])
        newest = plan_merge([s.rows for s in list_segments(conn)])
    return dropped


def compact(store: _Store, conn: sqlite3.Connection) -> int:
    """Rewrite every segment as one, dropping the removed (dead) vectors; returns how many went."""
    segs = list_segments(conn)
    if len(segs) > 1 or (segs and dead_rows(conn)):
        return _rewrite(store, conn, segs)
    return 0


def _rewrite(store: _Store, conn: sqlite3.Connection, segs: Sequence[Segment]) -> int:
    """Replace consecutive segments by one holding their live rows (none if all are dead)."""
    dim = int(conn.execute("SELECT value FROM meta WHERE key='embedding_dim'").fetchone()[0])
    lo, hi = segs[0].min_vid, segs[-1].max_vid
    ids, vecs = read_segments(store.root, segs, dim)
    alive = [r[0] for r in conn.execute("SELECT vid FROM vectors WHERE vid BETWEEN ? AND ?", (lo, hi))]
    keep = np.isin(ids, np.array(alive, np.int64))
    seg = segs[-1].seg + 1
    sql: list = [("DELETE FROM segments WHERE seg BETWEEN ? AND ?", (segs[0].seg, segs[-1].seg))]
    new_file = None
    if keep.any():
        new_file = store.root / f"{SEGMENT_PREFIX}{seg}.faiss"
        write_segment(new_file, ids[keep], vecs[keep])
        sql.append(
            ("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", (seg, new_file.name, int(keep.sum()), lo, hi))
        )
    store.transaction(conn, sql, new_file=new_file, bump=())
    for s in segs:
        with contextlib.suppress(FileNotFoundError):
            (store.root / s.file).unlink()
    return int((~keep).sum())


def write_segment(path: Path, vids: np.ndarray, vecs: np.ndarray) -> None:
    """A segment file, through a temp file, fsync and rename."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
    if len(vids):
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(vids, np.int64))
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    fsync_replace(tmp, path)


def read_segment(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vids, vectors)`` of a segment file; unreadable or wrong-shaped files raise :class:`GalleryCorruptError`."""
    _, ids, vecs = _open_segment(path, dim)
    return ids, vecs.copy()


def _open_segment(path: Path, dim: int):
    """``(index, vids, vectors)``: ``vectors`` views the index's storage and is valid while ``index`` lives."""
    import faiss

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        if not path.exists():  # merged away between the check and the open: read again, it is not corrupt
            raise FileNotFoundError(path) from None
        raise GalleryCorruptError(f"{path}: unreadable FAISS index ({str(e).splitlines()[0]})") from None
    if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
        raise GalleryCorruptError(f"{path}: not an IndexIDMap2 of dimension {dim}")
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    n = index.ntotal
    flat = faiss.downcast_index(index.index)
    vecs = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim) if n else np.zeros((0, dim), np.float32)
    return index, ids, vecs
