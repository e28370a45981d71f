"""Manifest builders: turn folders of photos into validated manifests.

* :func:`imagefolder_rows`: any ``root/<item_id>/*.jpg`` tree.
* :func:`grocery_manifests`: the Grocery Store data set, split by *coarse* class so that
  all varieties of one fruit stay on one side (training items vs. unseen items).
* :func:`coil_manifests`: COIL objects, split by object.

Unseen query rows get a seeded ``candidates`` set of K items that includes the truth,
the constrained "items on the table" case.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .candidates import with_candidates
from .manifest import ManifestRow

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def imagefolder_rows(root: str | os.PathLike, *, split: str = "", role: str = "") -> list[ManifestRow]:
    """One row per image in ``root/<item_id>/`` (recursively below each item folder), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    rows = []
    for item_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(item_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append(ManifestRow(0, f.relative_to(root).as_posix(), item_dir.name, split, role))
    if not rows:
        raise ValueError(f"{root}: no images found in <item_id>/ sub-folders ({', '.join(IMAGE_EXTENSIONS)})")
    return rows



# ----------------------------------------------------------------------------- grocery


def read_grocery_classes(root: str | os.PathLike) -> list[dict[str, str]]:
    """``classes.csv`` as dicts with keys name, id, coarse, coarse_id, iconic."""
    path = Path(root) / "classes.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        return [
            {
                "name": r[0],
                "id": r[1].strip(),
                "coarse": r[2],
                "coarse_id": r[3].strip(),
                "iconic": r[4].lstrip("/"),
            }
            for r in reader
            if r
        ]


def split_coarse_classes(classes: list[dict[str, str]], unseen_fraction: float, seed: int) -> set[str]:
    """Coarse classes held out: seeded order, added until ``unseen_fraction`` of fine classes is reached."""
    by_coarse: dict[str, int] = defaultdict(int)
    for c in classes:
        by_coarse[c["coarse"]] += 1
    coarse = sorted(by_coarse)
    order = np.random.default_rng(seed).permutation(len(coarse))
    target = unseen_fraction * len(classes)
    unseen: set[str] = set()
    count = 0
    for i in order:
        name = coarse[i]
        if count >= target:
            break
        if count + by_coarse[name] > target * 1.25:  # skip a big group that would overshoot
            continue
        unseen.add(name)
        count += by_coarse[name]
    return unseen


def _grocery_split_rows(root: Path, split: str, fine_by_id: dict[str, str]) -> list[ManifestRow]:
    rows = []
    with open(root / f"{split}.txt", encoding="utf-8") as f:
        for line in f:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0]:
                rows.append(ManifestRow(0, parts[0], fine_by_id[parts[1]], split))
    return rows


# Seed 6 holds out a mix of 4 packaged items and 15 produce items in 8 coarse groups (seed 0 gave
# only one package); the 10 juices stay on the training side.
GROCERY_SPLIT_SEED = 6


def grocery_manifests(
    root: str | os.PathLike,
    *,
    unseen_fraction: float = 0.33,
    seed: int = GROCERY_SPLIT_SEED,
    k_candidates: int = 10,
    fewshot: int = 8,
) -> dict[str, list[ManifestRow]]:
    """Manifests for the Grocery Store subset, paths relative to ``root``.

    * ``grocery_train``: training items: train/ and val/ photos, plus each item's iconic image.
    * ``grocery_unseen``: unseen items: the iconic image (``role=gallery``, one shot) and the
      test/ photos (``role=query``, with ``candidates``).
    * ``grocery_unseen_fewshot``: as above, with ``fewshot`` train/ photos per item added to the gallery.
    * ``grocery_packages``: every packaged item (catalog image as gallery, test photos as
      queries with candidates): the dev set for query options and geometric re-ranking.
    """
    root = Path(root)
    classes = read_grocery_classes(root)
    unseen_coarse = split_coarse_classes(classes, unseen_fraction, seed)
    fine_by_id = {c["id"]: c["name"] for c in classes}
    unseen_items = {c["name"] for c in classes if c["coarse"] in unseen_coarse}
    iconic = {c["name"]: c["iconic"] for c in classes}
    photos = {s: _grocery_split_rows(root, s, fine_by_id) for s in ("train", "val", "test")}

    train = [
        ManifestRow(0, iconic[c["name"]], c["name"], "train", "gallery")
        for c in classes
        if c["name"] not in unseen_items
    ]
    train += [r for s in ("train", "val") for r in photos[s] if r.item_id not in unseen_items]

    gallery = [ManifestRow(0, iconic[n], n, "test", "gallery") for n in sorted(unseen_items)]
    queries = [
        ManifestRow(0, r.path, r.item_id, "test", "query")
        for r in photos["test"]
        if r.item_id in unseen_items
    ]
    queries = with_candidates(queries, sorted(unseen_items), min(k_candidates, len(unseen_items)), seed)
    shots: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in photos["train"]:
        if r.item_id in unseen_items and len(shots[r.item_id]) < fewshot:
            shots[r.item_id].append(ManifestRow(0, r.path, r.item_id, "test", "gallery"))
    fewshot_gallery = gallery + [r for n in sorted(shots) for r in shots[n]]
    # packaged goods (all of them, from both sides of the split): the flat printed items that
    # geometric re-ranking is for; a dev set for off-the-shelf models, not for trained ones
    packages = sorted(c["name"] for c in classes if "/Packages/" in "/" + c["iconic"])
    pk_gallery = [ManifestRow(0, iconic[n], n, "test", "gallery") for n in packages]
    pk_queries = [
        ManifestRow(0, r.path, r.item_id, "test", "query")
        for r in photos["test"]
        if r.item_id in set(packages)
    ]
    pk_queries = with_candidates(pk_queries, packages, min(k_candidates, len(packages)), seed)
    return {
        "grocery_train": train,
        "grocery_unseen": gallery + queries,
        "grocery_unseen_fewshot": fewshot_gallery + queries,
        "grocery_packages": pk_gallery + pk_queries,
    }


