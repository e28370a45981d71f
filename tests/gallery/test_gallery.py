from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from recognizer.gallery import (
    Gallery,
    GalleryCorruptError,
    GalleryError,
    GalleryLockedError,
    GalleryModelMismatchError,
    GalleryNotFoundError,
    UnknownItemError,
    block_scores,
    decide,
)

DIM = 8


def _desc(fp="fp-A", dim=DIM):
    return {
        "fingerprint": fp,
        "embedding_dim": dim,
        "preprocess": {"input_size": 64},
        "config": {"backbone": "lite0"},
    }


def _unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def gallery(tmp_path):
    return Gallery.create(tmp_path / "g", _desc(), model_spec="lite0")


def test_block_scores_and_decision_by_hand():
    sims = np.array([[0.1, 0.9, 0.3, 0.5, 0.2]], np.float32)  # items a: [0,1], b: [2,3,4]
    starts, counts = np.array([0, 2]), np.array([2, 3])
    assert block_scores(sims, starts, counts, "max").tolist() == [[pytest.approx(0.9), pytest.approx(0.5)]]
    got = block_scores(sims, starts, counts, "mean_topn", top_n=2)
    assert got[0].tolist() == [pytest.approx(0.5), pytest.approx(0.4)]
    m = decide(["a", "b"], np.array([[0.9, 0.5]], np.float32), k=5, threshold=0.6, margin=0.3)[0]
    assert (m.item_id, m.accepted, m.margin) == ("a", True, pytest.approx(0.4))
    assert m.topk == (("a", pytest.approx(0.9)), ("b", pytest.approx(0.5)))
    m = decide(["a", "b"], np.array([[0.9, 0.7]], np.float32), k=1, threshold=0.6, margin=0.3)[0]
    assert not m.accepted and m.label == "unknown" and len(m.topk) == 1  # margin too small
    m = decide(["a"], np.array([[0.5]], np.float32), k=5, threshold=0.6, margin=0.0)[0]
    assert not m.accepted and math.isinf(m.margin)  # below threshold; one item: margin inf


def test_enroll_search_remove(gallery):
    rng = np.random.default_rng(0)
    v = _unit(rng, 9)
    res = gallery.add(["a", "a", "a", "b", "b", "c", "c", "c", "c"], v, paths=[f"p{i}.jpg" for i in range(9)])
    assert res.added == 9 and res.new_items == ["a", "b", "c"]
    assert [(i.item_id, i.vectors) for i in gallery.items()] == [("a", 3), ("b", 2), ("c", 4)]
    m = gallery.search(v, k=2)
    assert [x.item_id for x in m] == ["a"] * 3 + ["b"] * 2 + ["c"] * 4
    assert all(x.score == pytest.approx(1.0, abs=1e-5) for x in m)
    # constrained: the query of an 'a' vector restricted to b, c never returns a
    m = gallery.search(v[:3], candidates=["b", "c"])
    assert all(x.item_id in ("b", "c") for x in m)
    per_row = gallery.search(v[:2], candidates=[["b"], None])
    assert per_row[0].item_id == "b" and per_row[1].item_id == "a"
    assert gallery.remove_item("b") == 2
    assert gallery.item_ids == ["a", "c"] and len(gallery) == 7
    assert all(x.item_id != "b" for x in gallery.search(v, k=3))
    again = Gallery.open(gallery.root)
    assert again.item_ids == ["a", "c"] and len(again) == 7
    np.testing.assert_allclose(again.vectors_of("c"), v[5:9], atol=1e-6)


def test_identical_images_are_skipped(gallery):
    v = _unit(np.random.default_rng(1), 3)
    gallery.add(["a", "a", "b"], v, hashes=["h1", "h2", "h3"])
    res = gallery.add(
        ["a", "c", "c"], _unit(np.random.default_rng(2), 3), paths=["x", "y", "z"], hashes=["h1", "h4", "h4"]
    )
    assert res.added == 1 and res.duplicates == [("x", "a"), ("z", "c")]
    assert len(gallery) == 4


