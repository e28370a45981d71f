"""The item gallery: what the recognizer knows, enrolled without retraining.

A gallery is a folder:

* ``gallery.sqlite``: per-vector metadata (item id, source path, content hash, time
  added), the item table (id, display name, attributes), and ``meta`` (the embedding
  model's description and fingerprint, the open-set threshold, which index file is
  current, and the exported models accepted for it). Every change is one SQLite transaction.
* ``vectors.<generation>.faiss``: the embeddings, a FAISS ``IndexIDMap2(IndexFlatIP)``
  whose ids are the ``vectors.vid`` primary keys.
* ``gallery.lock``: taken by writers (``fcntl.flock``), so two enrollers never interleave.

Commit protocol (crash-safe at every instant): the new index is written to a temp file,
fsynced and renamed to ``vectors.<g+1>.faiss``; then one SQLite transaction inserts the
metadata and switches ``meta.index_file`` to it; only then is the old file deleted. A
crash before the switch leaves the previous generation current (the orphan file is
removed by the next writer); a crash after it leaves the new one. Readers see one
generation or the other, never a mix.

Search works on an in-memory copy sorted by item, so each item's vectors are one
contiguous block. The CPU copy is the source of truth; GPU FAISS (which ignores
IDSelectors and cannot remove ids) is only used for brute-force scoring of that copy.

* Full search, small galleries: exact inner products, item score = max over its block.
* Full search, large galleries (``ann_threshold`` vectors and up): an IVF index whose
  ``nprobe`` is tuned at build time until recall@10 against exact search is >= 0.995
  on tuning queries (so that fresh queries keep >= 0.99).
* Candidate-constrained search: only the candidates' blocks are scored, a few small
  matrix products, never a scan of the index.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import fsync_replace

FORMAT_VERSION = 1
DB_FILE = "gallery.sqlite"
LOCK_FILE = "gallery.lock"
INDEX_PREFIX = "vectors."
ANN_PREFIX = "ann."
SCORE_MODES = ("max", "mean_topn", "prototype", "probe")

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
_FEATURES_SCHEMA = """
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


class GalleryError(Exception):
    """Base class for gallery errors."""


class GalleryNotFoundError(GalleryError):
    """No gallery at that folder."""


class GalleryModelMismatchError(GalleryError):
    """Embeddings from a different model than the one the gallery was built with."""


class GalleryLockedError(GalleryError):
    """Another process holds the writer lock."""


class GalleryCorruptError(GalleryError):
    """The files disagree (index vs. metadata) or cannot be read."""


class EmptyGalleryError(GalleryError):
    """Matching or evaluating against a gallery that holds no items."""


