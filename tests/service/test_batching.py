"""Micro-batching: concurrent requests share one forward pass and get the answers they would get alone."""

from __future__ import annotations

import threading
import time

import numpy as np

from recognizer.service import ServiceConfig
from recognizer.service.batching import MicroBatcher
from recognizer.service.core import Service

from .conftest import make_gallery, wild


def test_batcher_collects_concurrent_jobs_and_keeps_their_order():
    sizes: list[int] = []

    def run(jobs):
        sizes.append(sum(len(j.images) for j in jobs))
        time.sleep(0.05)  # a forward pass
        return [[x * 10 for x in j.images] for j in jobs]

    b = MicroBatcher(run, max_images=8, wait_ms=30)
    futs = []
    ts = [threading.Thread(target=lambda k=k: futs.append((k, b.submit([k, k + 100])))) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted((k, f.result(5)) for k, f in futs) == [(k, [10 * k, 10 * (k + 100)]) for k in range(6)]
    assert max(sizes) > 2 and all(s <= 8 for s in sizes)  # several requests per forward pass
    b.close()

    one: list[int] = []
    b = MicroBatcher(lambda jobs: (one.append(len(jobs)), [None] * len(jobs))[1], max_images=1)
    fs = [b.submit([k]) for k in range(5)]
    [f.result(5) for f in fs]
    assert one == [1] * 5  # batching off: one request at a time
    b.close()


def test_a_failing_batch_fails_its_jobs_not_the_worker():
    calls = []

    def run(jobs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return ["ok"] * len(jobs)

    b = MicroBatcher(run, max_images=1)
    f = b.submit([1])
    try:
        f.result(5)
    except RuntimeError as e:
        assert "boom" in str(e)
    assert b.submit([2]).result(5) == "ok"
    b.close()


def test_batched_answers_equal_one_at_a_time(tmp_path, svc_model, items):
    make_gallery(tmp_path / "g", svc_model, items, 6)
    svc = Service(ServiceConfig(gallery=tmp_path / "g", batch_max_images=32, batch_wait_ms=50))
    photos = [wild(items, f"item{k % 6:04d}", seed=k) for k in range(8)]
    cands = [None, ["item0001", "item0002", "item0003"]] * 4
    futs = [svc.match([p], c, 3, False) for p, c in zip(photos, cands, strict=True)]  # concurrent: one batch
    got = [f.result(60)[0] for f in futs]
    batches = svc.metrics.registry.get_sample_value("recognizer_batch_images_count")
    assert batches < 8 and svc.metrics.registry.get_sample_value("recognizer_batch_images_sum") == 8
    alone = [svc.rec.match_arrays([p], candidates=c, k=3)[0] for p, c in zip(photos, cands, strict=True)]
    for g, a in zip(got, alone, strict=True):
        assert g["item_id"] == a.item_id and g["accepted"] == a.accepted
        assert np.allclose(g["score"], a.score, atol=1e-4)
        assert [t["item_id"] for t in g["top_k"]] == [i for i, _ in a.topk]
    assert {t["item_id"] for g in got[1::2] for t in g["top_k"]} <= {"item0001", "item0002", "item0003"}
    svc.close()
