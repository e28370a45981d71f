"""The gallery's vectors in memory, laid out in item blocks for scoring.

Search wants each item's vectors contiguous (one ``reduceat`` scores every item), but an
enrolment appends a few vectors to a table of maybe a million: re-sorting it on every commit
would make adding one item cost as much as the whole gallery. So the table is a sorted
*base* plus an unsorted *tail* of recent additions. Appending touches only the tail;
candidate sets and single items read base and tail directly; only whole-gallery operations
(a full scan, the IVF index, prototypes of every item) fold the tail into the base, once per
change, the way an LSM tree merges its memtable.

Items are columns in the order they were first enrolled, so a new item never renumbers the
others.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .scoring import block_starts, normalize_rows


class VectorTable:
    """Vectors with their ids (``vids``) and item columns; see the module docstring."""

    def __init__(self, name: str, dim: int, items: Sequence[str], vids, cols, vecs) -> None:
        self.name = name  # the gallery folder, for messages
        self.dim = dim
        self.items: list[str] = list(items)
        self.col = {it: j for j, it in enumerate(self.items)}
        self._tail: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._tail_rows: dict[int, list[tuple[int, np.ndarray]]] = {}  # col -> (tail chunk, row indices)
        self._tail_count = np.zeros(len(self.items), np.int64)
        self._lock = threading.Lock()  # folding and appending from several scoring threads (the service)
        self._set_base(np.asarray(vids, np.int64), np.asarray(cols, np.int64), vecs)

    # ------------------------------------------------------------------ layout

    def _set_base(self, vids: np.ndarray, cols: np.ndarray, vecs: np.ndarray) -> None:
        order = np.lexsort((vids, cols))
        self._vids = vids[order]
        self._cols = cols[order]
        self._vecs = np.ascontiguousarray(np.asarray(vecs, np.float32)[order])
        self._base_count = np.bincount(self._cols, minlength=len(self.items)).astype(np.int64)
        self._base_start = block_starts(self._base_count)
        self._protos: np.ndarray | None = None

    def _fold(self) -> None:
        """Merge the tail into the sorted base (O(N), once per change; see the module docstring)."""
        if not self._tail:
            return
        with self._lock:  # two threads must not fold the same tail twice
            if self._tail:
                self._fold_locked()

    def _fold_locked(self) -> None:
        vids = np.concatenate([self._vids, *(t[0] for t in self._tail)])
        cols = np.concatenate([self._cols, *(t[1] for t in self._tail)])
        vecs = np.concatenate([self._vecs, *(t[2] for t in self._tail)])
        self._set_base(vids, cols, vecs)
        # the tail goes last: a reader that finds it empty (without the lock) finds the base complete
        self._tail_rows, self._tail_count = {}, np.zeros(len(self.items), np.int64)
        self._tail = []

    def add_items(self, items: Sequence[str]) -> None:
        """New item columns (at the end)."""
        for it in items:
            self.col[it] = len(self.items)
            self.items.append(it)
        grow = len(self.items) - len(self._base_count)
        self._base_count = np.concatenate([self._base_count, np.zeros(grow, np.int64)])
        self._base_start = np.concatenate([self._base_start, np.full(grow, len(self._vecs), np.int64)])
        self._tail_count = np.concatenate([self._tail_count, np.zeros(grow, np.int64)])
        self._protos = None

    def append(self, vids: np.ndarray, cols: np.ndarray, vecs: np.ndarray) -> None:
        """Add rows to the tail: O(rows), whatever the table's size."""
        with self._lock:
            self._append_locked(vids, cols, vecs)

    def _append_locked(self, vids: np.ndarray, cols: np.ndarray, vecs: np.ndarray) -> None:
        chunk = len(self._tail)
        cols = np.asarray(cols, np.int64)
        self._tail.append((np.asarray(vids, np.int64), cols, np.ascontiguousarray(vecs, np.float32)))
        order = np.argsort(cols, kind="stable")
        uniq, first = np.unique(cols[order], return_index=True)
        for c, rows in zip(uniq.tolist(), np.split(order, first[1:]), strict=True):
            self._tail_rows.setdefault(c, []).append((chunk, rows))
        np.add.at(self._tail_count, cols, 1)
        self._protos = None

    def without_items(self, cols: Sequence[int]) -> VectorTable:
        """A new table without these item columns (the others renumbered in order)."""
        self._fold()
        drop = np.zeros(len(self.items), bool)
        drop[list(cols)] = True
        remap = np.cumsum(~drop) - 1
        keep = ~drop[self._cols]
        items = [it for j, it in enumerate(self.items) if not drop[j]]
        return VectorTable(
            self.name, self.dim, items, self._vids[keep], remap[self._cols[keep]], self._vecs[keep]
        )

    def without_vids(self, vids: Sequence[int]) -> VectorTable:
        """A new table without these vectors (same item columns; an item may be left with none)."""
        self._fold()
        keep = ~np.isin(self._vids, np.asarray(list(vids), np.int64))
        return VectorTable(self.name, self.dim, self.items, self._vids[keep], self._cols[keep], self._vecs[keep])

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._vecs) + int(self._tail_count.sum())

    @property
    def counts(self) -> np.ndarray:
        """Vectors per item column."""
        return self._base_count + self._tail_count

    def item_rows(self, col: int) -> np.ndarray:
        """One item's vectors (base block then tail rows, i.e. in vid order)."""
        s, c = self._base_start[col], self._base_count[col]
        parts = [self._vecs[s : s + c]] + [self._tail[k][2][r] for k, r in self._tail_rows.get(col, ())]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def gather(self, cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, counts)``: these items' vectors as contiguous blocks, in the order of ``cols``.

        ``None`` means every item, as a read-only view of the (folded) base, no copy.
        """
        if cols is None:
            self._fold()
            v = self._vecs.view()
            v.flags.writeable = False
            return v, self._base_count.copy()
        if not self._tail:
            rows = [np.arange(self._base_start[c], self._base_start[c] + self._base_count[c]) for c in cols]
            return self._vecs[np.concatenate(rows)] if rows else np.zeros(
                (0, self.dim), np.float32
            ), self.counts[cols]
        return np.concatenate([self.item_rows(int(c)) for c in cols]), self.counts[cols]

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(vids, item cols, vectors)`` of every row, item-sorted (folds the tail)."""
        self._fold()
        return self._vids, self._cols, self.gather(None)[0]

    def prototypes(self, cols: np.ndarray | None = None) -> np.ndarray:
        """Normalised mean vector of each item (all items when ``cols`` is None; cached for all)."""
        if cols is None and self._protos is not None:
            return self._protos
        mat, counts = self.gather(cols)
        protos = normalize_rows(np.add.reduceat(mat, block_starts(counts), axis=0)) if len(mat) else mat
        if cols is None:
            self._protos = protos
        return protos
