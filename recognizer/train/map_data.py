"""Cached trunk maps of the data sets the identity curve trains and evaluates on, one file per set.

A *set* is a list of images (manifest rows, or synthetic identities rendered in workers), each
seen through one view (``whole``, a query framing such as ``crop:0.6``, or an augmentation), with
its item id and source name. Sets are written once to ``cache_dir/<name>.npz`` (maps as float16,
no pickle) and every run of the curve loads them; a set already on disk is not recomputed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.imageio import load_image
from ..data.manifest import Manifest, ManifestRow
from .trunk_cache import ImageSource, TrunkRunner, trunk_maps


@dataclass
class MapSet:
    """Trunk maps with, per map, the item id, the source it came from and the image's key (path or name)."""

    maps: np.ndarray  # N x C x h x w float16
    items: np.ndarray  # N str
    sources: np.ndarray  # N str
    keys: np.ndarray  # N str
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, mask: np.ndarray) -> MapSet:
        return MapSet(self.maps[mask], self.items[mask], self.sources[mask], self.keys[mask], self.seconds)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, maps=self.maps, items=self.items.astype(str), sources=self.sources.astype(str),
                 keys=self.keys.astype(str), seconds=np.float64(self.seconds))  # fmt: skip
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MapSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["maps"], z["items"], z["sources"], z["keys"], float(z["seconds"]))

    @classmethod
    def concat(cls, parts: Sequence[MapSet]) -> MapSet:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("maps", "items", "sources", "keys")),
                   sum(p.seconds for p in parts))  # fmt: skip


def _printer(name: str) -> Callable[[int, int, float], None]:
    last = [0.0]

    def show(done: int, total: int, secs: float) -> None:
        if secs - last[0] > 30 or done == total:
            last[0] = secs
            print(f"[{name}] {done}/{total} images, {done / max(secs, 1e-9):.1f} img/s", file=sys.stderr, flush=True)

    return show


class _RowLoader:
    """Picklable ``i -> rgb`` for manifest rows, with an optional per-worker augmentation."""

    def __init__(self, paths: list[str], augment: dict | None, seed: int):
        self.paths, self.augment, self.seed = paths, augment, seed
        self._aug = None

    def __call__(self, i: int) -> np.ndarray:
        rgb = load_image(self.paths[i])
        if self.augment is None:
            return rgb
        if self._aug is None:
            import torch

            from .data import make_augment

            info = torch.utils.data.get_worker_info()
            self._aug = make_augment(self.augment, self.seed * 1009 + (info.id if info else 0))
        return self._aug(rgb)


class _ViewFrame:
    """Picklable query framing (``crop:0.6``) applied to every image."""

    count = 1

    def __init__(self, view: str):
        from ..matching.options import parse_view

        self.opts = parse_view(view)

    def __call__(self, i: int, rgb: np.ndarray) -> list[np.ndarray]:
        return self.opts.views(rgb)


def cache_rows(
    runner: TrunkRunner,
    preprocess,
    manifest: Manifest,
    rows: Sequence[ManifestRow],
    source: str,
    *,
    view: str = "whole",
    augment: dict | None = None,
    seed: int = 0,
    num_workers: int = 1,
) -> MapSet:
    """Trunk maps of manifest rows seen through ``view`` (and ``augment``, a config's augment section)."""
    paths = [str(manifest.resolve(r)) for r in rows]
    views = None if view == "whole" else _ViewFrame(view)
    src = ImageSource(len(paths), _RowLoader(paths, augment, seed), preprocess, views)
    t0 = time.perf_counter()
    maps, owner = trunk_maps(runner, src, num_workers=num_workers, progress=_printer(source))
    keys = np.array([f"{paths[i]}|{view}" + ("|aug" if augment else "") for i in owner])
    return MapSet(maps, np.array([rows[i].item_id for i in owner]), np.array([source] * len(owner)), keys,
                  time.perf_counter() - t0)  # fmt: skip


class _SyntheticLoader:
    """Picklable ``i -> rgb``: identity ``first + i // per``; photo 0 its catalog image, then wild photos."""

    def __init__(self, first: int, per: int, seed: int, size: int, augment: dict | None):
        self.first, self.per, self.seed, self.size, self.augment = first, per, seed, size, augment
        self._last: tuple[int, np.ndarray] | None = None
        self._bgs = None
        self._aug = None

    def __call__(self, i: int) -> np.ndarray:
        from ..data.identities import identity_photo, render_identity

        j, k = self.first + i // self.per, i % self.per
        if self._last is None or self._last[0] != j:
            self._last = (j, render_identity(j, self.seed))
        if self._bgs is None:
            from ..data.backgrounds import load_backgrounds

            self._bgs = load_backgrounds()
        rgb = identity_photo(self._last[1], j, k, self.seed, self._bgs, self.size)
        if self.augment is None:
            return rgb
        if self._aug is None:
            import torch

            from .data import make_augment

            info = torch.utils.data.get_worker_info()
            self._aug = make_augment(self.augment, self.seed * 1009 + 17 + (info.id if info else 0))
        return self._aug(rgb)


def cache_synthetic(
    runner: TrunkRunner,
    preprocess,
    first: int,
    n_items: int,
    *,
    per_item: int = 3,
    seed: int = 1,
    size: int = 160,
    augment: dict | None = None,
    photos: Sequence[int] | None = None,
    num_workers: int = 1,
) -> MapSet:
    """Trunk maps of synthetic identities ``first .. first + n_items - 1``: catalog image + ``per_item - 1`` wild photos.

    ``photos`` keeps only those photo numbers per identity (e.g. ``[0]``: catalog images only, for
    augmented copies).
    """
    keep = list(range(per_item)) if photos is None else list(photos)
    idx = [j * per_item + k for j in range(n_items) for k in keep]
    loader = _SyntheticLoader(first, per_item, seed, size, augment)
    src = ImageSource(len(idx), _Indexed(loader, idx), preprocess)
    t0 = time.perf_counter()
    maps, owner = trunk_maps(runner, src, num_workers=num_workers, progress=_printer("synthetic"))
    flat = np.asarray(idx)[owner]
    items = np.array([f"syn{first + f // per_item:05d}" for f in flat])
    keys = np.array([f"syn{first + f // per_item:05d}/{f % per_item}" + ("|aug" if augment else "") for f in flat])
    return MapSet(maps, items, np.array(["synthetic"] * len(flat)), keys, time.perf_counter() - t0)


class _Indexed:
    def __init__(self, inner, idx: list[int]):
        self.inner, self.idx = inner, idx

    def __call__(self, i: int) -> np.ndarray:
        return self.inner(self.idx[i])


def write_meta(cache_dir: Path, name: str, info: dict) -> None:
    (cache_dir / f"{name}.json").write_text(json.dumps(info, indent=2, default=str))