def test_unknown_candidates_and_items_are_clear_errors(gallery):
    gallery.add(["a", "b"], _unit(np.random.default_rng(3), 2))
    with pytest.raises(
        UnknownItemError, match=r"candidate item id\(s\) 'zz' not in gallery .* \(2 items: a, b\)"
    ):
        gallery.search(_unit(np.random.default_rng(4), 1), candidates=["a", "zz"])
    with pytest.raises(UnknownItemError, match="'nope'"):
        gallery.remove_item("nope")
    with pytest.raises(TypeError, match="not the string"):
        gallery.search(_unit(np.random.default_rng(4), 1), candidates="a")


def test_model_mismatch_is_refused(tmp_path, gallery):
    gallery.add(["a"], _unit(np.random.default_rng(0), 1))
    with pytest.raises(
        GalleryModelMismatchError, match=r"built with model fp-A \(lite0, 64 px, dim 8\).*fingerprint fp-B"
    ):
        Gallery.open(gallery.root, expected_fingerprint="fp-B")
    with pytest.raises(GalleryModelMismatchError, match="fp-B"):
        gallery.add(["a"], _unit(np.random.default_rng(1), 1), fingerprint="fp-B")
    with pytest.raises(GalleryModelMismatchError, match="dimension 8"):
        gallery.add(["a"], np.ones((1, 16), np.float32))
    with pytest.raises(GalleryModelMismatchError, match="dimension 8"):
        gallery.search(np.ones((1, 16), np.float32))
    with pytest.raises(GalleryNotFoundError, match="no gallery here"):
        Gallery.open(tmp_path / "none")
    with pytest.raises(GalleryError, match="already exists"):
        Gallery.create(gallery.root, _desc())


def test_bad_vectors_and_ids_change_nothing(gallery):
    gallery.add(["a"], _unit(np.random.default_rng(0), 1))
    gen = gallery.generation
    with pytest.raises(ValueError, match="NaN"):
        gallery.add(["b"], np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError, match="invalid item id"):
        gallery.add(["x;y"], _unit(np.random.default_rng(1), 1))
    with pytest.raises(ValueError, match="2 item ids for 1 embeddings"):
        gallery.add(["a", "b"], _unit(np.random.default_rng(1), 1))
    assert Gallery.open(gallery.root).generation == gen and len(gallery) == 1


def test_threshold_and_score_modes_persist(gallery):
    rng = np.random.default_rng(5)
    gallery.add(["a"] * 4 + ["b"] * 4, _unit(rng, 8))
    gallery.set_threshold(0.75, 0.05)
    g2 = Gallery.open(gallery.root)
    assert (g2.threshold, g2.margin) == (0.75, 0.05)
    q = _unit(rng, 5)
    for mode in ("max", "mean_topn", "prototype", "probe"):
        g2.set_score_mode(mode, top_n=2)
        full = g2.search(q, k=2)
        cons = g2.search(q, k=2, candidates=["a", "b"])
        for f, c in zip(full, cons, strict=True):  # constrained to all items == full search
            assert f.item_id == c.item_id and f.score == pytest.approx(c.score, abs=1e-5)
    with pytest.raises(ValueError, match="not one of max, mean_topn, prototype, probe"):
        g2.set_score_mode("median")
    with pytest.raises(ValueError, match="finite"):
        g2.set_threshold(float("nan"))


def _nuisance_items(rng, n_items, per_item, dim=32, nuisance=6):
    """Items whose photos vary strongly along a few shared nuisance directions (lighting, background)."""
    centers = rng.normal(size=(n_items, dim)).astype(np.float32)
    noise = rng.normal(0, 0.15, (n_items, per_item, dim)).astype(np.float32)
    noise[..., :nuisance] = rng.normal(0, 4.0, (n_items, per_item, nuisance))
    x = (centers[:, None] + noise).reshape(-1, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(n_items), per_item)


