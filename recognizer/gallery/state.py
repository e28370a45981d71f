"""One reader's copy of a committed gallery state (meta, items, vectors), kept current incrementally.

A full load reads every live vector from the segment files; a refresh reads only the rows
that other processes committed since (and the segments holding them), so keeping up with a
writer costs O(what changed), not O(gallery). Removals and renames make the next refresh
re-read what they touched (everything, or the item table).
"""

from __future__ import annotations

import time

import numpy as np

from .errors import GalleryCorruptError
from .segments import read_segments
from .store import Cursor, GalleryStore, Snapshot, cursor_of
from .vectors import VectorTable


class GalleryState:
    """What a :class:`~.gallery.Gallery` searches: ``meta``, ``item_info`` (name, attributes) and ``table``."""

    def __init__(self, store: GalleryStore) -> None:
        self.store = store
        self.load()

    def load(self) -> None:
        """Read one committed state in full (retrying when a writer merged a segment away meanwhile)."""
        snap, ids, vecs = _retrying(lambda: self._read(None))
        items = [r[1] for r in snap.items]
        self.item_info = {r[1]: (r[2], r[3]) for r in snap.items}
        vids, cols, vecs = self._rows(snap, ids, vecs, {it: j for j, it in enumerate(items)})
        self.table = VectorTable(
            str(self.store.root), int(snap.meta["embedding_dim"]), items, vids, cols, vecs
        )
        if (self.table.counts == 0).any():
            empty = [items[j] for j in np.nonzero(self.table.counts == 0)[0][:5]]
            raise GalleryCorruptError(f"{self.store.root}: item(s) without vectors: {empty}")
        self.installed(snap.meta)

    def _read(self, since: Cursor | None) -> tuple[Snapshot, np.ndarray, np.ndarray]:
        """One snapshot and the segment rows it needs (for an incremental one, only those added since)."""
        snap = self.store.read(since)
        if since is not None and snap.full:
            return snap, np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)  # the caller loads in full
        min_vid = 0 if since is None else since.next_vid
        return snap, *read_segments(self.store.root, snap.segments, int(snap.meta["embedding_dim"]), min_vid)

    def _rows(self, snap: Snapshot, ids: np.ndarray, vecs: np.ndarray, col: dict[str, int]):
        """The snapshot's live rows among the segment rows ``ids``: ``(vids, item columns, vectors)``."""
        vid_db = np.array([r[0] for r in snap.rows], np.int64)
        order = np.argsort(vid_db)
        vid_db = vid_db[order]
        pos = np.minimum(np.searchsorted(vid_db, ids), max(len(vid_db) - 1, 0))
        alive = vid_db[pos] == ids if len(vid_db) else np.zeros(len(ids), bool)
        if not alive.all():  # dead rows (removed items) still stored in their segment
            ids, vecs, pos = ids[alive], vecs[alive], pos[alive]
        if len(ids) != len(vid_db) or len(np.unique(ids)) != len(ids):
            raise GalleryCorruptError(
                f"{self.store.root}: the segment files hold {len(ids)} of the {len(vid_db)} vectors the metadata lists"
            )
        try:
            codes = np.array([col[it] for _, it in snap.rows], np.int64)
        except KeyError as e:
            raise GalleryCorruptError(
                f"{self.store.root}: a vector belongs to item {e}, which the item table lacks"
            ) from None
        return ids, codes[order][pos] if len(pos) else np.zeros(0, np.int64), vecs

    def installed(self, meta: dict[str, str]) -> None:
        """Now holding everything up to ``meta``'s commit."""
        self.meta, self.cursor = meta, cursor_of(meta)
        self.generation, self.dim = self.cursor.generation, int(meta["embedding_dim"])
        self.sorted_ids: list[str] | None = None

    def refresh(self) -> bool:
        """Catch up with other processes' commits (reading only what they added); True when vectors changed."""
        snap, ids, vecs = _retrying(lambda: self._read(self.cursor))
        if snap.full:
            self.load()
            return True
        if snap.items_full:
            self.item_info = {}
        self.item_info.update({r[1]: (r[2], r[3]) for r in snap.items})
        if snap.rows:
            self.table.add_items([r[1] for r in snap.items if r[1] not in self.table.col])
            self.table.append(*self._rows(snap, ids, vecs, self.table.col))
        self.installed(snap.meta)
        return bool(snap.rows)

    def added(
        self, meta: dict[str, str], new_items: dict[str, str], vids: np.ndarray, item_ids, vecs: np.ndarray
    ) -> None:
        """Install this process's own commit of ``vecs`` (new items with their names) without re-reading it."""
        self.item_info.update({it: (name, {}) for it, name in new_items.items()})
        self.table.add_items(list(new_items))
        self.table.append(vids, np.array([self.table.col[it] for it in item_ids], np.int64), vecs)
        self.installed(meta)

    def removed(self, meta: dict[str, str], item_id: str) -> None:
        """Install this process's own removal: in memory only, O(N); no file is rewritten."""
        self.table = self.table.without_items([self.table.col[item_id]])
        del self.item_info[item_id]
        self.installed(meta)


def _retrying(read):
    """``read()``, again after a short wait when a writer merged a segment away between its two reads."""
    for attempt in range(5):
        try:
            return read()
        except FileNotFoundError:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
