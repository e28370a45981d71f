from __future__ import annotations

import numpy as np
import pytest

from recognizer.train.sampling import BalancedBatchSampler

# A long tail: 3, 20, 2000, 7 and 25 photos.
LABELS = np.array([0] * 3 + [1] * 20 + [2] * 2000 + [3] * 7 + [4] * 25)


def test_batches_are_m_per_class_and_classes_are_balanced():
    s = BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=1)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len(b) == 8
        # two class visits of exactly m photos each
        ys = LABELS[b]
        assert (ys[:4] == ys[0]).all() and (ys[4:] == ys[4]).all()
    counts = np.bincount(LABELS[np.concatenate(batches)], minlength=5)
    assert counts.min() >= 20 and counts.max() <= 24  # equal visits (+ at most one padding visit)


def test_every_photo_of_a_rare_item_is_used_every_epoch_and_big_items_rotate():
    s = BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=1)
    seen_big: set[int] = set()
    for epoch in range(4):
        s.set_epoch(epoch)
        idx = np.concatenate(list(s))
        for c in (0, 1, 3):  # 3, 20 and 7 photos: all of them, every epoch (3 < m: repeats)
            assert set(idx[LABELS[idx] == c]) == set(np.flatnonzero(LABELS == c)), (epoch, c)
        big = idx[LABELS[idx] == 2]
        assert len(set(big)) == len(big)  # 2000 photos: no repeats within an epoch ...
        assert not seen_big & set(big)  # ... and new ones each epoch (the cycle carries over)
        seen_big |= set(big)


def test_epochs_replay_identically_for_resume_and_ranks_split_the_batches():
    a = BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=5)
    for e in range(3):
        a.set_epoch(e)
        last = list(a)
    b = BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=5)
    b.set_epoch(2)  # a resumed run jumps straight to epoch 2
    assert list(b) == last
    full = BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=5, world_size=2)
    ranks = [
        BalancedBatchSampler(LABELS, m=4, batch_size=8, per_class=20, seed=5, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for s in ranks + [full]:
        s.set_epoch(1)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert len(r0) == len(r1) == len(ranks[0])
    assert r0 + r1 != [] and sorted(map(tuple, r0 + r1)) == sorted(map(tuple, full.epoch_batches(1)))
    assert not {tuple(x) for x in r0} & {tuple(x) for x in r1}


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="multiple of m"):
        BalancedBatchSampler(LABELS, m=3, batch_size=8)
    with pytest.raises(ValueError, match="needs 8 classes per batch"):
        BalancedBatchSampler(LABELS, m=1, batch_size=8)
    with pytest.raises(ValueError, match="rank 2"):
        BalancedBatchSampler(LABELS, m=4, batch_size=8, rank=2, world_size=2)