def test_probe_refines_prototypes_on_the_enrolled_photos(tmp_path):
    """Fitted on the enrolled vectors, the probe learns to ignore what varies within items: on fresh photos
    it beats the nearest photo and the prototype. With one photo per item it ranks like the prototype."""
    rng = np.random.default_rng(0)
    x, y = _nuisance_items(rng, 12, 8)
    g = Gallery.create(tmp_path / "g", _desc(dim=32))
    g.add([f"i{k}" for k in y], x)
    qx, qy = _nuisance_items(np.random.default_rng(0), 12, 40)  # same item centres, fresh photos
    acc = {}
    for mode in ("max", "prototype", "probe"):
        g.set_score_mode(mode)
        acc[mode] = np.mean([m.item_id == f"i{k}" for m, k in zip(g.search(qx, k=1), qy, strict=True)])
    assert acc["probe"] > acc["prototype"] + 0.05 and acc["probe"] > acc["max"] + 0.05, acc
    # a candidate set gets a probe of its own, fitted on just its items
    cands = ["i3", "i7", "i9"]
    sub = qy[np.isin(qy, [3, 7, 9])]
    got = g.search(qx[np.isin(qy, [3, 7, 9])], k=2, candidates=cands)
    assert {m.item_id for m in got} <= set(cands)
    assert np.mean([m.item_id == f"i{k}" for m, k in zip(got, sub, strict=True)]) > 0.9
    with pytest.raises(UnknownItemError):
        g.search(qx[:1], candidates=["i3", "nope"])
    # one photo per item: the probe keeps the prototypes' ranking
    one = Gallery.create(tmp_path / "one", _desc(dim=32))
    one.add([f"i{k}" for k in range(12)], x[::8])
    ranks = {}
    for mode in ("prototype", "probe"):
        one.set_score_mode(mode)
        ranks[mode] = [m.item_id for m in one.search(qx, k=1)]
    assert np.mean([a == b for a, b in zip(ranks["prototype"], ranks["probe"], strict=True)]) >= 0.95


def test_probe_follows_gallery_changes_and_refuses_huge_full_scans(tmp_path):
    rng = np.random.default_rng(1)
    x, y = _nuisance_items(rng, 4, 5)
    g = Gallery.create(tmp_path / "g", _desc(dim=32), ann_threshold=18)
    g.add([f"i{k}" for k in y[:15]], x[:15])
    g.set_score_mode("probe")
    assert [m.item_id for m in g.search(x[:15:5], k=1)] == ["i0", "i1", "i2"]
    g.add([f"i{k}" for k in y[15:]], x[15:])  # a new item: the probe is refitted, not reused
    assert g.search(x[15:16], k=1, candidates=["i0", "i3"])[0].item_id == "i3"
    with pytest.raises(GalleryError, match="needs a candidate set"):  # 20 vectors >= ann_threshold (18)
        g.search(x[:1], k=1)
    g.remove_item("i3")
    assert g.search(x[15:16], k=3, candidates=["i0", "i1", "i2"])[0].item_id != "i3"


def test_empty_gallery_answers_unknown(gallery):
    m = gallery.search(_unit(np.random.default_rng(0), 2))
    assert [x.item_id for x in m] == [None, None] and not any(x.accepted for x in m)


