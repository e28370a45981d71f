"""Balanced batches over several sources of identities, each source with its own share.

A training set of 10,000 identities may hold 56 real items next to 9,944 synthetic ones. Sampled
class-uniformly, a batch would almost never see a real item; sampled image-uniformly, the
sources' photo counts decide. ``MultiSourceBatchSampler`` makes the share explicit: each class
visit picks its source with probability ``shares[source]`` (default: the sources' share of
classes), then the next class of that source's shuffled cycle, then the next ``m`` photos of
that class's shuffled cycle. So every class of a source is visited equally often, every photo
of a class is used before any repeats, and a small source (the real items) can be given, say,
half of every batch. A batch never holds the same class twice. Batches are a pure function of
``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np


class MultiSourceBatchSampler:
    """Yields lists of dataset indices (``DataLoader(batch_sampler=...)`` or iterate directly)."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        sources: Sequence[str] | np.ndarray,
        m: int,
        batch_size: int,
        *,
        shares: Mapping[str, float] | None = None,
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ):
        labels, sources = np.asarray(labels), np.asarray(sources)
        if len(labels) != len(sources):
            raise ValueError(f"{len(labels)} labels but {len(sources)} sources")
        if m < 1 or batch_size % m:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of m {m}")
        classes, inverse = np.unique(labels, return_inverse=True)
        self.members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        class_source = np.array([sources[x[0]] for x in self.members])
        mixed = [c for c, x in enumerate(self.members) if len(set(sources[x].tolist())) > 1]
        if mixed:
            raise ValueError(f"class {classes[mixed[0]]!r} has photos from more than one source")
        names = sorted(set(class_source.tolist()))
        self.by_source = {s: np.flatnonzero(class_source == s) for s in names}
        if shares is None:
            shares = {s: len(self.by_source[s]) for s in names}
        unknown = set(shares) - set(names)
        if unknown:
            raise ValueError(f"shares name unknown source(s) {sorted(unknown)}; the sources are {', '.join(names)}")
        w = np.array([max(0.0, float(shares.get(s, 0.0))) for s in names])
        if w.sum() <= 0:
            raise ValueError(f"shares {dict(shares)} give every source weight 0")
        self.sources, self.shares = names, w / w.sum()
        self.m, self.per_batch = m, batch_size // m
        usable = sum(len(self.by_source[s]) for s, p in zip(names, self.shares, strict=True) if p > 0)
        if usable < self.per_batch:
            raise ValueError(f"batch_size {batch_size} needs {self.per_batch} classes per batch; the sources given "
                             f"a share have {usable}")  # fmt: skip
        n_photos = sum(len(x) for x in self.members)
        self.batches_per_epoch = int(batches_per_epoch or max(1, math.ceil(n_photos / batch_size)))
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``. Class and photo cycles restart each epoch (seeded by it)."""
        rng = np.random.default_rng([self.seed, epoch])
        cls_order = {s: rng.permutation(c) for s, c in self.by_source.items()}
        cls_pos = dict.fromkeys(self.sources, 0)
        photo_order: dict[int, np.ndarray] = {}
        photo_pos: dict[int, int] = {}

        def next_class(s: str, taken: set[int]) -> int:
            for _ in range(len(cls_order[s]) + 1):
                if cls_pos[s] == len(cls_order[s]):
                    cls_order[s], cls_pos[s] = rng.permutation(self.by_source[s]), 0
                c = int(cls_order[s][cls_pos[s]])
                cls_pos[s] += 1
                if c not in taken:
                    return c
            return -1  # every class of this source is already in the batch

        def photos(c: int) -> list[int]:
            out = []
            while len(out) < self.m:
                if photo_pos.get(c, 0) == 0 or photo_pos[c] == len(photo_order[c]):
                    photo_order[c], photo_pos[c] = rng.permutation(self.members[c]), 0
                out.append(int(photo_order[c][photo_pos[c]]))
                photo_pos[c] += 1
            return out

        batches = []
        for _ in range(self.batches_per_epoch):
            taken: set[int] = set()
            batch: list[int] = []
            picks = rng.choice(len(self.sources), size=self.per_batch, p=self.shares)
            for k in picks:
                c = next_class(self.sources[k], taken)
                if c < 0:  # this source is used up for this batch: any source with a share
                    pool = [s for s, p in zip(self.sources, self.shares, strict=True) if p > 0]
                    c = next(x for x in (next_class(s, taken) for s in pool) if x >= 0)
                taken.add(c)
                batch.extend(photos(c))
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)
