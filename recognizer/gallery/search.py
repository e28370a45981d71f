"""Searching a :class:`~.vectors.VectorTable`: the whole gallery (exact, IVF or GPU) or a candidate set.

* Candidate-constrained search: only the candidates' blocks are scored (a few small matrix
  products, never a scan). A camera matches many frames against the same few items, so each
  candidate set's blocks are gathered once and cached per generation and score mode.
* Full search, small galleries: exact inner products against every block.
* Full search, large galleries (``ann_threshold`` vectors and up): an IVF index whose
  ``nprobe`` is tuned at build time until recall@10 against exact search is >= 0.995 on
  tuning queries; its nearest vectors shortlist items (for modes other than ``max`` the
  shortlist is then scored exactly). On a GPU, FAISS's brute-force ``knn_gpu`` scans the CPU
  copy instead (GPU FAISS ignores IDSelectors and cannot remove ids, so the CPU side stays the
  source of truth).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import fsync_replace
from .errors import GalleryError, GalleryModelMismatchError, UnknownItemError
from .scoring import (
    Blocks,
    Match,
    ScoreMode,
    block_starts,
    decide,
    get_score_mode,
    item_scores,
    normalize_rows,
    probe_fits,
)
from .store import ANN_PREFIX
from .vectors import VectorTable

Candidates = Sequence[str] | Sequence[Sequence[str] | None] | None


@dataclass(frozen=True)
class State:
    """What a search runs against: one generation's table under one score mode."""

    table: VectorTable
    generation: int
    mode: ScoreMode
    top_n: int


def variant_state(st: State, without_vids: Sequence[int] = (), score_mode: str | None = None) -> State:
    """``st`` without the vectors ``without_vids`` (held-out photos; every item must keep one) and/or
    scored as ``score_mode``, under a cache key of its own."""
    if not len(without_vids) and score_mode is None:
        return st
    table = st.table.without_vids(without_vids) if len(without_vids) else st.table
    if len(without_vids) and (table.counts == 0).any():
        raise ValueError("without_vids would leave an item with no vectors")
    mode = get_score_mode(score_mode) if score_mode else st.mode
    key = (st.generation, "variant", tuple(sorted(int(v) for v in without_vids)))
    return State(table, key, mode, st.top_n)  # type: ignore[arg-type]


def as_queries(queries: np.ndarray, dim: int, root: Path) -> np.ndarray:
    """``Q x dim`` float32 rows, L2-normalised; another shape raises :class:`GalleryModelMismatchError`."""
    q = np.asarray(queries, dtype=np.float32)
    q = q[None] if q.ndim == 1 else q
    if q.ndim != 2 or q.shape[1] != dim:
        raise GalleryModelMismatchError(
            f"{root}: queries have shape {q.shape}, the gallery holds dimension {dim}"
        )
    return normalize_rows(q)


