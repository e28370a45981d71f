"""From vector similarities to decided matches: item scores, score modes, the open-set decision.

Numpy in, numpy out. A *block* layout puts each item's rows (vectors, or one prototype, or one
probe weight row) next to each other, so an item's score is one reduction over its slice.
The score modes are one table (:data:`SCORE_MODES`): each names how its blocks are built
from the gallery's vectors and how a block is reduced to an item score. Adding a mode is one
entry, not another branch in every search path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .adapt import PROBE_MAX_WORK, fit_probe
from .errors import GalleryError


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


class Blocks(NamedTuple):
    """Rows to score against, laid out in contiguous item blocks (``starts``/``counts`` per item)."""

    mat: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    bias: np.ndarray | None = None


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows as float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 1:  # the camera's case: skip the batched machinery
        n = float(np.sqrt(x[0] @ x[0]))
        return x / max(n, 1e-12)
    n = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x / np.maximum(n, 1e-12)


def block_starts(counts: np.ndarray) -> np.ndarray:
    """Start offset of each block, given the block sizes."""
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts


def block_scores(
    sims: np.ndarray, starts: np.ndarray, counts: np.ndarray, mode: str = "max", top_n: int = 3
) -> np.ndarray:
    """Item scores from row scores laid out in contiguous item blocks (``Q x N`` -> ``Q x I``).

    ``mode`` is the reduction: ``max`` over the block, or ``mean_topn``, the mean of its best n.
    """
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
    raise ValueError(f"block reduction {mode!r} is not one of max, mean_topn")


def item_scores(q: np.ndarray, blocks: Blocks, reduce: str, top_n: int) -> np.ndarray:
    """``Q x I`` item scores of normalised queries against ``blocks`` (query chunks bound the memory)."""
    mat, starts, counts, bias = blocks
    out = np.empty((len(q), len(counts)), np.float32)
    step = max(1, int(2e8 // max(1, len(mat))))  # ~800 MB of similarities at most
    for i in range(0, len(q), step):
        sims = q[i : i + step] @ mat.T
        if bias is not None:
            sims += bias
        out[i : i + step] = block_scores(sims, starts, counts, reduce, top_n)
    return out


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


# ----------------------------------------------------------------------------- score modes


def _vector_blocks(table: Any, cols: np.ndarray | None) -> Blocks:
    mat, counts = table.gather(cols)
    return Blocks(mat, block_starts(counts), counts)


def _prototype_blocks(table: Any, cols: np.ndarray | None) -> Blocks:
    protos = table.prototypes(cols)
    ones = np.ones(len(protos), np.int64)
    return Blocks(protos, block_starts(ones), ones)


def probe_fits(table: Any) -> bool:
    """Whether a probe over the whole gallery is small enough to fit on the fly."""
    return len(table) * len(table.items) * table.dim <= PROBE_MAX_WORK


def _probe_blocks(table: Any, cols: np.ndarray | None) -> Blocks:
    mat, counts = table.gather(cols)
    if len(mat) * len(counts) * mat.shape[1] > PROBE_MAX_WORK:
        raise GalleryError(
            f"{table.name}: 'probe' scoring over {len(counts)} items ({len(mat)} vectors) is too large to fit on "
            "the fly; give a candidate set, or use score mode 'prototype' or 'max'"
        )
    mat = mat if mat.flags.writeable else mat.copy()  # the fit hands it to torch, which wants writable memory
    w, b = fit_probe(mat, np.repeat(np.arange(len(counts)), counts), len(counts))
    ones = np.ones(len(counts), np.int64)
    return Blocks(w, block_starts(ones), ones, b)


@dataclass(frozen=True)
class ScoreMode:
    """An item score: ``blocks(table, cols)`` builds the rows to score (``cols`` None = every item),
    ``reduce`` turns a block's row scores into the item's score; ``full_scan`` says whether an
    approximate nearest-vector search can shortlist items for it (true when the item score is a
    max over the item's own vectors)."""

    name: str
    blocks: Callable[[Any, np.ndarray | None], Blocks]
    reduce: str
    doc: str
    full_scan: bool = False


SCORE_MODES: dict[str, ScoreMode] = {
    m.name: m
    for m in (
        ScoreMode("max", _vector_blocks, "max", "the item's best-matching vector", full_scan=True),
        ScoreMode("mean_topn", _vector_blocks, "mean_topn", "the mean of the item's top_n best vectors"),
        ScoreMode("prototype", _prototype_blocks, "max", "the item's mean vector (re-normalised)"),
        ScoreMode(
            "probe",
            _probe_blocks,
            "max",
            "prototypes refined into a linear classifier on the enrolled vectors (see adapt)",
        ),  # fmt: skip
    )
}


def get_score_mode(name: str) -> ScoreMode:
    """The named score mode; unknown names raise with the valid choices."""
    try:
        return SCORE_MODES[name]
    except KeyError:
        raise ValueError(f"score mode {name!r} is not one of {', '.join(SCORE_MODES)}") from None