# ----------------------------------------------------------------------------- COIL

_COIL_NAME = re.compile(r"^(obj\d+)__(\d+)\.(png|jpg)$")


def coil_manifests(
    root: str | os.PathLike,
    *,
    unseen_fraction: float = 0.33,
    seed: int = 0,
    gallery_angles: Sequence[int] = (0, 90, 180, 270),
    k_candidates: int = 10,
) -> dict[str, list[ManifestRow]]:
    """COIL objects split by object: ``coil_train`` (all views) and ``coil_unseen``.

    In ``coil_unseen`` the views at ``gallery_angles`` are the gallery and the other views
    are queries with ``candidates``: recognise an object from any angle after enrolling four.
    """
    root = Path(root)
    views: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for obj_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in obj_dir.iterdir():
            m = _COIL_NAME.match(f.name)
            if m:
                views[m.group(1)].append((int(m.group(2)), f.relative_to(root).as_posix()))
    objects = sorted(views, key=lambda s: int(s[3:]))
    if not objects:
        raise ValueError(f"{root}: no objN/objN__A.jpg files found")
    rng = np.random.default_rng(seed)
    n_unseen = int(round(unseen_fraction * len(objects)))
    unseen = {objects[i] for i in rng.choice(len(objects), size=n_unseen, replace=False)}
    train, gallery, queries = [], [], []
    for obj in objects:
        for angle, path in sorted(views[obj]):
            if obj not in unseen:
                train.append(ManifestRow(0, path, obj, "train"))
            elif angle in gallery_angles:
                gallery.append(ManifestRow(0, path, obj, "test", "gallery"))
            else:
                queries.append(ManifestRow(0, path, obj, "test", "query"))
    queries = with_candidates(queries, sorted(unseen), min(k_candidates, len(unseen)), seed)
    return {"coil_train": train, "coil_unseen": gallery + queries}


def build_manifests(
    kind: str,
    root: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = "data_manifests",
    split: str = "",
    role: str = "",
    seed: int | None = None,
    unseen_fraction: float = 0.33,
    n_items: int = 40,
    n_wild: int = 5,
) -> list[tuple[Path, int]]:
    """Write the manifests of one source ``kind``; returns ``(path, row count)`` for each file written."""
    from .manifest import load_manifest, write_manifest

    if kind == "imagefolder":
        path = Path(out) if out else Path(root) / "manifest.csv"
        return [(path, write_manifest(path, imagefolder_rows(root, split=split, role=role)))]
    if kind == "synthetic":
        from .synthetic import generate_catalog

        path = generate_catalog(root, n_items, n_wild, seed=seed or 0, unseen_fraction=unseen_fraction)
        return [(path, len(load_manifest(path, strict=True).rows))]
    builders = {"grocery": grocery_manifests, "coil": coil_manifests}
    if kind == "combined":  # root: the folder holding grocery/ and coil/
        seed_arg = {} if seed is None else {"seed": seed}
        parts = [
            (
                name,
                builders[name](Path(root) / name, unseen_fraction=unseen_fraction, **seed_arg)[
                    f"{name}_train"
                ],
            )
            for name in ("grocery", "coil")
        ]
        path = Path(out_dir) / "train_grocery_coil.csv"
        return [(path, write_manifest(path, combine_manifests(parts)))]
    if kind not in builders:
        raise ValueError(
            f"unknown manifest kind {kind!r}; choose one of imagefolder, synthetic, {', '.join(builders)}"
        )
    seed_arg = {} if seed is None else {"seed": seed}
    sets = builders[kind](root, unseen_fraction=unseen_fraction, **seed_arg)
    written = []
    for name, rows in sets.items():
        path = Path(out_dir) / f"{name}.csv"
        written.append((path, write_manifest(path, rows)))
    return written


def combine_manifests(parts: Sequence[tuple[str, list[ManifestRow]]]) -> list[ManifestRow]:
    """Join manifests under one data root: each part's paths get its folder as a prefix.

    ``parts`` is ``[(prefix, rows), ...]``, e.g. ``[("grocery", grocery_rows), ("coil", coil_rows)]``
    for a root of ``../shared/data``. Item ids are prefixed too when two parts share one.
    """
    seen: dict[str, str] = {}
    out = []
    for prefix, rows in parts:
        for r in rows:
            item = r.item_id
            if seen.setdefault(item, prefix) != prefix:
                item = f"{prefix}:{item}"
            out.append(ManifestRow(0, f"{prefix}/{r.path}", item, r.split, r.role, r.candidates, r.bbox))
    return out
