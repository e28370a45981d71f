"""Training data: the class-disjoint split, augmentation, and the batch loaders.

Validation holds out whole *classes*, so the best epoch is chosen by how well the model embeds
items it never trained on, as enrollment will use it. Data streams from the manifest through
DataLoader workers; nothing but the optional feature cache is held in memory. Batches come
from ``BalancedBatchSampler`` (balanced over a long tail, sharded over DDP ranks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.manifest import Manifest, ManifestRow
from .config import ConfigError
from .parallel import Dist
from .sampling import BalancedBatchSampler


def split_classes(items: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Class-disjoint (train, validation) item sets."""
    rng = np.random.default_rng(seed)
    order = [items[i] for i in rng.permutation(len(items))]
    n_val = max(1, int(round(fraction * len(items)))) if fraction > 0 else 0
    return set(order[n_val:]), set(order[:n_val])


def split_rows(
    manifest: Manifest, fraction: float, seed: int
) -> tuple[set[str], set[str], list[ManifestRow], list[ManifestRow]]:
    """``(train items, validation items, train rows, validation rows)`` of the manifest's usable rows.

    Usable: rows with an item and split empty, ``train`` or ``val`` (the split column marks what
    training may see; the train/validation split itself is by class, here).
    """
    rows = [r for r in manifest.rows if r.item_id and r.split in ("", "train", "val")]
    if not rows:
        raise ConfigError(f"{manifest.source}: no usable training rows (split empty, train or val)")
    items = sorted({r.item_id for r in rows})
    train_items, val_items = split_classes(items, fraction, seed)
    tr_rows = [r for r in rows if r.item_id in train_items]
    va_rows = [r for r in rows if r.item_id in val_items]
    return train_items, val_items, tr_rows, va_rows


# ---------------------------------------------------------------------------------------- augmentation


def make_augment(cfg: dict, seed: int):
    """``rgb -> rgb``: background paste (cut-out items on real photos), then geometric and photometric."""
    from ..data.backgrounds import load_backgrounds
    from .augment import BackgroundPaste, load_background_folder

    paste = None
    if cfg["background"] > 0:
        bgs = (
            load_background_folder(cfg["background_folder"])
            if cfg["background_folder"]
            else load_backgrounds()
        )
        paste = BackgroundPaste(bgs, p=cfg["background"], mask_method=cfg["mask"], seed=seed)
    geo = _augmenter(cfg, seed)

    def apply(rgb: np.ndarray) -> np.ndarray:
        return geo(image=paste(rgb) if paste is not None else rgb)["image"]

    return apply


def _augmenter(cfg: dict, seed: int):
    import albumentations as A

    return A.Compose(
        [
            A.RandomResizedCrop(size=(256, 256), scale=tuple(cfg["crop_scale"]), p=1.0),
            A.HorizontalFlip(p=cfg["flip"]),
            A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=cfg["color"]),
        ],
        seed=seed,
    )


# ---------------------------------------------------------------------------------------- loaders


class TrainImages(torch.utils.data.Dataset):
    """Decodes and augments training photos in DataLoader workers; a bad file yields ``None``.

    Each worker builds its own augmenter seeded by (seed, epoch, worker), so runs repeat and
    workers do not draw the same augmentations.
    """

    def __init__(
        self, paths: list[str], labels: np.ndarray, bboxes: list, preprocess, augment: dict, seed: int
    ):
        self.paths, self.labels, self.bboxes = paths, labels, bboxes
        self.preprocess, self.augment_cfg, self.seed = preprocess, augment, seed
        self.epoch = 0
        self._augment = None

    def __len__(self) -> int:
        return len(self.paths)

    def init_worker(self, worker_id: int) -> None:
        self._augment = make_augment(
            self.augment_cfg, int(self.seed * 1_000_003 + self.epoch * 1009 + worker_id)
        )

    def __getitem__(self, i: int):
        from ..data.imageio import ImageLoadError, crop_bbox, load_image

        if self._augment is None:
            self.init_worker(0)
        try:
            rgb = crop_bbox(load_image(self.paths[i]), self.bboxes[i])
        except (ImageLoadError, ValueError) as e:
            return i, None, int(self.labels[i]), str(e)
        return i, self.preprocess.to_tensor(self._augment(rgb)), int(self.labels[i]), ""


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.init_worker(worker_id)


def _collate_train(items):
    ok = [(i, t, y) for i, t, y, _ in items if t is not None]
    bad = [(i, e) for i, t, _, e in items if t is None]
    if not ok:
        return None, None, bad
    return torch.stack([t for _, t, _ in ok]), torch.tensor([y for _, _, y in ok]), bad


def batch_loader(
    cfg: dict[str, Any], dist: Dist, labels, dataset, num_workers: int, **kw
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` whose batches are this rank's share of the balanced sampler's."""
    s = cfg["sampler"]
    sampler = BalancedBatchSampler(
        np.asarray(labels), s["m"], s["batch_size"], per_class=s["per_class"], seed=cfg["seed"],
        rank=dist.rank, world_size=dist.world_size,
    )  # fmt: skip
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, **kw)


def stream_loader(
    cfg: dict[str, Any], dist: Dist, manifest: Manifest, rows: list[ManifestRow], classes: dict[str, int],
    preprocess,
) -> torch.utils.data.DataLoader:  # fmt: skip
    """Augmented training photos, decoded in workers (each rank augments with its own seed)."""
    from ..models.embed import default_num_workers

    ds = TrainImages(
        [str(manifest.resolve(r)) for r in rows], np.array([classes[r.item_id] for r in rows]),
        [r.bbox for r in rows], preprocess, cfg["augment"], cfg["seed"] + 7919 * dist.rank,
    )  # fmt: skip
    nw = cfg["data"]["num_workers"]
    nw = default_num_workers() if nw is None else nw
    return batch_loader(
        cfg, dist, ds.labels, ds, nw, collate_fn=_collate_train, worker_init_fn=_worker_init if nw else None,
        pin_memory=dist.device.type == "cuda",
    )  # fmt: skip
