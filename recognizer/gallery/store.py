"""The gallery folder on disk: SQLite metadata, append-only vector segments, the writer lock.

A gallery is a folder:

* ``gallery.sqlite``: ``meta`` (the embedding model's description and fingerprint, the
  open-set settings, counters), ``items`` (id, display name, attributes; rowid order is the
  order items were first enrolled), ``vectors`` (per-vector metadata: item, source path,
  content hash, time added), ``segments`` (which files hold the vectors) and
  ``local_features``. Every change is one SQLite transaction.
* ``vectors.<seg>.faiss``: segment files, each a FAISS ``IndexIDMap2(IndexFlatIP)`` whose
  ids are ``vectors.vid``. Written once and never modified; each covers a vid range.
* ``gallery.lock``: taken by writers (``fcntl.flock``), so two enrollers never interleave.

Commit protocol, O(batch) and crash-safe at every instant: a commit's new vectors go to one
new segment file (:mod:`.segments`); then one SQLite transaction inserts their metadata and
the segment's row and moves the generation on. A crash before the switch leaves an orphan
file, which the next writer removes; a crash after it leaves the new state. Readers see one
committed state or the next, never a mix.

Galleries of format 1 (one index file rewritten at every commit) are read as one segment and
upgraded by their first writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import fsync_replace
from .errors import GalleryCorruptError, GalleryError, GalleryLockedError, GallerySupersededError
from .segments import (
    SEGMENT_PREFIX,
    Segment,
    commit_segment,
    compact,
    dead_rows,
    list_segments,
    read_segment,
)
from .versions import is_superseded

FORMAT_VERSION = 2
DB_FILE = "gallery.sqlite"
LOCK_FILE = "gallery.lock"
ANN_PREFIX = "ann."

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    vid INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL REFERENCES items(item_id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_item ON vectors(item_id);
"""
IMAGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    file TEXT,
    thumb TEXT,
    source TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    added REAL NOT NULL
);
"""
_SEGMENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    seg INTEGER PRIMARY KEY,
    file TEXT NOT NULL UNIQUE,
    rows INTEGER NOT NULL,
    min_vid INTEGER NOT NULL,
    max_vid INTEGER NOT NULL
);
"""
FEATURES_SCHEMA = """
CREATE TABLE IF NOT EXISTS local_features (
    vid INTEGER NOT NULL REFERENCES vectors(vid) ON DELETE CASCADE,
    method TEXT NOT NULL,
    kp BLOB NOT NULL,
    descriptors BLOB NOT NULL,
    dtype TEXT NOT NULL,
    dim INTEGER NOT NULL,
    PRIMARY KEY (vid, method)
);
"""


@dataclass(frozen=True)
class Cursor:
    """How far a reader has read: what an incremental :meth:`GalleryStore.read` starts from."""

    generation: int
    epoch: int  # moves on when vectors or items go (removal): readers then read everything again
    items_epoch: int  # moves on when an item's name or attributes change
    next_vid: int


@dataclass
class Snapshot:
    """One read transaction's view: everything (``full``) or what is new since a cursor."""

    meta: dict[str, str]
    items: list[tuple[int, str, str, dict]]  # (rowid, id, name, attributes): all, or those of the new rows
    items_full: bool
    rows: list[tuple[int, str]]  # (vid, item_id)
    segments: list[Segment]
    full: bool

    def cursor(self) -> Cursor:
        return cursor_of(self.meta)


def cursor_of(meta: dict[str, str]) -> Cursor:
    """The cursor of a reader that holds everything up to ``meta``'s commit (a format-1 state: none that a
    later, upgraded state could be read incrementally from)."""
    epoch = int(meta.get("epoch", 0)) if meta.get("format_version") != "1" else -1
    return Cursor(int(meta["generation"]), epoch, int(meta.get("items_epoch", 0)), int(meta.get("next_vid", 0)))