class Searcher:
    """Scores queries against a :class:`State`, with the caches that make repeated searches cheap."""

    def __init__(self, root: Path, *, ann_threshold: int = 50_000, use_gpu: bool | None = None) -> None:
        self.root = root
        self.ann_threshold = ann_threshold
        self.use_gpu = use_gpu
        self._blocks: dict[tuple, tuple[list[str], Blocks]] = {}
        self._ann = None  # (generation, faiss index, nprobe, measured recall)
        self._gpu_res = None

    def unknown_message(self, st: State, ids: Sequence[str]) -> str:
        items = st.table.items
        some = ", ".join(sorted(items)[:8]) + (", ..." if len(items) > 8 else "")
        return (
            f"item id(s) {', '.join(map(repr, ids))} not in gallery {self.root} ({len(items)} items: {some})"
        )

    # ------------------------------------------------------------------ scores

    def candidate_blocks(self, st: State, cands: tuple[str, ...]) -> tuple[list[str], Blocks]:
        """A candidate set, validated and gathered once per generation and mode: ``(items, blocks)``."""
        key = (st.generation, st.mode.name, cands)
        hit = self._blocks.get(key)
        if hit is None:
            missing = [c for c in cands if c not in st.table.col]
            if missing:
                raise UnknownItemError("candidate " + self.unknown_message(st, missing))
            items = list(dict.fromkeys(cands))
            if not items:
                raise ValueError("an empty candidate set (give None to search the whole gallery)")
            cols = np.array([st.table.col[c] for c in items], dtype=np.int64)
            if st.mode.name == "probe" and probe_fits(st.table):
                # one probe fitted on the whole gallery (cached), its candidates' rows: a fit per candidate
                # set costs an L-BFGS run per query when every query has its own set
                w, _, _, b = self._whole_blocks(st)
                ones = np.ones(len(cols), np.int64)
                hit = self._cache(key, (items, Blocks(w[cols], block_starts(ones), ones, b[cols])))
            else:
                hit = self._cache(key, (items, st.mode.blocks(st.table, cols)))
        return hit

    def _whole_blocks(self, st: State) -> Blocks:
        key = (st.generation, st.mode.name, None)
        hit = self._blocks.get(key)
        if hit is None:
            hit = self._cache(key, (st.table.items, st.mode.blocks(st.table, None)))
        return hit[1]

    def _cache(self, key: tuple, value: tuple[list[str], Blocks]) -> tuple[list[str], Blocks]:
        """Keep gathered blocks of this generation only (older ones may hold a whole table's copy), 64 at most."""
        for old in [k for k in self._blocks if k[0] != key[0]]:
            del self._blocks[old]
        if len(self._blocks) >= 64:
            self._blocks.pop(next(iter(self._blocks)))
        self._blocks[key] = value
        return value

    def candidate_scores(
        self, st: State, q: np.ndarray, cands: tuple[str, ...]
    ) -> tuple[list[str], np.ndarray]:
        """Item scores for just the candidates: their gathered blocks only, never a scan."""
        items, blocks = self.candidate_blocks(st, cands)
        return items, item_scores(q, blocks, st.mode.reduce, st.top_n)

    def full_scores(self, st: State, q: np.ndarray) -> np.ndarray:
        """Exact ``Q x I`` item scores over the whole gallery (the whole-gallery blocks are cached)."""
        return item_scores(q, self._whole_blocks(st), st.mode.reduce, st.top_n)

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

    def ann_index(self, st: State):
        """``(generation, IVF index, nprobe, recall@10)`` for this generation (built, tuned and cached on first use)."""
        if self._ann is not None and self._ann[0] == st.generation:
            return self._ann
        import faiss

        from .ann import build_ivf

        cache = self.root / f"{ANN_PREFIX}{st.generation}.faiss"
        nprobe_file = cache.with_suffix(".json")
        if cache.is_file() and nprobe_file.is_file():
            index = faiss.read_index(str(cache))
            info = json.loads(nprobe_file.read_text())
            index.nprobe = int(info["nprobe"])
        else:
            index, info = build_ivf(st.table.table()[2], seed=st.generation)
            with contextlib.suppress(OSError):  # a read-only gallery still searches, just rebuilds next time
                tmp = cache.with_name(cache.name + ".tmp")
                faiss.write_index(index, str(tmp))
                fsync_replace(tmp, cache)
                tmp = nprobe_file.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(info))
                fsync_replace(tmp, nprobe_file)
        self._ann = (st.generation, index, int(info["nprobe"]), float(info["recall_at_10"]))
        return self._ann

    def ann_scores(self, st: State, q: np.ndarray, k: int) -> np.ndarray:
        """Approximate full search for large galleries: nearest vectors -> items (max), the rest -inf."""
        if st.mode.name == "probe":
            raise GalleryError(
                f"{self.root}: 'probe' scoring of a gallery this large ({len(st.table)} vectors) needs a candidate set"
            )
        _, row_item, vecs = st.table.table()
        r = min(len(vecs), max(64, 16 * k))
        gpu = self._gpu()
        if gpu is not None:
            import faiss

            dist, idx = faiss.knn_gpu(gpu, q, vecs, r, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            dist, idx = self.ann_index(st)[1].search(q, r)
        scores = np.full((len(q), len(st.table.items)), -np.inf, np.float32)
        valid = idx >= 0
        rows = np.nonzero(valid)[0]
        cols = row_item[idx[valid]]
        np.maximum.at(scores, (rows, cols), dist[valid].astype(np.float32))
        if not st.mode.full_scan:  # re-score the shortlist exactly with the chosen mode
            for qi in range(len(q)):
                short = np.unique(cols[rows == qi])
                _, exact = self.candidate_scores(st, q[qi : qi + 1], tuple(st.table.items[c] for c in short))
                scores[qi, short] = exact[0]
        return scores

    # ------------------------------------------------------------------ search

    def scores(self, st: State, q: np.ndarray, cands: tuple[str, ...] | None, k: int) -> tuple[list[str], np.ndarray]:
        """``(items, Q x I)`` scores of normalised queries against one candidate set, or the whole gallery
        (``None``: exact, or the IVF shortlist for large galleries, where unlisted items score -inf)."""
        if cands is not None:
            return self.candidate_scores(st, q, cands)
        items = list(st.table.items)  # a copy: the table's own list grows with later enrolments
        if len(st.table) >= self.ann_threshold:
            return items, self.ann_scores(st, q, k)
        return items, self.full_scores(st, q)

    def search(
        self, st: State, q: np.ndarray, *, k: int, candidates: Candidates, threshold: float, margin: float
    ) -> list[Match]:
        """Match normalised queries; ``candidates`` as in :meth:`~.gallery.Gallery.search`."""
        out: list[Match | None] = [None] * len(q)
        for cands, idx in candidate_groups(candidates, len(q)).items():
            items, scores = self.scores(st, q[idx], cands, k)
            for i, m in zip(idx, decide(items, scores, k, threshold, margin), strict=True):
                out[i] = m
        return out  # type: ignore[return-value]


def candidate_groups(candidates: Candidates, n: int) -> dict[tuple[str, ...] | None, list[int]]:
    """Queries grouped by candidate set: ``None`` (whole gallery), one list of ids for all ``n`` queries,
    or one list (or None) per query. Each group is scored in one matrix product."""
    if isinstance(candidates, str):
        raise TypeError(f"candidates must be a list of item ids, not the string {candidates!r}")
    if candidates is not None and all(isinstance(c, str) for c in candidates):
        return {tuple(candidates): list(range(n))}  # one set for all: the fast path
    per_query = [None] * n if candidates is None else list(candidates)
    if len(per_query) != n:
        raise ValueError(f"{len(per_query)} candidate lists for {n} queries")
    groups: dict[tuple[str, ...] | None, list[int]] = {}
    for i, c in enumerate(per_query):
        if isinstance(c, str):
            raise TypeError(f"candidates[{i}] must be a list of item ids or None, not the string {c!r}")
        groups.setdefault(None if c is None else tuple(c), []).append(i)
    return groups