class UnknownItemError(GalleryError, KeyError):
    """An item id (e.g. a candidate) that the gallery does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Match:
    """One query's answer. ``item_id`` is the best-scoring item; ``accepted`` says whether to trust it.

    ``margin`` is the score gap to the second-best item (``inf`` when only one item was compared).
    """

    item_id: str | None
    score: float
    margin: float
    accepted: bool
    topk: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        """The item id when accepted, else ``"unknown"``."""
        return self.item_id if self.accepted and self.item_id is not None else "unknown"


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


# --------------------------------------------------------------------------- numpy helpers


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 1:  # the camera's case: skip the batched machinery
        n = float(np.sqrt(x[0] @ x[0]))
        return x / max(n, 1e-12)
    n = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x / np.maximum(n, 1e-12)


def block_scores(
    sims: np.ndarray, starts: np.ndarray, counts: np.ndarray, mode: str = "max", top_n: int = 3
) -> np.ndarray:
    """Item scores from vector scores laid out in contiguous item blocks (``Q x N`` -> ``Q x I``)."""
    if sims.shape[1] == 0:
        return np.zeros((sims.shape[0], 0), np.float32)
    if mode == "max":
        return np.maximum.reduceat(sims, starts, axis=1)
    if mode == "mean_topn":
        out = np.empty((sims.shape[0], len(starts)), np.float32)
        for j, (s, c) in enumerate(zip(starts, counts, strict=True)):
            blk = sims[:, s : s + c]
            n = min(top_n, c)
            out[:, j] = (np.partition(blk, c - n, axis=1)[:, c - n :] if n < c else blk).mean(axis=1)
        return out
    raise ValueError(f"score mode {mode!r} is not one of {', '.join(SCORE_MODES)}")


def decide(items: Sequence[str], scores: np.ndarray, k: int, threshold: float, margin: float) -> list[Match]:
    """Turn a ``Q x I`` item-score matrix into matches with the open-set decision."""
    out = []
    n = scores.shape[1]
    kk = min(max(k, 2), n)
    for row in scores:
        if n == 0:
            out.append(Match(None, float("nan"), float("nan"), False, ()))
            continue
        if n <= 64:  # a candidate set: plain Python sorting beats numpy's call overhead
            vals = row.tolist()
            top = sorted(range(n), key=vals.__getitem__, reverse=True)[:kk]
        else:
            part = np.argpartition(-row, kk - 1)[:kk] if kk < n else np.arange(n)
            top = part[np.argsort(-row[part], kind="stable")].tolist()
            vals = {i: float(row[i]) for i in top}
        best = vals[top[0]]
        gap = best - vals[top[1]] if len(top) > 1 else math.inf
        out.append(
            Match(
                items[top[0]],
                best,
                gap,
                bool(best >= threshold and gap >= margin),
                tuple((items[i], vals[i]) for i in top[:k]),
            )
        )
    return out



# ------------------------------------------------------------------------------- gallery


class Gallery:
    """A folder of enrolled items; see the module docstring for layout and guarantees.

    Create with :meth:`create`, open with :meth:`open`. Mutations (:meth:`add`,
    :meth:`remove_item`, :meth:`set_item`, :meth:`set_threshold`) take the writer lock and
    commit atomically; searches read the in-memory copy, which :meth:`refresh` updates.
    """

    def __init__(
        self,
        root: Path,
        *,
        ann_threshold: int = 50_000,
        use_gpu: bool | None = None,
        lock_timeout: float = 10.0,
    ):
        self.root = root
        self.ann_threshold = ann_threshold
        self.use_gpu = use_gpu
        self.lock_timeout = lock_timeout
        self._ann = None  # (generation, faiss index, nprobe, measured recall)
        self._gpu_res = None
        self._load()

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        model_description: dict[str, Any],
        *,
        model_spec: str = "",
        threshold: float = 0.0,
        margin: float = 0.0,
        score_mode: str = "max",
        top_n: int = 3,
        **kwargs: Any,
    ) -> Gallery:
        """Create an empty gallery for embeddings of the model described by ``model_description``.

        ``model_description`` is :meth:`EmbeddingModel.describe` (it holds the fingerprint and
        preprocessing); ``model_spec`` is how to load that model again (``lite0`` or a folder).
        """
        import faiss

        root = Path(root)
        if (root / DB_FILE).exists():
            raise GalleryError(f"{root}: a gallery already exists here")
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode {score_mode!r} is not one of {', '.join(SCORE_MODES)}")
        for key in ("fingerprint", "embedding_dim", "preprocess"):
            if key not in model_description:
                raise ValueError(f"model_description lacks {key!r} (pass EmbeddingModel.describe())")
        root.mkdir(parents=True, exist_ok=True)
        dim = int(model_description["embedding_dim"])
        with _flock(root / LOCK_FILE, 0.0):
            index_name = f"{INDEX_PREFIX}1.faiss"
            _write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), root / index_name)
            tmp_db = root / (DB_FILE + ".tmp")
            tmp_db.unlink(missing_ok=True)
            conn = sqlite3.connect(tmp_db)
            try:
                conn.executescript(_SCHEMA + _FEATURES_SCHEMA)
                meta = {
                    "format_version": FORMAT_VERSION,
                    "model_fingerprint": model_description["fingerprint"],
                    "model_description": json.dumps(model_description, sort_keys=True),
                    "model_spec": model_spec,
                    "embedding_dim": dim,
                    "generation": 1,
                    "index_file": index_name,
                    "threshold": float(threshold),
                    "margin": float(margin),
                    "score_mode": score_mode,
                    "top_n": int(top_n),
                    "created": time.time(),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                conn.commit()
            finally:
                conn.close()
            fsync_replace(tmp_db, root / DB_FILE)  # the gallery exists only once complete
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

    # ------------------------------------------------------------------ loading

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.root / DB_FILE, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _load(self) -> None:
        """Read one committed generation: metadata snapshot plus its index file."""
        for attempt in range(5):
            try:
                self._load_once()
                return
            except FileNotFoundError:
                # a writer switched generations and deleted the file between our two reads
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _read_db(
        self, with_vectors: bool
    ) -> tuple[dict[str, str], dict[str, tuple[str, dict]], list[tuple[int, str]]]:
        """One read snapshot of meta, items and (optionally) the vector rows."""
        try:
            conn = self._connect()
        except sqlite3.Error as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: cannot open ({e})") from None
        try:
            conn.execute("BEGIN")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            items = {
                r[0]: (r[1], json.loads(r[2]))
                for r in conn.execute("SELECT item_id, name, attributes FROM items")
            }
            rows = conn.execute("SELECT vid, item_id FROM vectors").fetchall() if with_vectors else []
            conn.execute("COMMIT")
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: unreadable ({e})") from None
        finally:
            conn.close()
        try:
            if int(meta["format_version"]) != FORMAT_VERSION:
                raise GalleryError(
                    f"{self.root}: gallery format {meta['format_version']}, this code reads {FORMAT_VERSION}"
                )
            int(meta["generation"]), int(meta["embedding_dim"]), meta["index_file"]
        except KeyError as e:
            raise GalleryCorruptError(f"{self.root / DB_FILE}: meta lacks {e}") from None
        return meta, items, rows

    def _load_once(self) -> None:
        import faiss

        meta, items, rows = self._read_db(with_vectors=True)
        dim = int(meta["embedding_dim"])
        index_path = self.root / meta["index_file"]
        if not index_path.exists():
            raise FileNotFoundError(index_path)
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise GalleryCorruptError(
                f"{index_path}: unreadable FAISS index ({str(e).splitlines()[0]})"
            ) from None
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise GalleryCorruptError(f"{index_path}: not an IndexIDMap2 of dimension {dim}")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        n = index.ntotal
        flat = faiss.downcast_index(index.index)
        # a zero-copy view of the flat index's storage; _install copies it once, in item order
        vecs = (
            faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
            if n
            else np.zeros((0, dim), np.float32)
        )
        db_vids = np.array([r[0] for r in rows], dtype=np.int64)
        if len(ids) != len(db_vids) or not np.array_equal(np.sort(ids), np.sort(db_vids)):
            raise GalleryCorruptError(
                f"{self.root}: index {index_path.name} holds {len(ids)} vectors but the metadata lists {len(db_vids)}"
            )
        item_of_vid = dict(rows)
        names = sorted(items)
        code = {it: j for j, it in enumerate(names)}
        try:
            codes = np.array([code[item_of_vid[int(v)]] for v in ids], dtype=np.int64)
        except KeyError as e:
            raise GalleryCorruptError(
                f"{self.root}: a vector belongs to item {e}, which the item table lacks"
            ) from None
        self._install(meta, items, ids, codes, names, vecs)
        del index

    def _install(
        self,
        meta: dict[str, str],
        items: dict[str, tuple[str, dict]],
        vids: np.ndarray,
        codes: np.ndarray,
        names: Sequence[str],
        vecs: np.ndarray,
    ) -> None:
        """Set the in-memory state: vectors sorted by (item, vid) so each item is one contiguous block."""
        self.meta = meta
        self.generation = int(meta["generation"])
        self.embedding_dim = int(meta["embedding_dim"])
        self._items = sorted(items)
        self._item_info = items
        self._col = {it: j for j, it in enumerate(self._items)}
        remap = np.array([self._col.get(nm, -1) for nm in names], dtype=np.int64)
        row_item = remap[codes] if len(codes) else codes
        if (row_item < 0).any():
            raise GalleryCorruptError(f"{self.root}: vectors of an item missing from the item table")
        order = np.lexsort((vids, row_item))
        self._vids = vids[order]
        self._row_item = row_item[order]
        self._vecs = np.ascontiguousarray(vecs[order], dtype=np.float32)
        counts = np.bincount(self._row_item, minlength=len(self._items)).astype(np.int64)
        if (counts == 0).any():
            empty = [self._items[j] for j in np.nonzero(counts == 0)[0][:5]]
            raise GalleryCorruptError(f"{self.root}: item(s) without vectors: {empty}")
        self._counts = counts
        self._starts = (
            np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts
        )
        self._protos = None
        self._probe_fit: tuple[np.ndarray, np.ndarray] | None = None
        self._ann = None
        self._block_cache: dict[tuple, tuple] = {}

    def refresh(self) -> bool:
        """Catch up with other processes' commits; returns True when the vectors changed.

        Metadata (threshold, names) is re-read every time; the vectors only when a new
        generation was committed.
        """
        meta, items, _ = self._read_db(with_vectors=False)
        if int(meta["generation"]) != self.generation:
            self._load()
            return True
        self.meta, self._item_info = meta, items
        return False

    # ------------------------------------------------------------------ properties

    @property
    def fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    def require_items(self) -> None:
        """Raise :class:`EmptyGalleryError` when there is nothing to match against (batch tools)."""
        if not self.item_ids:
            raise EmptyGalleryError(
                f"{self.root}: the gallery is empty; enroll items first (tools/enroll.py)"
            )

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

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def margin(self) -> float:
        return float(self.meta["margin"])

    @property
    def score_mode(self) -> str:
        return self.meta["score_mode"]

    @property
    def top_n(self) -> int:
        return int(self.meta["top_n"])

    @property
    def item_ids(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        """Number of vectors."""
        return len(self._vids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._col

    def items(self) -> list[ItemInfo]:
        return [
            ItemInfo(it, self._item_info[it][0], self._item_info[it][1], int(self._counts[j]))
            for j, it in enumerate(self._items)
        ]

    def vectors_of(self, item_id: str) -> np.ndarray:
        j = self._item_col(item_id)
        s, c = self._starts[j], self._counts[j]
        return self._vecs[s : s + c]

    def exact_item_scores(self, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Exact ``Q x I`` item scores over the whole gallery, whatever its size (for evaluation)."""
        return list(self._items), self._all_item_scores(normalize_rows(np.asarray(queries, np.float32)))

    def candidate_scores(
        self, queries: np.ndarray, candidates: Sequence[str]
    ) -> tuple[list[str], np.ndarray]:
        """``(items, Q x len(items))`` scores against just these items (deduplicated, in order)."""
        if isinstance(candidates, str):
            raise TypeError(f"candidates must be a list of item ids, not the string {candidates!r}")
        return self._candidate_scores(normalize_rows(np.asarray(queries, np.float32)), tuple(candidates))

    def vector_table(self) -> tuple[np.ndarray, np.ndarray]:
        """All vectors (read-only view, item-sorted) and the item column of each (for retrieval metrics)."""
        v = self._vecs.view()
        v.flags.writeable = False
        return v, self._row_item.copy()

    def records(self, item_id: str | None = None) -> list[dict[str, Any]]:
        """Per-vector metadata rows (vid, item_id, path, sha256, added)."""
        conn = self._connect()
        try:
            q = "SELECT vid, item_id, path, sha256, added FROM vectors"
            cur = (
                conn.execute(q + " WHERE item_id=? ORDER BY vid", (item_id,))
                if item_id
                else conn.execute(q + " ORDER BY vid")
            )
            return [dict(zip(("vid", "item_id", "path", "sha256", "added"), r, strict=True)) for r in cur]
        finally:
            conn.close()

    def known_hashes(self, hashes: Sequence[str]) -> dict[str, str]:
        """Which of ``hashes`` are already enrolled, mapped to the item holding them."""
        conn = self._connect()
        try:
            out = {}
            for i in range(0, len(hashes), 500):
                chunk = list(hashes[i : i + 500])
                q = f"SELECT sha256, item_id FROM vectors WHERE sha256 IN ({','.join('?' * len(chunk))})"
                out.update(dict(conn.execute(q, chunk).fetchall()))
            return out
        finally:
            conn.close()

    def _item_col(self, item_id: str) -> int:
        try:
            return self._col[item_id]
        except KeyError:
            raise UnknownItemError(self._unknown_message([item_id])) from None

    def _unknown_message(self, ids: Sequence[str]) -> str:
        some = ", ".join(self._items[:8]) + (", ..." if len(self._items) > 8 else "")
        return f"item id(s) {', '.join(map(repr, ids))} not in gallery {self.root} ({len(self._items)} items: {some})"

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        with _flock(self.root / LOCK_FILE, self.lock_timeout):
            self.refresh()  # start from the latest committed state
            self._remove_orphans()
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()

    def _remove_orphans(self) -> None:
        keep = {self.meta["index_file"]}
        for p in self.root.iterdir():
            if (
                p.name.startswith((INDEX_PREFIX, ANN_PREFIX))
                and p.name not in keep
                and not p.name.startswith(f"{ANN_PREFIX}{self.generation}.")
            ):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _commit(
        self,
        conn: sqlite3.Connection,
        vids: np.ndarray,
        vecs: np.ndarray,
        codes: np.ndarray,
        names: Sequence[str],
        items: dict[str, tuple[str, dict]],
        sql: list[tuple[str, Sequence]],
    ) -> None:
        """Write the full new vector set as the next generation, then switch to it in one transaction.

        ``codes`` index ``names`` (one item per vector); ``items`` is the new item table. On
        success the in-memory state becomes the new generation without re-reading the files.
        """
        import faiss

        new_gen = self.generation + 1
        name = f"{INDEX_PREFIX}{new_gen}.faiss"
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.embedding_dim))
        if len(vids):
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), vids.astype(np.int64))
        _write_index(index, self.root / name)
        del index
        old = self.meta["index_file"]
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt, args in sql:
                if args and isinstance(args[0], (list, tuple)):
                    conn.executemany(stmt, args)
                else:
                    conn.execute(stmt, args)
            conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(new_gen),))
            conn.execute("UPDATE meta SET value=? WHERE key='index_file'", (name,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            (self.root / name).unlink(missing_ok=True)
            raise
        with contextlib.suppress(FileNotFoundError):
            (self.root / old).unlink()
        meta = dict(self.meta, generation=str(new_gen), index_file=name)
        self._install(meta, items, vids, codes, names, vecs)

    def add(
        self,
        item_ids: Sequence[str],
        embeddings: np.ndarray,
        *,
        paths: Sequence[str] | None = None,
        hashes: Sequence[str] | None = None,
        names: dict[str, str] | None = None,
        fingerprint: str | None = None,
    ) -> AddResult:
        """Enroll vectors for items (new items are created). One atomic commit.

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
        # A file name that is not UTF-8 arrives as a str with surrogate escapes; SQLite stores text
        # as UTF-8, so keep such names readable with \xNN escapes instead of failing the commit.
        paths = [_storable(p) for p in paths] if paths is not None else [""] * n
        emb = normalize_rows(emb)
        hashes = (
            list(hashes) if hashes is not None else [hashlib.sha256(v.tobytes()).hexdigest() for v in emb]
        )
        if len(paths) != n or len(hashes) != n:
            raise ValueError("paths and hashes must have one entry per embedding")
        result = AddResult()
        with self._writer() as conn:
            known = self.known_hashes(hashes)
            keep = []
            for i, h in enumerate(hashes):
                if h in known:
                    result.duplicates.append((paths[i], known[h]))
                else:
                    known[h] = item_ids[i]
                    keep.append(i)
            if not keep:
                return result
            start = int(conn.execute("SELECT COALESCE(MAX(vid), 0) + 1 FROM vectors").fetchone()[0])
            new_vids = np.arange(start, start + len(keep), dtype=np.int64)
            now = time.time()
            new_items = sorted({item_ids[i] for i in keep} - set(self._col))
            names = names or {}
            sql: list[tuple[str, Sequence]] = []
            if new_items:
                sql.append(
                    (
                        "INSERT INTO items VALUES (?, ?, '{}', ?)",
                        [(it, names.get(it, it), now) for it in new_items],
                    )
                )
            sql.append(
                (
                    "INSERT INTO vectors VALUES (?, ?, ?, ?, ?)",
                    [
                        (int(v), item_ids[i], paths[i], hashes[i], now)
                        for v, i in zip(new_vids, keep, strict=True)
                    ],
                )
            )
            names_all = self._items + new_items
            code = {it: j for j, it in enumerate(names_all)}
            new_codes = np.array([code[item_ids[i]] for i in keep], dtype=np.int64)
            items_all = dict(self._item_info)
            items_all.update({it: (names.get(it, it), {}) for it in new_items})
            self._commit(
                conn,
                np.concatenate([self._vids, new_vids]),
                np.concatenate([self._vecs, emb[keep]]),
                np.concatenate([self._row_item, new_codes]),
                names_all,
                items_all,
                sql,
            )
            result.added = len(keep)
            result.new_items = new_items
            result.vids = new_vids.tolist()
            result.positions = list(keep)
        return result

    def remove_item(self, item_id: str) -> int:
        """Remove an item and all its vectors; returns how many vectors went."""
        with self._writer() as conn:
            j = self._item_col(item_id)
            keep = self._row_item != j
            n = int((~keep).sum())
            items = {k: v for k, v in self._item_info.items() if k != item_id}
            self._commit(
                conn,
                self._vids[keep],
                self._vecs[keep],
                self._row_item[keep],
                self._items,
                items,
                [
                    ("DELETE FROM vectors WHERE item_id=?", (item_id,)),
                    ("DELETE FROM items WHERE item_id=?", (item_id,)),
                ],
            )
        return n

    def set_item(
        self, item_id: str, *, name: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        """Change an enrolled item's display name and/or attributes."""
        with self._writer() as conn:
            self._item_col(item_id)
            conn.execute("BEGIN IMMEDIATE")
            if name is not None:
                conn.execute("UPDATE items SET name=? WHERE item_id=?", (name, item_id))
            if attributes is not None:
                conn.execute(
                    "UPDATE items SET attributes=? WHERE item_id=?", (json.dumps(attributes), item_id)
                )
            conn.execute("COMMIT")
        self.refresh()

    def set_threshold(self, threshold: float | None = None, margin: float | None = None) -> None:
        """Store the open-set decision rule (cosine threshold and margin over the second item)."""
        updates = {k: v for k, v in (("threshold", threshold), ("margin", margin)) if v is not None}
        for k, v in updates.items():
            if not math.isfinite(float(v)):
                raise ValueError(f"{k} must be a finite number, got {v}")
        self._set_meta({k: str(float(v)) for k, v in updates.items()})

    def set_score_mode(self, mode: str, top_n: int | None = None) -> None:
        """Item score: ``max`` over its vectors, ``mean_topn`` of its best n, ``prototype`` (mean vector), or
        ``probe``: prototypes refined into a linear classifier on the enrolled vectors (:mod:`.adapt`), fitted
        per candidate set (or over the whole gallery, when small enough) at first use and cached."""
        if mode not in SCORE_MODES:
            raise ValueError(f"score mode {mode!r} is not one of {', '.join(SCORE_MODES)}")
        upd = {"score_mode": mode}
        if top_n is not None:
            if top_n < 1:
                raise ValueError(f"top_n must be >= 1, got {top_n}")
            upd["top_n"] = str(int(top_n))
        self._set_meta(upd)

    def record_export(self, entry: dict[str, Any]) -> bool:
        """Add an accepted export (``entry["sha256"]`` identifies it) to ``accepted_exports``; False if listed."""
        with self._writer() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM meta WHERE key='accepted_exports'").fetchone()
            listed = json.loads(row[0]) if row else []
            if any(e.get("sha256") == entry["sha256"] for e in listed):
                conn.execute("ROLLBACK")
                return False
            listed.append(entry)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('accepted_exports', ?)", (json.dumps(listed),))
            conn.execute("COMMIT")
        self.refresh()
        return True

    def _set_meta(self, updates: dict[str, str]) -> None:
        with self._writer() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE meta SET value=? WHERE key=?", [(v, k) for k, v in updates.items()])
            conn.execute("COMMIT")
        self.refresh()

    # ------------------------------------------------------------------ local features

    def store_local_features(self, method: str, feats: dict[int, tuple[np.ndarray, np.ndarray]]) -> int:
        """Store keypoints and descriptors per vector id (one transaction); returns how many."""
        if not feats:
            return 0
        known = set(self._vids.tolist())
        unknown = [v for v in feats if v not in known]
        if unknown:
            raise GalleryError(f"{self.root}: no vectors with ids {unknown[:5]}")
        rows = [
            (
                int(v),
                method,
                kp.astype(np.float32).tobytes(),
                d.tobytes(),
                d.dtype.str,
                int(d.shape[1]) if d.ndim == 2 else 0,
            )
            for v, (kp, d) in feats.items()
        ]
        with self._writer() as conn:
            conn.executescript(_FEATURES_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO local_features VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        return len(rows)

    def local_features(
        self, items: Sequence[str], method: str, per_item: int = 3
    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """Stored features of up to ``per_item`` gallery images of each item (oldest first)."""
        cache = self.__dict__.setdefault("_feat_cache", {})
        out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        missing = [it for it in items if (self.generation, method, it, per_item) not in cache]
        if missing:
            conn = self._connect()
            try:
                for it in missing:
                    try:
                        cur = conn.execute(
                            "SELECT f.kp, f.descriptors, f.dtype, f.dim FROM local_features f JOIN vectors v ON f.vid=v.vid "
                            "WHERE v.item_id=? AND f.method=? ORDER BY v.vid LIMIT ?",
                            (it, method, per_item),
                        )
                        rows = cur.fetchall()
                    except sqlite3.OperationalError:  # no feature table yet
                        rows = []
                    cache[(self.generation, method, it, per_item)] = [
                        (
                            np.frombuffer(kp, np.float32).reshape(-1, 2),
                            np.frombuffer(d, np.dtype(dt)).reshape(-1, dim),
                        )
                        for kp, d, dt, dim in rows
                    ]
            finally:
                conn.close()
        for it in items:
            out[it] = cache[(self.generation, method, it, per_item)]
        return out

    def local_feature_methods(self) -> list[str]:
        """The local-feature methods stored for at least one vector."""
        conn = self._connect()
        try:
            try:
                return [r[0] for r in conn.execute("SELECT DISTINCT method FROM local_features")]
            except sqlite3.OperationalError:
                return []
        finally:
            conn.close()

    def vectors_without_features(self, method: str) -> list[tuple[int, str]]:
        """``(vid, source path)`` of vectors that have no stored features of ``method``."""
        conn = self._connect()
        try:
            try:
                cur = conn.execute(
                    "SELECT v.vid, v.path FROM vectors v LEFT JOIN local_features f ON f.vid=v.vid AND f.method=? "
                    "WHERE f.vid IS NULL ORDER BY v.vid",
                    (method,),
                )
            except sqlite3.OperationalError:
                cur = conn.execute("SELECT vid, path FROM vectors ORDER BY vid")
            return [(int(v), p) for v, p in cur]
        finally:
            conn.close()

    def verify(self) -> dict[str, int]:
        """Re-read everything from disk and check index and metadata agree; returns counts."""
        self._load()
        conn = self._connect()
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            orphans = conn.execute(
                "SELECT COUNT(*) FROM vectors v LEFT JOIN items i ON v.item_id=i.item_id WHERE i.item_id IS NULL"
            ).fetchone()[0]
        finally:
            conn.close()
        if check != "ok" or orphans:
            raise GalleryCorruptError(
                f"{self.root}: integrity check {check!r}, {orphans} vectors without an item"
            )
        return {"items": len(self._items), "vectors": len(self), "generation": self.generation}

    # ------------------------------------------------------------------ search

    def _prototypes(self) -> np.ndarray:
        if self._protos is None:
            sums = np.add.reduceat(self._vecs, self._starts, axis=0) if len(self._vecs) else self._vecs
            self._protos = normalize_rows(sums)
        return self._protos

    def _rows_of(self, cols: np.ndarray) -> np.ndarray:
        """Row indices of these items' vectors in ``_vecs``, item by item."""
        return np.concatenate([np.arange(self._starts[c], self._starts[c] + self._counts[c]) for c in cols])

    def _probe(self, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The probe ``(W, b)`` over the items ``cols`` (all items when None)."""
        from .adapt import PROBE_MAX_WORK, fit_probe

        if cols is None and self._probe_fit is not None:
            return self._probe_fit
        sel = np.arange(len(self._items)) if cols is None else cols
        rows = self._rows_of(sel)
        if len(rows) * len(sel) * self.embedding_dim > PROBE_MAX_WORK:
            raise GalleryError(
                f"{self.root}: 'probe' scoring over {len(sel)} items ({len(rows)} vectors) is too large to fit on "
                "the fly; give a candidate set, or use score mode 'prototype' or 'max'"
            )
        fit = fit_probe(self._vecs[rows], np.repeat(np.arange(len(sel)), self._counts[sel]), len(sel))
        if cols is None:
            self._probe_fit = fit
        return fit

    def _gpu(self):
        """A FAISS GPU resource when asked for (or 'auto' and present), else None."""
        if self.use_gpu is False:
            return None
        import faiss

        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            if self.use_gpu:
                raise GalleryError(
                    "use_gpu=True but this FAISS build has no GPU support or no GPU is visible"
                )
            return None
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return self._gpu_res

    def _all_item_scores(self, q: np.ndarray) -> np.ndarray:
        """Exact ``Q x I`` item scores over the whole gallery (query chunks bound the memory)."""
        mode = self.score_mode
        if mode == "prototype":
            return q @ self._prototypes().T
        if mode == "probe":
            w, b = self._probe()
            return q @ w.T + b
        out = np.empty((len(q), len(self._items)), np.float32)
        step = max(1, int(2e8 // max(1, len(self))))  # ~800 MB of scores at most
        for i in range(0, len(q), step):
            sims = q[i : i + step] @ self._vecs.T
            out[i : i + step] = block_scores(sims, self._starts, self._counts, mode, self.top_n)
        return out

    def ann_index(self):
        """The IVF index for this generation (built, tuned and cached on first use)."""
        if self._ann is not None and self._ann[0] == self.generation:
            return self._ann
        import faiss

        from .ann import build_ivf

        cache = self.root / f"{ANN_PREFIX}{self.generation}.faiss"
        nprobe_file = cache.with_suffix(".json")
        if cache.is_file() and nprobe_file.is_file():
            index = faiss.read_index(str(cache))
            info = json.loads(nprobe_file.read_text())
            index.nprobe = int(info["nprobe"])
        else:
            index, info = build_ivf(self._vecs, seed=self.generation)
            with contextlib.suppress(OSError):  # a read-only gallery still searches, just rebuilds next time
                _write_index(index, cache)
                tmp = nprobe_file.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(info))
                fsync_replace(tmp, nprobe_file)
        self._ann = (self.generation, index, int(info["nprobe"]), float(info["recall_at_10"]))
        return self._ann

    def _ann_item_scores(self, q: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """Approximate full search for large galleries: nearest vectors -> items (max), rest -inf."""
        if self.score_mode == "probe":
            raise GalleryError(
                f"{self.root}: 'probe' scoring of a gallery this large ({len(self)} vectors) needs a candidate set"
            )
        r = min(len(self), max(64, 16 * k))
        gpu = self._gpu()
        if gpu is not None:
            import faiss

            dist, idx = faiss.knn_gpu(gpu, q, self._vecs, r, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            _, index, _, _ = self.ann_index()
            dist, idx = index.search(q, r)
        scores = np.full((len(q), len(self._items)), -np.inf, np.float32)
        valid = idx >= 0
        rows = np.nonzero(valid)[0]
        cols = self._row_item[idx[valid]]
        np.maximum.at(scores, (rows, cols), dist[valid].astype(np.float32))
        if self.score_mode != "max":  # re-score the shortlist exactly with the chosen mode
            for qi in range(len(q)):
                short = np.unique(cols[rows == qi])
                _, exact = self._candidate_scores(q[qi : qi + 1], tuple(self._items[c] for c in short))
                scores[qi, short] = exact[0]
        return self._items, scores

    def _candidate_set(
        self, cands: tuple[str, ...]
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """A candidate set, validated and gathered once: ``(items, vectors, block starts, counts, bias)``.

        A camera matches many frames against the same few items: gathering the
        candidates' vectors into one matrix once per set makes each query a single small
        matrix product, without touching the rest of the gallery. Cached per generation.
        For ``prototype`` scoring the matrix holds one prototype per item; for ``probe`` one
        weight row per item (fitted on just these items' vectors) and ``bias`` its biases.
        """
        key = (self.generation, self.score_mode, cands)
        hit = self._block_cache.get(key)
        if hit is None:
            missing = [c for c in cands if c not in self._col]
            if missing:
                raise UnknownItemError("candidate " + self._unknown_message(missing))
            items = list(dict.fromkeys(cands))
            if not items:
                raise ValueError("an empty candidate set (give None to search the whole gallery)")
            cols = np.array([self._col[c] for c in items], dtype=np.int64)
            bias = None
            if self.score_mode == "probe":
                mat, bias = self._probe(cols)
                counts = np.ones(len(cols), np.int64)
            elif self.score_mode == "prototype":
                mat = np.ascontiguousarray(self._prototypes()[cols])
                counts = np.ones(len(cols), np.int64)
            else:
                counts = self._counts[cols]
                mat = np.ascontiguousarray(self._vecs[self._rows_of(cols)])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            hit = (items, mat, starts, counts, bias)
            if len(self._block_cache) >= 64:
                self._block_cache.pop(next(iter(self._block_cache)))
            self._block_cache[key] = hit
        return hit

    def _candidate_scores(self, q: np.ndarray, cands: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
        """Item scores for just the candidates: their gathered vectors only, never a scan."""
        items, mat, starts, counts, bias = self._candidate_set(cands)
        sims = q @ mat.T
        if bias is not None:
            sims += bias
        mode = "max" if self.score_mode in ("prototype", "probe") else self.score_mode
        return items, block_scores(sims, starts, counts, mode, self.top_n)

    def search(
        self,
        queries: np.ndarray,
        *,
        k: int = 5,
        candidates: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
        threshold: float | None = None,
        margin: float | None = None,
    ) -> list[Match]:
        """Match query embeddings (``Q x D``; normalised here).

        ``candidates``: ``None`` searches the whole gallery; a list of item ids constrains
        every query to them; a list with one entry (list or None) per query constrains each
        query separately. Unknown candidate ids raise :class:`UnknownItemError`.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.embedding_dim:
            raise GalleryModelMismatchError(
                f"{self.root}: queries have shape {q.shape}, the gallery holds dimension {self.embedding_dim}"
            )
        q = normalize_rows(q)
        thr = self.threshold if threshold is None else threshold
        mar = self.margin if margin is None else margin
        if isinstance(candidates, str):
            raise TypeError(f"candidates must be a list of item ids, not the string {candidates!r}")
        if candidates is not None and all(isinstance(c, str) for c in candidates):
            items, scores = self._candidate_scores(q, tuple(candidates))  # one set for all: the fast path
            return decide(items, scores, k, thr, mar)
        per_query = [None] * len(q) if candidates is None else list(candidates)
        if len(per_query) != len(q):
            raise ValueError(f"{len(per_query)} candidate lists for {len(q)} queries")
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, c in enumerate(per_query):
            if isinstance(c, str):
                raise TypeError(f"candidates[{i}] must be a list of item ids or None, not the string {c!r}")
            groups.setdefault(None if c is None else tuple(c), []).append(i)
        out: list[Match | None] = [None] * len(q)
        for cands, idx in groups.items():
            sub = q[idx]
            if cands is not None:
                items, scores = self._candidate_scores(sub, cands)
            elif len(self) >= self.ann_threshold:
                items, scores = self._ann_item_scores(sub, k)
            else:
                items, scores = self._items, self._all_item_scores(sub)
            for i, m in zip(idx, decide(items, scores, k, thr, mar), strict=True):
                out[i] = m
        return out  # type: ignore[return-value]

    def match(
        self,
        images: Sequence[Any] | np.ndarray,
        *,
        candidates: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
        k: int = 5,
        model: Any = None,
    ) -> list[Match]:
        """Match images (file paths or RGB arrays) or embeddings (a ``Q x D`` array).

        Images need ``model`` (an :class:`~recognizer.models.model.EmbeddingModel` with the
        gallery's fingerprint); an image that cannot be read raises its
        :class:`~recognizer.data.imageio.ImageLoadError`.
        """
        if isinstance(images, np.ndarray) and images.ndim == 2 and images.dtype != np.uint8:
            return self.search(images, k=k, candidates=candidates)
        if model is None:
            raise ValueError(
                "matching images needs the gallery's model: match(images, model=load_model(...))"
            )
        self.check_model(model.fingerprint, "the given model")
        from ..data.imageio import load_image
        from ..models.embed import embed_arrays

        arrays = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
        return self.search(embed_arrays(model, arrays), k=k, candidates=candidates)


# ------------------------------------------------------------------------------ file helpers


def _write_index(index, path: Path) -> None:
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    fsync_replace(tmp, path)


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


def _storable(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text: non-UTF-8 bytes of a file name become ``\\xNN``."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
