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
from .features import LocalFeatures
from .images import ImageStore
from .scoring import SCORE_MODES, Match, get_score_mode, normalize_rows
from .search import Candidates, Searcher, State, as_queries, variant_state
from .state import GalleryState
from .store import DB_FILE, GalleryStore, storable
from .versions import POINTER, active_dir


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

    def __init__(self, root: Path, *, ann_threshold: int = 50_000, use_gpu: bool | None = None,
                 lock_timeout: float = 10.0, version_dir: Path | None = None):  # fmt: skip
        self.root = Path(root)  # the gallery folder; its active version's files are in data_root (:mod:`.versions`)
        self.data_root = Path(version_dir) if version_dir is not None else active_dir(self.root)
        self.store = GalleryStore(self.data_root, lock_timeout, home=self.root)
        self.searcher = Searcher(self.data_root, ann_threshold=ann_threshold, use_gpu=use_gpu)
        self._s = GalleryState(self.store)
        self.features = LocalFeatures(self.store, lambda: self._s.generation)  # for geometric re-ranking
        self.images = ImageStore(self.root, self.store)  # kept copies of the enrolled photos

    @classmethod
    def create(cls, root: str | os.PathLike, model_description: dict[str, Any], *, model_spec: str = "",
               threshold: float = 0.0, margin: float = 0.0, score_mode: str = "max", top_n: int = 3,
               **kwargs: Any) -> Gallery:  # fmt: skip
        """Create an empty gallery for embeddings of the model described by ``model_description``.

        ``model_description`` is :meth:`EmbeddingModel.describe` (it holds the fingerprint and
        preprocessing); ``model_spec`` is how to load that model again (``lite0`` or a folder).
        """
        root = Path(root)
        if cls.exists(root):
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
        if not cls.exists(root):
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
            raise GalleryModelMismatchError(_mismatch(self, fingerprint, what))

    @staticmethod
    def exists(root: str | os.PathLike) -> bool:
        """Whether ``root`` holds a gallery (any version of one)."""
        return (Path(root) / POINTER).is_file() or (Path(root) / DB_FILE).is_file()

    def refresh(self) -> bool:
        """Catch up with other processes' commits (reading only what they added); True when vectors changed."""
        return self._s.refresh()

    meta = property(lambda self: self._s.meta, doc="The committed metadata (settings, model description).")
    generation = property(
        lambda self: self._s.generation, doc="Moves on with every commit that changes vectors."
    )
    embedding_dim = property(lambda self: self._s.dim, doc="Dimension of the stored embeddings.")

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
        if self._s.sorted_ids is None:
            self._s.sorted_ids = sorted(self._s.table.items)
        return list(self._s.sorted_ids)

    def __len__(self) -> int:
        """Number of vectors."""
        return len(self._s.table)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._s.table.col

    def require_items(self) -> None:
        """Raise :class:`EmptyGalleryError` when there is nothing to match against (batch tools)."""
        if not self._s.table.items:
            raise EmptyGalleryError(
                f"{self.root}: the gallery is empty; enroll items first (tools/enroll.py)"
            )

    def unknown_message(self, ids: Sequence[str]) -> str:
        """``item id(s) ... not in gallery ...``, listing some of the ids it does hold."""
        return self.searcher.unknown_message(self._state(), ids)

    def items(self) -> list[ItemInfo]:
        counts = self._s.table.counts
        return [
            ItemInfo(it, *self._s.item_info[it], int(counts[self._s.table.col[it]])) for it in self.item_ids
        ]

    def vectors_of(self, item_id: str) -> np.ndarray:
        return self._s.table.item_rows(self._item_col(item_id))

    def vector_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All vectors (read-only, item-sorted) and the item column of each, columns in :meth:`exact_item_scores` order."""
        _, cols, vecs = self._s.table.table()
        return vecs, cols.copy()

    def records(self, item_id: str | None = None) -> list[dict[str, Any]]:
        """Per-vector rows (vid, item_id, path: where its photo reads now, source: the enrolled file, sha256, added)."""
        return self.images.resolve(self.store.records(item_id))

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of ``hashes`` are already enrolled, mapped to the item holding them."""
        return self.store.known_hashes(hashes)

    def _item_col(self, item_id: str) -> int:
        try:
            return self._s.table.col[item_id]
        except KeyError:
            raise UnknownItemError(self.unknown_message([item_id])) from None

    def verify(self) -> dict[str, int]:
        """Re-read everything from disk and check segments and metadata agree; returns counts."""
        self._s.load()
        check, orphans = self.store.integrity()
        if check != "ok" or orphans:
            raise GalleryCorruptError(
                f"{self.root}: integrity check {check!r}, {orphans} vectors without an item"
            )
        return {"items": len(self._s.table.items), "vectors": len(self), "generation": self.generation}

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
        emb, paths, hashes = _checked_batch(
            self.root, self.embedding_dim, item_ids, embeddings, paths, hashes
        )
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
            ids = [item_ids[i] for i in keep]
            fresh = sorted({it for it in ids if it not in self._s.table.col})  # O(batch), not O(items)
            names = {it: (names or {}).get(it, it) for it in fresh}
            vids, meta = self.store.insert_vectors(
                conn, ids, [paths[i] for i in keep], [hashes[i] for i in keep], emb[keep], names
            )
            self._s.added(meta, names, vids, ids, emb[keep])
        result.added, result.new_items = len(keep), list(names)
        result.vids, result.positions = vids.tolist(), list(keep)
        return result

    def remove_item(self, item_id: str) -> int:
        """Remove an item and its vectors (metadata only: the vectors become dead rows until compaction)."""
        with self.store.writer() as conn:
            self.refresh()
            col = self._item_col(item_id)
            n = int(self._s.table.counts[col])
            meta = self.store.transaction(conn, [("DELETE FROM vectors WHERE item_id=?", (item_id,)),
                                                 ("DELETE FROM items WHERE item_id=?", (item_id,))],
                                          bump=("generation", "epoch"))  # fmt: skip
            self._s.removed(meta, item_id)
        return n

    def compact(self) -> dict[str, int]:
        """Rewrite the segments as one without dead rows (``tools/enroll.py --compact``)."""
        return self.store.compact()

    def storage(self) -> dict[str, int]:
        """Segment count, stored rows and dead rows (removed vectors not yet compacted away)."""
        return self.store.storage()

    def segment_files(self) -> list[Path]:
        """The segment files holding the vectors now, oldest first (for backups and checks)."""
        return self.store.segment_files()

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

    @property
    def settings(self) -> dict[str, Any]:
        """How this gallery is enrolled and queried (e.g. ``enroll_views``), read by every tool; a flag overrides."""
        return json.loads(self.meta.get("settings", "{}"))

    def update_settings(self, updates: dict[str, Any]) -> None:
        """Merge ``updates`` (JSON values) into :attr:`settings`."""
        self.store.update_json("settings", {}, lambda s: {**s, **updates})
        self.refresh()

    def record_export(self, entry: dict[str, Any]) -> bool:
        """Add an accepted export (``entry["sha256"]`` identifies it) to ``accepted_exports``; False if listed."""
        known = lambda v: any(e.get("sha256") == entry["sha256"] for e in v)  # noqa: E731
        added = self.store.update_json("accepted_exports", [], lambda v: None if known(v) else [*v, entry])
        self.refresh()
        return added

    def _set_meta(self, updates: dict[str, str]) -> None:
        self._write([("UPDATE meta SET value=? WHERE key=?", [(v, k) for k, v in updates.items()])], bump=())

    def _write(self, sql: list, bump: Sequence[str]) -> None:
        with self.store.writer() as conn:
            self.store.transaction(conn, sql, bump=bump)
        self.refresh()

    # ------------------------------------------------------------------ search

    def _state(self) -> State:
        return State(self._s.table, self.generation, get_score_mode(self.score_mode), self.top_n)

    def search(self, queries: np.ndarray, *, k: int = 5, candidates: Candidates = None,
               threshold: float | None = None, margin: float | None = None) -> list[Match]:  # fmt: skip
        """Match query embeddings (``Q x D``; normalised here).

        ``candidates``: ``None`` searches the whole gallery; a list of item ids constrains
        every query to them; a list with one entry (list or None) per query constrains each
        query separately. Unknown candidate ids raise :class:`UnknownItemError`.
        """
        return self.searcher.search(
            self._state(), as_queries(queries, self.embedding_dim, self.root), k=k, candidates=candidates,
            threshold=self.threshold if threshold is None else threshold, margin=self.margin if margin is None else margin,
        )  # fmt: skip

    def item_scores(self, queries: np.ndarray, candidates: Sequence[str] | None = None, *, k: int = 5
                    ) -> tuple[list[str], np.ndarray]:  # fmt: skip
        """``(items, Q x I)`` scores as :meth:`search` computes them: against ``candidates``, or the whole
        gallery (IVF-shortlisted when large: items outside the ``k``-driven shortlist score -inf)."""
        cands = None if candidates is None else tuple(candidates)
        return self.searcher.scores(
            self._state(), as_queries(queries, self.embedding_dim, self.root), cands, k
        )

    def exact_item_scores(self, queries: np.ndarray, *, without_vids: Sequence[int] = (),
                          score_mode: str | None = None) -> tuple[list[str], np.ndarray]:  # fmt: skip
        """Exact ``Q x I`` item scores over the whole gallery, whatever its size (for evaluation).

        ``without_vids``, ``score_mode``: see :func:`~.search.variant_state` (calibration's trials).
        """
        st = variant_state(self._state(), without_vids, score_mode)
        return list(st.table.items), self.searcher.full_scores(
            st, as_queries(queries, self.embedding_dim, self.root)
        )

    def ann_index(self):
        """The IVF index for this generation: ``(generation, index, nprobe, recall@10)``."""
        return self.searcher.ann_index(self._state())


