"""Verification on a worker thread: results land exactly ``lag`` frames after they were asked for."""

from __future__ import annotations

import threading

import numpy as np

from recognizer.matching.rerank import RerankConfig
from recognizer.matching.track_verify import TrackVerifier
from recognizer.matching.tracking import Track


class _Features:
    def __init__(self):
        self.threads = set()

    def read(self, items, method, per_item=3):
        self.threads.add(threading.get_ident())  # the gallery's database: only on the caller's thread
        return {it: [] for it in items}


class _Gallery:
    def __init__(self):
        self.features = _Features()


def _verifier(lag: int, release: threading.Event | None = None) -> TrackVerifier:
    v = TrackVerifier(_Gallery(), ["a", "b", "c"], RerankConfig(top_k=2), lag=lag)

    def bonus(rgb, cols, base, stored):
        if release is not None:
            release.wait(5)  # a slow worker: collect() must wait for it
        out = np.zeros(3, np.float32)
        out[cols] = 0.25
        return out

    v._bonus = bonus
    return v


def _track() -> Track:
    return Track(1, (0, 0, 40, 40), np.array([0.8, 0.75, 0.1], np.float32))


def test_a_result_lands_exactly_lag_frames_later_waiting_for_a_slow_worker():
    release = threading.Event()
    v = _verifier(lag=2, release=release)
    tr = _track()
    assert v.request(tr, np.array([0, 1]), np.zeros((40, 40, 3), np.uint8)) is None  # under way
    assert v.collect() == []  # one frame later: not due yet, whatever the worker did
    threading.Timer(0.2, release.set).start()
    ((got, cols, bonus),) = v.collect()  # two frames later: due, waited for
    assert got is tr and cols.tolist() == [0, 1] and bonus.tolist() == [0.25, 0.25, 0.0]
    assert v.collect() == []
    assert v.gallery.features.threads == {threading.get_ident()}
    v.close()


def test_a_result_for_a_crop_the_track_left_is_dropped():
    v = _verifier(lag=1)
    tr = _track()
    v.request(tr, np.array([0, 1]), np.zeros((40, 40, 3), np.uint8))
    tr.verify_epoch += 1  # its box jumped meanwhile
    assert v.collect() == []
    v.close()


def test_lag_0_verifies_inline():
    v = _verifier(lag=0)
    out = v.request(_track(), np.array([1]), np.zeros((40, 40, 3), np.uint8))
    assert out is not None and out.tolist() == [0.0, 0.25, 0.0] and v.collect() == []
    v.close()