class GalleryStore:
    """Reads and writes one gallery folder; see the module docstring for the layout and guarantees."""

    def __init__(self, root: Path, lock_timeout: float = 10.0, home: Path | None = None) -> None:
        self.root = Path(root)
        self.home = Path(home) if home is not None else self.root  # the gallery folder (see :mod:`.versions`)
        self.lock_timeout = lock_timeout

    @classmethod
    def create(cls, root: Path, meta: dict[str, Any]) -> None:
        """Write a new, empty gallery database; it appears (atomically) only once complete."""
        root.mkdir(parents=True, exist_ok=True)
        with _flock(root / LOCK_FILE, 0.0):
            tmp_db = root / (DB_FILE + ".tmp")
            tmp_db.unlink(missing_ok=True)
            conn = sqlite3.connect(tmp_db)
            try:
                conn.executescript(_SCHEMA + _SEGMENTS_SCHEMA + FEATURES_SCHEMA + IMAGES_SCHEMA)
                meta = dict(
                    meta, format_version=FORMAT_VERSION, generation=1, epoch=0, items_epoch=0, next_vid=1
                )
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                conn.commit()
            finally:
                conn.close()
            fsync_replace(tmp_db, root / DB_FILE)

    def connect(self) -> sqlite3.Connection:
        # mode=rw: a reader of a version deleted since never creates an empty database in its place
        uri = (self.root / DB_FILE).absolute().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, timeout=30.0, isolation_level=None, uri=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for one read; unreadable databases raise :class:`GalleryCorruptError`."""
        try:
            conn = self.connect()
        except sqlite3.Error as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: cannot open ({e})") from None
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: unreadable ({e})") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------ reading

    def read(self, since: Cursor | None = None) -> Snapshot:
        """One read transaction: everything, or (``since``) only what was added after that cursor."""
        with self.reading() as conn:
            conn.execute("BEGIN")
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                self._check_meta(meta)
                v1 = meta["format_version"] == "1"
                full = since is None or v1 or int(meta.get("epoch", 0)) != since.epoch
                items_full = full or int(meta.get("items_epoch", 0)) != since.items_epoch
                q_items = "SELECT rowid, item_id, name, attributes FROM items"
                if items_full:
                    items = conn.execute(q_items + " ORDER BY rowid").fetchall()
                elif int(meta["generation"]) != since.generation:
                    items = conn.execute(q_items + " WHERE item_id IN (SELECT DISTINCT item_id FROM vectors WHERE vid >= ?)"
                                         " ORDER BY rowid", (since.next_vid,)).fetchall()  # fmt: skip
                else:
                    items = []
                items = [(r[0], r[1], r[2], json.loads(r[3])) for r in items]
                if full:
                    rows = conn.execute("SELECT vid, item_id FROM vectors").fetchall()
                elif int(meta["generation"]) != since.generation:
                    rows = conn.execute(
                        "SELECT vid, item_id FROM vectors WHERE vid >= ?", (since.next_vid,)
                    ).fetchall()
                else:
                    rows = []
                if v1:
                    segments = [Segment(0, meta["index_file"], -1, 0, 2**62)]
                elif full or rows:
                    lo = 0 if full else since.next_vid
                    segments = [Segment(*r) for r in conn.execute(
                        "SELECT seg, file, rows, min_vid, max_vid FROM segments WHERE max_vid >= ? ORDER BY seg", (lo,)
                    )]  # fmt: skip
                else:
                    segments = []
                conn.execute("COMMIT")
            except json.JSONDecodeError as e:
                raise GalleryCorruptError(f"{self.root / DB_FILE}: unreadable ({e})") from None
        return Snapshot(meta, items, items_full, rows, segments, full)

    def _check_meta(self, meta: dict[str, str]) -> None:
        try:
            if int(meta["format_version"]) not in (1, FORMAT_VERSION):
                raise GalleryError(
                    f"{self.root}: gallery format {meta['format_version']}, this code reads up to {FORMAT_VERSION}"
                )
            int(meta["generation"]), int(meta["embedding_dim"])
        except KeyError as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: meta lacks {e}") from None

    def known_hashes(self, hashes: Sequence[str], conn: sqlite3.Connection | None = None) -> dict[str, str]:
        """Which of ``hashes`` are already enrolled, mapped to the item holding them."""
        with contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.reading())
            out = {}
            for i in range(0, len(hashes), 500):
                chunk = list(hashes[i : i + 500])
                q = f"SELECT sha256, item_id FROM vectors WHERE sha256 IN ({','.join('?' * len(chunk))})"
                out.update(dict(conn.execute(q, chunk).fetchall()))
            return out

    def records(self, item_id: str | None = None) -> list[dict[str, Any]]:
        """Per-vector metadata rows (vid, item_id, path, sha256, added, image: the kept copy of its photo,
        relative to the gallery folder, or None)."""
        where, args = (" WHERE v.item_id=?", (item_id,)) if item_id else ("", ())
        with self.reading() as conn:
            try:  # a photo's vectors share its file hash: the first 64 characters of theirs
                cur = conn.execute("SELECT v.vid, v.item_id, v.path, v.sha256, v.added, i.file FROM vectors v "
                                   "LEFT JOIN images i ON i.sha256 = substr(v.sha256, 1, 64)" + where + " ORDER BY v.vid", args)  # fmt: skip
            except sqlite3.OperationalError:  # a gallery from before the image store
                cur = conn.execute("SELECT vid, item_id, path, sha256, added, NULL FROM vectors v" + where + " ORDER BY vid", args)
            keys = ("vid", "item_id", "path", "sha256", "added", "image")
            return [dict(zip(keys, r, strict=True)) for r in cur]

    def integrity(self) -> tuple[str, int]:
        """SQLite's integrity check and the number of vectors whose item is missing."""
        with self.reading() as conn:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            orphans = conn.execute(
                "SELECT COUNT(*) FROM vectors v LEFT JOIN items i ON v.item_id=i.item_id WHERE i.item_id IS NULL"
            ).fetchone()[0]
        return check, orphans

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writer(self) -> Iterator[sqlite3.Connection]:
        """The writer lock and a connection; upgrades a format-1 gallery and removes orphan files first."""
        with _flock(self.root / LOCK_FILE, self.lock_timeout):
            if active := is_superseded(self.home, self.root):
                raise GallerySupersededError(
                    f"{self.home}: re-embedded since this process opened it (version {active} is active now, with "
                    "another model); reopen the gallery with its model to change it"
                )
            conn = self.connect()
            try:
                self._upgrade(conn)
                self._remove_orphans(conn)
                yield conn
            finally:
                conn.close()

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format_version") != "1":
            return
        vids, _ = read_segment(self.root / meta["index_file"], int(meta["embedding_dim"]))
        conn.executescript(_SEGMENTS_SCHEMA + FEATURES_SCHEMA)  # idempotent; executescript commits by itself
        conn.execute("BEGIN IMMEDIATE")
        if len(
            vids
        ):  # the legacy file keeps its name: its number becomes the segment's id, so new ones follow it
            m = re.fullmatch(rf"{re.escape(SEGMENT_PREFIX)}(\d+)\.faiss", meta["index_file"])
            seg = int(m.group(1)) if m else 1
            conn.execute("INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                         (seg, meta["index_file"], len(vids), int(vids.min()), int(vids.max())))  # fmt: skip
        upd = {"format_version": FORMAT_VERSION, "epoch": 0, "items_epoch": 0,
               "next_vid": int(vids.max()) + 1 if len(vids) else 1}  # fmt: skip
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in upd.items()])
        conn.execute("COMMIT")

    def compact(self) -> dict[str, int]:
        """Rewrite every segment as one without dead rows; what it found and did."""
        with self.writer() as conn:
            before = len(list_segments(conn))
            dropped = compact(self, conn)
            return {
                "segments_before": before,
                "segments": len(list_segments(conn)),
                "dead_rows_dropped": dropped,
            }

    def storage(self) -> dict[str, int]:
        """Segment count, stored rows and dead rows (removed vectors not yet compacted away)."""
        with self.reading() as conn:
            segs = list_segments(conn)
            return {
                "segments": len(segs),
                "stored_rows": sum(s.rows for s in segs),
                "dead_rows": dead_rows(conn),
            }

    def segment_files(self) -> list[Path]:
        """The committed segment files, oldest first."""
        with self.reading() as conn:
            return [self.root / s.file for s in list_segments(conn)]

    def _remove_orphans(self, conn: sqlite3.Connection) -> None:
        keep = {s.file for s in list_segments(conn)}
        gen = conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0]
        for p in self.root.iterdir():
            n = p.name
            if (n.startswith(SEGMENT_PREFIX) and n not in keep) or (
                n.startswith(ANN_PREFIX) and not n.startswith(f"{ANN_PREFIX}{gen}.")
            ):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def transaction(self, conn: sqlite3.Connection, sql: Sequence[tuple[str, Sequence]], *, new_file: Path | None = None,
                    bump: Sequence[str] = ("generation",)) -> dict[str, str]:  # fmt: skip
        """Run ``sql`` and move the ``bump`` counters on, in one transaction; returns the new meta.

        On failure the transaction rolls back and ``new_file`` (written before it) is removed.
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt, args in sql:
                if args and isinstance(args[0], (list, tuple)):
                    conn.executemany(stmt, args)
                else:
                    conn.execute(stmt, args)
            for key in bump:
                conn.execute(
                    "UPDATE meta SET value=CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key=?", (key,)
                )
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if new_file is not None:
                new_file.unlink(missing_ok=True)
            raise
        return meta

    def insert_vectors(self, conn: sqlite3.Connection, item_ids: Sequence[str], paths: Sequence[str],
                       hashes: Sequence[str], vecs: np.ndarray, new_items: dict[str, str]) -> tuple[np.ndarray, dict[str, str]]:  # fmt: skip
        """Commit new vectors (and the new items, id -> display name): ``(their vids, the new meta)``."""
        start, now = self.next_vid(conn), time.time()
        vids = np.arange(start, start + len(item_ids), dtype=np.int64)
        sql = (
            [("INSERT INTO items VALUES (?, ?, '{}', ?)", [(it, nm, now) for it, nm in new_items.items()])]
            if new_items
            else []
        )
        sql.append(("INSERT INTO vectors VALUES (?, ?, ?, ?, ?)",
                    [(int(v), it, p, h, now) for v, it, p, h in zip(vids, item_ids, paths, hashes, strict=True)]))  # fmt: skip
        return vids, commit_segment(self, conn, vids, vecs, sql)

    def update_json(self, key: str, empty: Any, update: Callable[[Any], Any]) -> bool:
        """Read-modify-write the JSON meta value ``key`` under the writer lock (``update`` returns the new
        value, or None to leave it); True when written."""
        with self.writer() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            new = update(json.loads(row[0]) if row else empty)
            if new is None:
                return False
            self.transaction(
                conn,
                [("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(new, sort_keys=True)))],
                bump=(),
            )
            return True

    def next_vid(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE key='next_vid'").fetchone()[0])


# ------------------------------------------------------------------------------ file helpers


@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[None]:
    """Exclusive advisory lock on ``path``, waiting up to ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise GalleryLockedError(
                        f"{path.parent}: another process (pid {holder}) is writing this gallery; "
                        f"waited {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def storable(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text: non-UTF-8 bytes of a file name become ``\\xNN``."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