def test_ann_path_matches_exact_search(tmp_path):
    """The README's promise: nprobe tuned to recall@10 >= 0.995 against exact search on the tuning
    queries, and >= 0.99 on fresh queries of the same kind (a new photo of an enrolled item)."""
    import faiss

    from recognizer.gallery.ann import perturbed_queries, recall_at_k

    rng = np.random.default_rng(0)
    centers = _unit(rng, 300, 32)
    vecs = centers.repeat(10, axis=0) + rng.normal(0, 0.08, (3000, 32)).astype(np.float32)
    items = [f"i{k}" for k in range(300) for _ in range(10)]
    g = Gallery.create(tmp_path / "big", _desc(dim=32), ann_threshold=1000)
    g.add(items, vecs)
    gen, index, nprobe, recall = g.ann_index()
    assert recall >= 0.995 and 1 <= nprobe <= index.nlist and index.nprobe == nprobe  # the tuning queries
    # fresh queries (another seed than the tuning's), searched with the tuned nprobe, against exact search
    table = np.ascontiguousarray(g.vector_table()[0])
    fresh = perturbed_queries(table, 500, np.random.default_rng(12345))
    _, exact_ids = faiss.knn(fresh, table, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, ivf_ids = index.search(fresh, 10)
    assert recall_at_k(ivf_ids, exact_ids) >= 0.99
    q = centers[:50] + rng.normal(0, 0.08, (50, 32)).astype(np.float32)
    approx = g.search(q, k=5)
    exact = Gallery.open(g.root, ann_threshold=10**9).search(q, k=5)
    agree = np.mean([a.item_id == e.item_id for a, e in zip(approx, exact, strict=True)])
    assert agree >= 0.98
    assert [m.item_id for m in approx[:10]] == [f"i{k}" for k in range(10)]
    # the tuned index is cached for this generation and reused by the next open
    assert (g.root / f"ann.{g.generation}.faiss").is_file()
    assert Gallery.open(g.root, ann_threshold=1000).ann_index()[2] == nprobe


def test_writer_lock_excludes_a_second_writer(gallery):
    with gallery.store.writer():
        slow = Gallery.open(gallery.root, lock_timeout=0.2)
        with pytest.raises(GalleryLockedError, match="another process .* is writing this gallery"):
            slow.add(["a"], _unit(np.random.default_rng(0), 1))
    slow.add(["a"], _unit(np.random.default_rng(0), 1))
    assert len(slow) == 1


def test_corrupt_index_is_reported(gallery):
    gallery.add(["a"], _unit(np.random.default_rng(0), 1))
    gallery.segment_files()[-1].write_bytes(b"garbage")
    with pytest.raises(GalleryCorruptError, match="unreadable FAISS index"):
        Gallery.open(gallery.root)


def test_orphan_segment_from_a_crash_is_ignored_then_cleaned(gallery):
    gallery.add(["a"], _unit(np.random.default_rng(0), 1))
    orphan = gallery.root / "vectors.99.faiss"
    orphan.write_bytes(b"half-written by a killed enroller")
    g = Gallery.open(gallery.root)
    assert len(g) == 1
    g.add(["b"], _unit(np.random.default_rng(1), 1))
    assert not orphan.exists()
    assert sorted(gallery.root.glob("vectors.*")) == sorted(g.segment_files())


class GalleryMachine(RuleBasedStateMachine):
    """Random add/remove/search sequences keep the invariants: committed vectors are found, removed items never return."""

    @initialize()
    def setup(self):
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.g = Gallery.create(self.dir + "/g", _desc())
        self.model: dict[str, list[np.ndarray]] = {}
        self.removed: set[str] = set()
        self.rng = np.random.default_rng(0)

    @rule(item=st.sampled_from(["a", "b", "c", "d"]), n=st.integers(1, 3))
    def add(self, item, n):
        v = _unit(self.rng, n)
        self.g.add([item] * n, v)
        self.model.setdefault(item, []).extend(v)
        self.removed.discard(item)

    @rule(item=st.sampled_from(["a", "b", "c", "d"]))
    def remove(self, item):
        if item in self.model:
            assert self.g.remove_item(item) == len(self.model.pop(item))
            self.removed.add(item)
        else:
            with pytest.raises(UnknownItemError):
                self.g.remove_item(item)

    @rule()
    def reopen(self):
        self.g = Gallery.open(self.g.root)

    @invariant()
    def every_committed_vector_is_found(self):
        assert sorted(self.g.item_ids) == sorted(self.model)
        assert len(self.g) == sum(map(len, self.model.values()))
        for item, vecs in self.model.items():
            m = self.g.search(np.stack(vecs), k=len(self.model))
            assert all(x.item_id == item and x.score > 0.9999 for x in m)
            assert all(r not in [i for i, _ in x.topk] for x in m for r in self.removed)


TestGalleryMachine = GalleryMachine.TestCase
TestGalleryMachine.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _format_1_gallery(root, vecs: np.ndarray, items: list[str]) -> None:
    """A gallery as the format-1 code wrote it: one ``vectors.<generation>.faiss`` rewritten at every commit."""
    import json
    import sqlite3

    import faiss

    root.mkdir(parents=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(vecs, np.arange(1, len(vecs) + 1, dtype=np.int64))
    faiss.write_index(index, str(root / "vectors.7.faiss"))
    conn = sqlite3.connect(root / "gallery.sqlite")
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE items (item_id TEXT PRIMARY KEY, name TEXT NOT NULL, attributes TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL);"
        "CREATE TABLE vectors (vid INTEGER PRIMARY KEY, item_id TEXT NOT NULL REFERENCES items(item_id), path TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, added REAL NOT NULL);"
    )  # fmt: skip
    desc = {"fingerprint": "fp", "embedding_dim": DIM, "preprocess": {"input_size": 64}, "config": {"backbone": "lite0"}}
    meta = {"format_version": 1, "model_fingerprint": "fp", "model_description": json.dumps(desc), "model_spec": "",
            "embedding_dim": DIM, "generation": 7, "index_file": "vectors.7.faiss", "threshold": 0.0, "margin": 0.0,
            "score_mode": "max", "top_n": 3, "created": 0}  # fmt: skip
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
    conn.executemany("INSERT INTO items VALUES (?, ?, '{}', 0)", [(it, it) for it in dict.fromkeys(items)])
    conn.executemany("INSERT INTO vectors VALUES (?, ?, '', ?, 0)", [(i + 1, it, f"h{i}") for i, it in enumerate(items)])
    conn.commit()
    conn.close()


def test_a_format_1_gallery_is_read_then_upgraded_by_its_first_writer(tmp_path):
    rng = np.random.default_rng(3)
    old = _unit(rng, 3)
    _format_1_gallery(tmp_path / "g", old, ["a", "a", "b"])
    g = Gallery.open(tmp_path / "g")
    reader = Gallery.open(tmp_path / "g")  # opened before the upgrade, refreshed after it
    assert g.item_ids == ["a", "b"] and g.search(old[2:], k=1)[0].item_id == "b"  # read as it is
    for k in range(10):  # past the legacy file's number: new segments must not reuse its name
        g.add([f"n{k}"], _unit(rng, 1))
    reader.refresh()
    assert len(reader) == 13 and reader.vectors_of("a").shape == (2, DIM)  # nothing read twice
    g = Gallery.open(tmp_path / "g")
    g.verify()
    assert len(g) == 13 and g.meta["format_version"] == "2"
    np.testing.assert_allclose(g.vectors_of("a"), old[:2], atol=1e-6)  # the legacy vectors survived
    assert all(m.item_id == it for m, it in zip(g.search(old, k=1), ["a", "a", "b"], strict=True))
    g.compact()
    assert Gallery.open(tmp_path / "g").verify()["vectors"] == 13 and len(g.segment_files()) == 1


def test_vector_table_folds_once_under_concurrent_readers():
    """The service scores in several threads: the first read after appends folds the tail, and
    concurrent readers must neither fold it twice (vectors doubled) nor see it half folded."""
    import threading

    from recognizer.gallery.vectors import VectorTable

    for _ in range(5):
        t = VectorTable("x", 4, ["a", "b"], [0, 1], [0, 1], np.eye(2, 4, dtype=np.float32))
        for k in range(300):
            t.append(np.array([2 + k]), np.array([k % 2]), np.ones((1, 4), np.float32))
        seen: list[int] = []
        barrier = threading.Barrier(8)

        def read(t=t, seen=seen, barrier=barrier):
            barrier.wait()
            v, c = t.gather(None)
            seen.append(len(v) * 1000 + int(c.sum()))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert seen == [302 * 1000 + 302] * 8 and len(t) == 302
