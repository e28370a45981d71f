"""The multi-source balanced sampler: shares per source, m photos per class, no class twice in a batch."""

import numpy as np
import pytest

from recognizer.data.multisource import MultiSourceBatchSampler


def _data(n_real=4, n_syn=40, per=3):
    labels = np.repeat(np.arange(n_real + n_syn), per)
    sources = np.where(labels < n_real, "real", "synthetic")
    return labels, sources


def test_shares_set_each_sources_part_of_batches():
    labels, sources = _data()
    s = MultiSourceBatchSampler(labels, sources, m=2, batch_size=8, shares={"real": 0.5, "synthetic": 0.5},
                                batches_per_epoch=200, seed=0)
    batches = s.epoch_batches(0)
    real = np.mean([sources[i] == "real" for b in batches for i in b])
    assert 0.4 < real < 0.6
    natural = MultiSourceBatchSampler(labels, sources, m=2, batch_size=8, batches_per_epoch=200, seed=0)
    real_nat = np.mean([sources[i] == "real" for b in natural.epoch_batches(0) for i in b])
    assert real_nat < 0.2  # 4 of 44 classes


def test_batches_hold_m_per_class_and_distinct_classes():
    labels, sources = _data()
    s = MultiSourceBatchSampler(labels, sources, m=2, batch_size=8, seed=1)
    for b in s.epoch_batches(3):
        assert len(b) == 8
        cls = labels[b]
        assert len(set(cls.tolist())) == 4
        assert all((cls == c).sum() == 2 for c in set(cls.tolist()))
    assert s.epoch_batches(3) == s.epoch_batches(3)  # a pure function of (seed, epoch)


def test_bad_shares_are_named():
    labels, sources = _data()
    with pytest.raises(ValueError, match="unknown source"):
        MultiSourceBatchSampler(labels, sources, m=2, batch_size=8, shares={"web": 1.0})
    with pytest.raises(ValueError, match="classes per batch"):
        MultiSourceBatchSampler(labels, sources, m=2, batch_size=10, shares={"real": 1.0, "synthetic": 0.0})
