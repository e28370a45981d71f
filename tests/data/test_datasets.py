from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, shared_path

from recognizer.data.candidates import candidate_sets
from recognizer.data.datasets import (
    coil_manifests,
    grocery_manifests,
    imagefolder_rows,
    read_grocery_classes,
)
from recognizer.data.manifest import load_manifest

MANIFESTS = ROOT / "data_manifests"


def test_imagefolder(tmp_path):
    for item, n in (("cola", 2), ("tea", 1)):
        (tmp_path / item / "sub").mkdir(parents=True)
        for i in range(n):
            (tmp_path / item / "sub" / f"{i}.JPG").write_bytes(b"x")
    (tmp_path / "tea" / "notes.txt").write_text("skip me")
    rows = imagefolder_rows(tmp_path, split="train")
    assert [(r.path, r.item_id, r.split) for r in rows] == [
        ("cola/sub/0.JPG", "cola", "train"),
        ("cola/sub/1.JPG", "cola", "train"),
        ("tea/sub/0.JPG", "tea", "train"),
    ]
    with pytest.raises(ValueError, match="no images found"):
        imagefolder_rows(tmp_path / "cola" / "sub")


def test_candidate_sets_hold_the_truth():
    pool = [f"i{k}" for k in range(20)]
    truths = ["i3", "i7", "i3"]
    sets = candidate_sets(truths, pool, 10, seed=1)
    for t, s in zip(truths, sets, strict=True):
        assert t in s and len(set(s)) == 10 and set(s) <= set(pool)
    assert sets == candidate_sets(truths, pool, 10, seed=1)
    with pytest.raises(ValueError, match="exceeds"):
        candidate_sets(truths, pool, 21, seed=1)


def test_grocery_split_is_coarse_class_disjoint():
    root = shared_path("grocery")
    sets = grocery_manifests(root)
    classes = read_grocery_classes(root)
    coarse = {c["name"]: c["coarse"] for c in classes}
    train_items = {r.item_id for r in sets["grocery_train"]}
    unseen_items = {r.item_id for r in sets["grocery_unseen"]}
    assert len(train_items) + len(unseen_items) == 54 and not train_items & unseen_items
    assert not {coarse[i] for i in train_items} & {coarse[i] for i in unseen_items}
    queries = [r for r in sets["grocery_unseen"] if r.role == "query"]
    assert queries and all(r.path.startswith("test/") and r.item_id in r.candidates for r in queries)
    assert all(len(r.candidates) == 10 for r in queries)


def test_coil_split_is_object_disjoint():
    sets = coil_manifests(shared_path("coil"))
    train = {r.item_id for r in sets["coil_train"]}
    unseen = {r.item_id for r in sets["coil_unseen"]}
    assert len(train) + len(unseen) == 49 and not train & unseen
    gal = [r for r in sets["coil_unseen"] if r.role == "gallery"]
    assert len(gal) == 4 * len(unseen)


@pytest.mark.parametrize(
    "name, source",
    [
        ("grocery_train", "grocery"),
        ("grocery_unseen", "grocery"),
        ("grocery_unseen_fewshot", "grocery"),
        ("grocery_packages", "grocery"),
        ("coil_train", "coil"),
        ("coil_unseen", "coil"),
    ],
)
def test_committed_manifests_are_current_and_point_at_real_files(name, source):
    root = shared_path(source)
    m = load_manifest(MANIFESTS / f"{name}.csv", root, strict=True)
    missing = [r.path for r in m.rows if not m.resolve(r).is_file()]
    assert not missing, missing[:5]
    fresh = (grocery_manifests if source == "grocery" else coil_manifests)(root)[name]
    assert [(r.path, r.item_id, r.split, r.role, r.candidates) for r in m.rows] == [
        (r.path, r.item_id, r.split, r.role, r.candidates) for r in fresh
    ], "regenerate with: make manifests"


def test_manifests_folder_holds_no_images():
    assert all(p.suffix == ".csv" for p in Path(MANIFESTS).iterdir())


def test_combined_training_manifest_is_current():
    from recognizer.data.datasets import combine_manifests

    root = shared_path()
    parts = [
        (p, load_manifest(MANIFESTS / f"{p}_train.csv", root / p, strict=True).rows)
        for p in ("grocery", "coil")
    ]
    fresh = combine_manifests(parts)
    m = load_manifest(MANIFESTS / "train_grocery_coil.csv", root, strict=True)
    assert [(r.path, r.item_id, r.split) for r in m.rows] == [(r.path, r.item_id, r.split) for r in fresh]
    assert len(m.item_ids) == 35 + 33 and all(m.resolve(r).is_file() for r in m.rows[::50])


def test_combine_prefixes_paths_and_clashing_ids():
    from recognizer.data.datasets import combine_manifests
    from recognizer.data.manifest import ManifestRow

    rows = combine_manifests(
        [("a", [ManifestRow(0, "x.jpg", "cola")]), ("b", [ManifestRow(0, "y.jpg", "cola")])]
    )
    assert [(r.path, r.item_id) for r in rows] == [("a/x.jpg", "cola"), ("b/y.jpg", "b:cola")]
