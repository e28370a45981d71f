"""Random candidate sets: the items "known to be on the table", for evaluating constrained matching.

One generator, :func:`random_candidate_sets`, on item columns; :func:`candidate_sets` is the
same draw on item ids (for manifests), with each set shuffled so the truth's position tells
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .manifest import ManifestRow


def random_candidate_sets(
    truth: np.ndarray, n_items: int, k: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One set of ``k`` distinct columns per query (truth first), always including its truth."""
    k = min(k, n_items)
    out = []
    for t in truth:
        others = rng.choice(n_items - 1, size=k - 1, replace=False)
        others = others + (others >= t)  # skip the truth's column
        out.append(np.concatenate([[t], others]))
    return out


def candidate_sets(truths: Sequence[str], pool: Sequence[str], k: int, seed: int) -> list[tuple[str, ...]]:
    """For each true item, ``k`` distinct candidates from ``pool`` including the truth, in seeded random order."""
    pool = sorted(set(pool))
    if k > len(pool):
        raise ValueError(f"candidate set size {k} exceeds the {len(pool)} items available")
    col = {p: i for i, p in enumerate(pool)}
    rng = np.random.default_rng(seed)
    out = []
    for t in truths:  # one truth at a time: draw, then shuffle (truth last before the shuffle)
        s = np.roll(random_candidate_sets(np.array([col[t]]), len(pool), k, rng)[0], -1)
        out.append(tuple(pool[c] for c in s[rng.permutation(k)]))
    return out


def with_candidates(rows: list[ManifestRow], pool: Sequence[str], k: int, seed: int) -> list[ManifestRow]:
    """``rows`` with a random candidate set (see :func:`candidate_sets`) in their ``candidates`` column."""
    cands = candidate_sets([r.item_id for r in rows], pool, k, seed)
    return [
        ManifestRow(r.line, r.path, r.item_id, r.split, r.role, c, r.bbox)
        for r, c in zip(rows, cands, strict=True)
    ]
