"""Class-balanced M-per-class batches for long-tailed item sets, shardable across DDP ranks.

pytorch-metric-learning's ``MPerClassSampler`` draws m random photos per class visit, so a
rare item's photos are not all seen each epoch, and it does not split batches over ranks.
This sampler keeps one shuffled cycle of photos per class: a visit takes the next m photos
of the cycle, a cycle is reshuffled only when used up. Every class gets the same number of
visits per epoch, enough for ``per_class`` photos, so:

* an item with at most ``per_class`` photos has every photo used every epoch;
* an item with 2,000 photos gives ``per_class`` different photos each epoch and all of them
  over successive epochs (its cycle carries over);
* an item with fewer than m photos repeats some of them within a visit.

Batches hold ``batch_size // m`` class visits. The epoch's batch list is a pure function of
``(seed, epoch)`` (a resumed run replays the earlier epochs' draws), so every DDP rank builds
the same list and takes every world_size-th batch; the list is padded with extra visits, never
cut, to give each rank the same number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np


class BalancedBatchSampler:
    """Yields lists of dataset indices; use as ``DataLoader(batch_sampler=...)``."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        m: int,
        batch_size: int,
        *,
        per_class: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        labels = np.asarray(labels)
        if m < 1 or batch_size % m:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of m {m}")
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < batch_size // m:
            raise ValueError(
                f"batch_size {batch_size} needs {batch_size // m} classes per batch (m = {m}); "
                f"the data has {len(classes)}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.m, self.batch_size = m, batch_size
        self.members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        counts = np.array([len(x) for x in self.members])
        # Default: the median class size, so rare items are used in full and the epoch is about the data's size.
        self.per_class = int(per_class if per_class is not None else max(m, np.median(counts)))
        self.visits = math.ceil(self.per_class / m)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.batches_per_epoch = math.ceil(len(self.members) * self.visits / ((batch_size // m) * world_size))
        self._state_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (call before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _reset(self) -> None:
        self._state_epoch = 0
        self._orders = [
            np.random.default_rng([self.seed, 0, c]).permutation(x) for c, x in enumerate(self.members)
        ]
        self._pos = np.zeros(len(self.members), dtype=np.int64)
        self._wraps = np.zeros(len(self.members), dtype=np.int64)

    def _take(self, c: int) -> list[int]:
        x, take = self.members[c], []
        while len(take) < self.m:
            if self._pos[c] == len(x):  # cycle used up: reshuffle
                self._wraps[c] += 1
                self._orders[c] = np.random.default_rng([self.seed, 1, c, self._wraps[c]]).permutation(x)
                self._pos[c] = 0
            n = min(self.m - len(take), len(x) - self._pos[c])
            take.extend(self._orders[c][self._pos[c] : self._pos[c] + n].tolist())
            self._pos[c] += n
        return take

    def _generate(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, 2, epoch])
        n_cls = len(self.members)
        for c, x in enumerate(self.members):
            if len(x) <= self.visits * self.m and self._pos[c] != 0:
                self._pos[c] = len(x)  # rare item: start a fresh cycle so the epoch sees every photo
        visits: list[list[int]] = []
        # Rounds: each a permutation of all classes, so a class's visits are spread over the epoch.
        for _ in range(self.visits):
            visits.extend(self._take(int(c)) for c in rng.permutation(n_cls))
        per_batch = self.batch_size // self.m
        group = per_batch * self.world_size
        pad = rng.permutation(n_cls)[: (-len(visits)) % group]  # pad (never drop) to equal batches per rank
        visits.extend(self._take(int(c)) for c in pad)
        return [sum(visits[b * per_batch : (b + 1) * per_batch], []) for b in range(len(visits) // per_batch)]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every rank's), in order; earlier epochs are replayed when needed."""
        if getattr(self, "_state_epoch", None) is None or epoch < self._state_epoch:
            self._reset()
        while self._state_epoch < epoch:
            self._generate(self._state_epoch)
            self._state_epoch += 1
        batches = self._generate(epoch)
        self._state_epoch = epoch + 1
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        yield from batches[self.rank :: self.world_size]
