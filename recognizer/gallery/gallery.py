"""The item gallery: what the recognizer knows, enrolled without retraining.

:class:`Gallery` is a facade over its parts: the folder on disk (:mod:`.store`: SQLite
metadata, append-only FAISS segments, O(batch) crash-safe commits), the vectors in memory
(:mod:`.vectors`), scoring and the open-set decision (:mod:`.scoring`), search (:mod:`.search`)
and local features for re-ranking (:mod:`.features`). It holds no model: embedding images is
the caller's job (``recognizer.matching``), so a gallery is numpy in, numpy out.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    EmptyGalleryError,
    GalleryCorruptError,
    GalleryError,
    GalleryModelMismatchError,
    GalleryNotFoundError,
    UnknownItemError,
)
from .features import Features, feature_methods, read_features, store_features, vectors_without
from .scoring import SCORE_MODES, Match, get_score_mode, normalize_rows
from .search import Candidates, Searcher, State
from .store import DB_FILE, GalleryStore, Snapshot, cursor_of, storable
from .vectors import VectorTable


@dataclass
class AddResult:
    """What one :meth:`Gallery.add` committed and what it skipped."""

    added: int = 0
    new_items: list[str] = field(default_factory=list)
    vids: list[int] = field(default_factory=list)  # ids given to the added vectors, in input order
    positions: list[int] = field(default_factory=list)  # their positions in the input
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, item already holding it)


@dataclass(frozen=True)
class ItemInfo:
    item_id: str
    name: str
    attributes: dict[str, Any]
    vectors: int


class Gallery:
    """A folder of enrolled items. Create with :meth:`create`, open with :meth:`open`.

    Mutations (:meth:`add`, :meth:`remove_item`, :meth:`set_item`, the ``set_*`` settings) take
    the writer lock and commit atomically; searches read the in-memory copy, which
    :meth:`refresh` brings up to date, reading only what other processes added since.
    """

    def __init__(
        self,
        root: Path,
        *,
        ann_threshold: int = 50_000,
        use_gpu: bool | None = None,
        lock_timeout: float = 10.0,
    ):
        self.root = Path(root)
        self.store = GalleryStore(self.root, lock_timeout)
        self.searcher = Searcher(self.root, ann_threshold=ann_threshold, use_gpu=use_gpu)
        self._feat_cache: dict[tuple, list] = {}
        self._load()

    @classmethod
    def create(cls, root: str | os.PathLike, model_description: dict[str, Any], *, model_spec: str = "",
               threshold: float = 0.0, margin: float = 0.0, score_mode: str = "max", top_n: int = 3,
               **kwargs: Any) -> Gallery:  # fmt: skip
        """Create an empty gallery for embeddings of the model described by ``model_description``.

        ``model_description`` is :meth:`EmbeddingModel.describe` (it holds the fingerprint and
        preprocessing); ``model_spec`` is how to load that model again (``lite0`` or a folder).
        """
        root = Path(root)
        if (root / DB_FILE).exists():
            raise GalleryError(f"{root}: a gallery already exists here")
        get_score_mode(score_mode)  # unknown modes raise with the valid choices
        for key in ("fingerprint", "embedding_dim", "preprocess"):
            if key not in model_description:
                raise ValueError(f"model_description lacks {key!r} (pass EmbeddingModel.describe())")
        GalleryStore.create(root, {
            "model_fingerprint": model_description["fingerprint"],
            "model_description": json.dumps(model_description, sort_keys=True), "model_spec": model_spec,
            "embedding_dim": int(model_description["embedding_dim"]), "threshold": float(threshold),
            "margin": float(margin), "score_mode": score_mode, "top_n": int(top_n), "created": time.time(),
        })  # fmt: skip
        return cls(root, **kwargs)

    @classmethod
    def open(
        cls, root: str | os.PathLike, *, expected_fingerprint: str | None = None, **kwargs: Any
    ) -> Gallery:
        """Open a gallery; with ``expected_fingerprint``, refuse one built with another model."""
        root = Path(root)
        if not (root / DB_FILE).is_file():
            raise GalleryNotFoundError(
                f"{root}: no gallery here (expected {DB_FILE}); create one with tools/enroll.py"
            )
        g = cls(root, **kwargs)
        if expected_fingerprint is not None:
            g.check_model(expected_fingerprint)
        return g

    def check_model(self, fingerprint: str, what: str = "this model") -> None:
        """Raise :class:`GalleryModelMismatchError` unless ``fingerprint`` is the gallery's model."""
        if fingerprint != self.fingerprint:
            d = self.model_description
            raise GalleryModelMismatchError(
                f"{self.root}: gallery was built with model {self.fingerprint} "
                f"({d['config']['backbone']}, {d['preprocess']['input_size']} px, dim {d['embedding_dim']}), "
                f"but {what} has fingerprint {fingerprint}; use the gallery's model "
                f"({self.model_spec or 'see model_description'}) or enroll into a new gallery"
            )

    # ------------------------------------------------------------------ reading state

    def _load(self) -> None:
        """Read one committed state in full (retrying when a writer merged a segment away meanwhile)."""
        for attempt in range(5):
            try:
                snap = self.store.read()
                ids, vecs = self.store.read_segments(snap.segments, int(snap.meta["embedding_dim"]))
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        items = [r[1] for r in snap.items]
        self._item_info = {r[1]: (r[2], r[3]) for r in snap.items}
        vids, cols, vecs = self._rows(snap, ids, vecs, {it: j for j, it in enumerate(items)})
        self._table = VectorTable(str(self.root), int(snap.meta["embedding_dim"]), items, vids, cols, vecs)
        if (self._table.counts == 0).any():
            empty = [items[j] for j in np.nonzero(self._table.counts == 0)[0][:5]]
            raise GalleryCorruptError(f"{self.root}: item(s) without vectors: {empty}")
        self._installed(snap.meta)

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
                f"{self.root}: the segment files hold {len(ids)} of the {len(vid_db)} vectors the metadata lists"
            )
        try:
            codes = np.array([col[it] for _, it in snap.rows], np.int64)
        except KeyError as e:
            raise GalleryCorruptError(
                f"{self.root}: a vector belongs to item {e}, which the item table lacks"
            ) from None
        return ids, codes[order][pos] if len(pos) else np.zeros(0, np.int64), vecs

    def _installed(self, meta: dict[str, str]) -> None:
        """Now holding everything up to ``meta``'s commit."""
        self.meta, self._cursor = meta, cursor_of(meta)
        self.generation, self.embedding_dim = self._cursor.generation, int(meta["embedding_dim"])
        self._sorted_ids: list[str] | None = None

    def refresh(self) -> bool:
        """Catch up with other processes' commits (reading only what they added); True when vectors changed."""
        for attempt in range(5):
            try:
                snap = self.store.read(self._cursor)
                if snap.full:
                    self._load()
                    return True
                ids, vecs = self.store.read_segments(snap.segments, self.embedding_dim, self._cursor.next_vid)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        if snap.items_full:
            self._item_info = {}
        self._item_info.update({r[1]: (r[2], r[3]) for r in snap.items})
        if snap.rows:
            self._table.add_items([r[1] for r in snap.items if r[1] not in self._table.col])
            self._table.append(*self._rows(snap, ids, vecs, self._table.col))
        self._installed(snap.meta)
        return bool(snap.rows)

    @property
    def fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    @property
    def model_description(self) -> dict[str, Any]:
        return json.loads(self.meta["model_description"])

    @property
    def model_spec(self) -> str:
        return self.meta.get("model_spec", "")

    @property
    def accepted_exports(self) -> list[dict[str, Any]]:
        """Exported models (ONNX) whose embeddings this gallery accepted, one entry per file SHA-256."""
        return json.loads(self.meta.get("accepted_exports", "[]"))

    threshold = property(lambda self: float(self.meta["threshold"]), doc="Open-set cosine threshold.")
    margin = property(lambda self: float(self.meta["margin"]), doc="Required gap to the second item.")
    score_mode = property(lambda self: self.meta["score_mode"], doc="How vector scores become item scores.")
    top_n = property(lambda self: int(self.meta["top_n"]), doc="n of the mean_topn score mode.")

    @property
    def item_ids(self) -> list[str]:
        """Enrolled item ids, sorted."""
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self._table.items)
        return list(self._sorted_ids)

    def __len__(self) -> int:
        """Number of vectors."""
        return len(self._table)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._table.col

    def require_items(self) -> None:
        """Raise :class:`EmptyGalleryError` when there is nothing to match against (batch tools)."""
        if not self._table.items:
            raise EmptyGalleryError(
                f"{self.root}: the gallery is empty; enroll items first (tools/enroll.py)"
            )

    def unknown_message(self, ids: Sequence[str]) -> str:
        """``item id(s) ... not in gallery ...``, listing some of the ids it does hold."""
        return self.searcher.unknown_message(self._state(), ids)

    def items(self) -> list[ItemInfo]:
        counts = self._table.counts
        return [ItemInfo(it, *self._item_info[it], int(counts[self._table.col[it]])) for it in self.item_ids]

    def vectors_of(self, item_id: str) -> np.ndarray:
        return self._table.item_rows(self._item_col(item_id))

    def vector_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All vectors (read-only, item-sorted) and the item column of each, columns in :meth:`exact_item_scores` order."""
        _, cols, vecs = self._table.table()
        return vecs, cols.copy()

    def records(self, item_id: str | None = None) -> list[dict[str, Any]]:
        """Per-vector metadata rows (vid, item_id, path, sha256, added)."""
        return self.store.records(item_id)

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of ``hashes`` are already enrolled, mapped to the item holding them."""
        return self.store.known_hashes(hashes)

    def _item_col(self, item_id: str) -> int:
        try:
            return self._table.col[item_id]
        except KeyError:
            raise UnknownItemError(self.unknown_message([item_id])) from None

    def verify(self) -> dict[str, int]:
        """Re-read everything from disk and check segments and metadata agree; returns counts."""
        self._load()
        check, orphans = self.store.integrity()
        if check != "ok" or orphans:
            raise GalleryCorruptError(
                f"{self.root}: integrity check {check!r}, {orphans} vectors without an item"
            )
        return {"items": len(self._table.items), "vectors": len(self), "generation": self.generation}

    # ------------------------------------------------------------------ writing

    def add(self, item_ids: Sequence[str], embeddings: np.ndarray, *, paths: Sequence[str] | None = None,
            hashes: Sequence[str] | None = None, names: dict[str, str] | None = None,
            fingerprint: str | None = None) -> AddResult:  # fmt: skip
        """Enroll vectors for items (new items are created): one atomic commit that writes only the new vectors.

        ``hashes`` identify the source images; a hash already in the gallery, or repeated in
        this call, is skipped and reported in ``duplicates``. Without ``hashes`` the vector's
        own bytes are hashed. ``fingerprint`` (the embedding model's) must match the gallery's.
        """
        if fingerprint is not None:
            self.check_model(fingerprint, "the embeddings' model")
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.embedding_dim:
            raise GalleryModelMismatchError(
                f"{self.root}: embeddings of shape {emb.shape}, the gallery holds dimension {self.embedding_dim}"
            )
        n = len(item_ids)
        if emb.shape[0] != n:
            raise ValueError(f"{n} item ids for {emb.shape[0]} embeddings")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or inf")
        bad_ids = [i for i in item_ids if not isinstance(i, str) or not i.strip() or ";" in i]
        if bad_ids:
            raise ValueError(f"invalid item id(s) {bad_ids[:5]} (non-empty, no ';')")
        # non-UTF-8 file names arrive with surrogate escapes; SQLite stores UTF-8, so keep them as \xNN
        paths = [storable(p) for p in paths] if paths is not None else [""] * n
        emb = normalize_rows(emb)
        hashes = (
            list(hashes) if hashes is not None else [hashlib.sha256(v.tobytes()).hexdigest() for v in emb]
        )
        if len(paths) != n or len(hashes) != n:
            raise ValueError("paths and hashes must have one entry per embedding")
        result = AddResult()
        with self.store.writer() as conn:
            self.refresh()  # start from the latest committed state
            known = self.store.known_hashes(hashes, conn)
            keep = []
            for i, h in enumerate(hashes):
                if h in known:
                    result.duplicates.append((paths[i], known[h]))
                else:
                    known[h] = item_ids[i]
                    keep.append(i)
            if not keep:
                return result
            start = self.store.next_vid(conn)
            vids = np.arange(start, start + len(keep), dtype=np.int64)
            now, names = time.time(), names or {}
            new_items = sorted({item_ids[i] for i in keep} - set(self._table.col))
            sql = (
                [
                    (
                        "INSERT INTO items VALUES (?, ?, '{}', ?)",
                        [(it, names.get(it, it), now) for it in new_items],
                    )
                ]
                if new_items
                else []
            )
            sql.append(("INSERT INTO vectors VALUES (?, ?, ?, ?, ?)",
                        [(int(v), item_ids[i], paths[i], hashes[i], now) for v, i in zip(vids, keep, strict=True)]))  # fmt: skip
            meta = self.store.commit_vectors(conn, vids, emb[keep], sql)
            self._item_info.update({it: (names.get(it, it), {}) for it in new_items})
            self._table.add_items(new_items)
            self._table.append(vids, [self._table.col[item_ids[i]] for i in keep], emb[keep])
            self._installed(meta)
        result.added, result.new_items = len(keep), new_items
        result.vids, result.positions = vids.tolist(), list(keep)
        return result

    def remove_item(self, item_id: str) -> int:
        """Remove an item and its vectors (metadata only: the vectors become dead rows until compaction)."""
        with self.store.writer() as conn:
            self.refresh()
            col = self._item_col(item_id)
            n = int(self._table.counts[col])
            meta = self.store.transaction(conn, [("DELETE FROM vectors WHERE item_id=?", (item_id,)),
                                                 ("DELETE FROM items WHERE item_id=?", (item_id,))],
                                          bump=("generation", "epoch"))  # fmt: skip
            self._table = self._table.without_items([col])  # in memory only: O(N), no file is rewritten
            del self._item_info[item_id]
            self._installed(meta)
        return n

    def compact(self) -> dict[str, int]:
        """Rewrite the segments as one without dead rows (``tools/enroll.py --compact``)."""
        with self.store.writer() as conn:
            before = len(self.store.segments(conn))
            dropped = self.store.compact(conn)
            return {
                "segments_before": before,
                "segments": len(self.store.segments(conn)),
                "dead_rows_dropped": dropped,
            }

    def segment_files(self) -> list[Path]:
        """The segment files holding the vectors now, oldest first (for backups and checks)."""
        with self.store.reading() as conn:
            return [self.root / s.file for s in self.store.segments(conn)]

    def storage(self) -> dict[str, int]:
        """Segment count, stored rows and dead rows (removed vectors not yet compacted away)."""
        with self.store.reading() as conn:
            segs = self.store.segments(conn)
            return {
                "segments": len(segs),
                "stored_rows": sum(s.rows for s in segs),
                "dead_rows": self.store.dead_rows(conn),
            }

    def set_item(
        self, item_id: str, *, name: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        """Change an enrolled item's display name and/or attributes."""
        self._item_col(item_id)
        sql = [("UPDATE items SET name=? WHERE item_id=?", (name, item_id))] if name is not None else []
        if attributes is not None:
            sql.append(("UPDATE items SET attributes=? WHERE item_id=?", (json.dumps(attributes), item_id)))
        self._write(sql, bump=("items_epoch",))

    def set_threshold(self, threshold: float | None = None, margin: float | None = None) -> None:
        """Store the open-set decision rule (cosine threshold and margin over the second item)."""
        updates = {k: v for k, v in (("threshold", threshold), ("margin", margin)) if v is not None}
        for k, v in updates.items():
            if not math.isfinite(float(v)):
                raise ValueError(f"{k} must be a finite number, got {v}")
        self._set_meta({k: str(float(v)) for k, v in updates.items()})

    def set_score_mode(self, mode: str, top_n: int | None = None) -> None:
        """Item score: one of :data:`~.scoring.SCORE_MODES` (``max``, ``mean_topn``, ``prototype``, ``probe``)."""
        upd = {"score_mode": get_score_mode(mode).name}
        if top_n is not None:
            if top_n < 1:
                raise ValueError(f"top_n must be >= 1, got {top_n}")
            upd["top_n"] = str(int(top_n))
        self._set_meta(upd)

    def record_export(self, entry: dict[str, Any]) -> bool:
        """Add an accepted export (``entry["sha256"]`` identifies it) to ``accepted_exports``; False if listed."""
        with self.store.writer() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key='accepted_exports'").fetchone()
            listed = json.loads(row[0]) if row else []
            if any(e.get("sha256") == entry["sha256"] for e in listed):
                return False
            self.store.transaction(conn, [("INSERT OR REPLACE INTO meta VALUES ('accepted_exports', ?)",
                                           (json.dumps([*listed, entry]),))], bump=())  # fmt: skip
        self.refresh()
        return True

    def _set_meta(self, updates: dict[str, str]) -> None:
        self._write([("UPDATE meta SET value=? WHERE key=?", [(v, k) for k, v in updates.items()])], bump=())

    def _write(self, sql: list, bump: Sequence[str]) -> None:
        with self.store.writer() as conn:
            self.store.transaction(conn, sql, bump=bump)
        self.refresh()

    # ------------------------------------------------------------------ local features

    def store_local_features(self, method: str, feats: dict[int, tuple[np.ndarray, np.ndarray]]) -> int:
        """Store keypoints and descriptors per vector id (one transaction); returns how many."""
        return store_features(self.store, method, feats)

    def local_features(
        self, items: Sequence[str], method: str, per_item: int = 3
    ) -> dict[str, list[Features]]:
        """Stored features of up to ``per_item`` gallery images of each item (oldest first; cached per generation)."""
        key = (self.generation, method, per_item)
        missing = [it for it in items if (*key, it) not in self._feat_cache]
        for it, feats in (read_features(self.store, missing, method, per_item) if missing else {}).items():
            self._feat_cache[(*key, it)] = feats
        return {it: self._feat_cache[(*key, it)] for it in items}

    def local_feature_methods(self) -> list[str]:
        """The local-feature methods stored for at least one vector."""
        return feature_methods(self.store)

    def vectors_without_features(self, method: str) -> list[tuple[int, str]]:
        """``(vid, source path)`` of vectors that have no stored features of ``method``."""
        return vectors_without(self.store, method)

    # ------------------------------------------------------------------ search

    def _state(self) -> State:
        return State(self._table, self.generation, get_score_mode(self.score_mode), self.top_n)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.embedding_dim:
            raise GalleryModelMismatchError(
                f"{self.root}: queries have shape {q.shape}, the gallery holds dimension {self.embedding_dim}"
            )
        return normalize_rows(q)

    def search(self, queries: np.ndarray, *, k: int = 5, candidates: Candidates = None,
               threshold: float | None = None, margin: float | None = None) -> list[Match]:  # fmt: skip
        """Match query embeddings (``Q x D``; normalised here).

        ``candidates``: ``None`` searches the whole gallery; a list of item ids constrains
        every query to them; a list with one entry (list or None) per query constrains each
        query separately. Unknown candidate ids raise :class:`UnknownItemError`.
        """
        return self.searcher.search(
            self._state(), self._queries(queries), k=k, candidates=candidates,
            threshold=self.threshold if threshold is None else threshold, margin=self.margin if margin is None else margin,
        )  # fmt: skip

    def exact_item_scores(self, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Exact ``Q x I`` item scores over the whole gallery, whatever its size (for evaluation)."""
        st = self._state()
        return list(st.table.items), self.searcher.full_scores(st, self._queries(queries))

    def candidate_scores(
        self, queries: np.ndarray, candidates: Sequence[str]
    ) -> tuple[list[str], np.ndarray]:
        """``(items, Q x len(items))`` scores against just these items (deduplicated, in order)."""
        if isinstance(candidates, str):
            raise TypeError(f"candidates must be a list of item ids, not the string {candidates!r}")
        return self.searcher.candidate_scores(self._state(), self._queries(queries), tuple(candidates))

    def ann_index(self):
        """The IVF index for this generation: ``(generation, index, nprobe, recall@10)``."""
        return self.searcher.ann_index(self._state())


__all__ = ["SCORE_MODES", "AddResult", "Gallery", "ItemInfo"]