def _mismatch(g: Gallery, fingerprint: str, what: str) -> str:
    d = g.model_description
    return (f"{g.root}: gallery was built with model {g.fingerprint} ({d['config']['backbone']}, "
            f"{d['preprocess']['input_size']} px, dim {d['embedding_dim']}), but {what} has fingerprint {fingerprint}; "
            f"use the gallery's model ({g.model_spec or 'see model_description'}), re-embed the gallery for this one "
            "(tools/enroll.py --gallery G --reembed --model SPEC) or enroll into a new gallery")  # fmt: skip


def _checked_batch(root: Path, dim: int, item_ids: Sequence[str], embeddings: np.ndarray,
                   paths: Sequence[str] | None, hashes: Sequence[str] | None) -> tuple[np.ndarray, list[str], list[str]]:  # fmt: skip
    """Validate an :meth:`Gallery.add` batch: ``(normalised embeddings, storable paths, hashes)``."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise GalleryModelMismatchError(
            f"{root}: embeddings of shape {emb.shape}, the gallery holds dimension {dim}"
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
    hashes = list(hashes) if hashes is not None else [hashlib.sha256(v.tobytes()).hexdigest() for v in emb]
    if len(paths) != n or len(hashes) != n:
        raise ValueError("paths and hashes must have one entry per embedding")
    return emb, paths, hashes


__all__ = ["SCORE_MODES", "AddResult", "Gallery", "ItemInfo"]
