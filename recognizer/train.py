"""Metric-learning training, stage 1: a head trained on cached frozen-backbone features.

This is the CPU fast path: backbone features are computed once, for a clean copy and a
few augmented copies of each training image, and the head is trained on that cache for
many epochs in seconds each. Losses, miners and the M-per-class sampler are
pytorch-metric-learning's own objects, built from ``{name, args}`` config components;
runtime values (number of classes, embedding size) are joined in at build time.

The best epoch is kept by Recall@1 on validation *classes* (held out from the training
classes), because the model must embed items it never trained on. Unfreezing backbone
blocks (stage 2), distillation and DDP are not here yet.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .manifest import Manifest, ManifestRow, load_manifest
from .model import EmbeddingModel, build_model

LOSSES_WITH_CLASSES = (
    "ArcFaceLoss",
    "SubCenterArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
)

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"val_fraction": 0.2, "copies": 2},
    "model": {
        "backbone": "lite0",
        "pooling": {"name": "avg"},
        "head": {"name": "residual", "args": {}},
        "input_size": 224,
    },
    "loss": {"name": "ArcFaceLoss", "args": {"margin": 28.6, "scale": 64}},
    "miner": None,
    "sampler": {"m": 4, "batch_size": 64},
    "optimizer": {"name": "AdamW", "args": {"lr": 1.0e-3, "weight_decay": 1.0e-4}},
    "loss_optimizer": {"name": "SGD", "args": {"lr": 1.0e-2}},
    "epochs": 10,
    "augment": {
        "crop_scale": [0.5, 1.0],
        "flip": 0.5,
        "color": 0.3,
        "background": 0.5,  # probability of pasting a cut-out item on a real photo
        "mask": "auto",  # auto: only clean white/black backgrounds; grabcut: any photo (slow)
        "background_folder": None,  # default: scikit-image's real photos
    },
}


class ConfigError(ValueError):
    """A config key or value that does not exist or does not fit."""


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        where = f"{path}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(base)}")
        if (
            isinstance(base[k], dict)
            and isinstance(v, dict)
            and k not in ("loss", "miner", "optimizer", "loss_optimizer")
        ):
            out[k] = _merge(base[k], v, where + ".")
        else:
            out[k] = v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        with open(path, encoding="utf-8") as f:
            cfg = _merge(cfg, yaml.safe_load(f) or {})
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value")
        key, value = ov.split("=", 1)
        node: dict = {}
        cur = node
        parts = key.split(".")
        for p in parts[:-1]:
            cur[p] = {}
            cur = cur[p]
        cur[parts[-1]] = yaml.safe_load(value)
        cfg = _merge(cfg, node)
    return cfg


def split_classes(items: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Class-disjoint (train, validation) item sets."""
    rng = np.random.default_rng(seed)
    order = [items[i] for i in rng.permutation(len(items))]
    n_val = max(1, int(round(fraction * len(items)))) if fraction > 0 else 0
    return set(order[n_val:]), set(order[:n_val])


def make_augment(cfg: dict, seed: int):
    """``rgb -> rgb``: background paste (cut-out items on real photos), then geometric and photometric."""
    from .augment import BackgroundPaste, load_background_folder
    from .synthetic import load_backgrounds

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


def cache_features(
    model: EmbeddingModel, manifest: Manifest, rows: list[ManifestRow], copies: int, augment: dict, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of every row: one clean copy plus ``copies`` augmented ones."""
    from .embed import embed_paths

    feats, labels = [], []
    paths = [manifest.resolve(r) for r in rows]
    pooled_model = _PooledOnly(model)
    for c in range(copies + 1):
        aug = make_augment(augment, seed * 1000 + c)

        def view(rgb: np.ndarray, _aug=aug, _clean=c == 0) -> list[np.ndarray]:
            return [rgb] if _clean else [_aug(rgb)]

        res = embed_paths(
            pooled_model, paths, bboxes=[r.bbox for r in rows], view_fn=view, desc=f"features copy {c}"
        )
        feats.append(res.view_embeddings)
        labels.append(np.array([rows[i].item_id for i in res.indices]))
    return np.concatenate(feats), np.concatenate(labels)


class _PooledOnly(torch.nn.Module):
    """The model up to pooling (no head, no normalisation): what stage 1 caches."""

    def __init__(self, model: EmbeddingModel):
        super().__init__()
        self.inner = model
        self.preprocess = model.preprocess
        self.embedding_dim = model.backbone.feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.pooled_features(x)


def recall_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out Recall@1 among the given embeddings."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return float((labels[s.argmax(axis=1)] == labels).mean())


def _build(component: dict, module, kind: str, **runtime):
    name, args = component["name"], dict(component.get("args") or {})
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"unknown {kind} {name!r} in {module.__name__}")
    return cls(**args, **runtime)


def train_head(
    cfg: dict[str, Any], manifest: Manifest, out_dir: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Stage 1: cache features, train the head, keep the best epoch by validation-class Recall@1."""
    from pytorch_metric_learning import losses, miners, samplers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    rows = [r for r in manifest.rows if r.item_id and r.split in ("", "train", "val")]
    items = sorted({r.item_id for r in rows})
    train_items, val_items = split_classes(items, cfg["data"]["val_fraction"], cfg["seed"])
    model = build_model(dict(cfg["model"]))
    t0 = time.perf_counter()
    tr_rows = [r for r in rows if r.item_id in train_items]
    va_rows = [r for r in rows if r.item_id in val_items]
    x_tr, y_tr = cache_features(model, manifest, tr_rows, cfg["data"]["copies"], cfg["augment"], cfg["seed"])
    x_va, y_va = (
        cache_features(model, manifest, va_rows, 0, cfg["augment"], cfg["seed"]) if va_rows else (None, None)
    )
    cache_seconds = time.perf_counter() - t0
    classes = {c: i for i, c in enumerate(sorted(train_items))}
    y = torch.tensor([classes[c] for c in y_tr])
    x = torch.from_numpy(x_tr)
    dim = model.embedding_dim
    runtime = (
        {"num_classes": len(classes), "embedding_size": dim}
        if cfg["loss"]["name"] in LOSSES_WITH_CLASSES
        else {}
    )
    loss_fn = _build(cfg["loss"], losses, "loss", **runtime)
    miner = _build(cfg["miner"], miners, "miner") if cfg.get("miner") else None
    head_params = list(model.head.parameters()) + list(model.pool.parameters())
    opt = _build(cfg["optimizer"], torch.optim, "optimizer", params=head_params)
    loss_params = list(loss_fn.parameters())
    loss_opt = (
        _build(cfg["loss_optimizer"], torch.optim, "optimizer", params=loss_params) if loss_params else None
    )
    m, bs = cfg["sampler"]["m"], cfg["sampler"]["batch_size"]
    if bs % m or bs > m * len(classes):
        raise ConfigError(
            f"sampler.batch_size {bs} must be a multiple of sampler.m {m} and at most m x classes = {m * len(classes)}"
        )
    sampler = samplers.MPerClassSampler(
        y, m=cfg["sampler"]["m"], batch_size=cfg["sampler"]["batch_size"], length_before_new_iter=len(y)
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=cfg["sampler"]["batch_size"],
        sampler=sampler,
        drop_last=True,
    )

    def val_r1() -> float:
        if x_va is None:
            return float("nan")
        model.eval()
        with torch.no_grad():
            e = model.embed_features(torch.from_numpy(x_va)).numpy()
        return recall_at_1(e, y_va)

    log = [{"epoch": 0, "loss": float("nan"), "val_recall_at_1": val_r1(), "seconds": 0.0}]
    best = (log[0]["val_recall_at_1"], 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, cfg["epochs"] + 1):
        model.train()
        model.backbone.eval()  # frozen: BatchNorm statistics stay as pretrained
        t_ep = time.perf_counter()
        total, n = 0.0, 0
        for xb, yb in loader:
            emb = model.embed_features(xb)
            loss = loss_fn(emb, yb, miner(emb, yb)) if miner is not None else loss_fn(emb, yb)
            opt.zero_grad()
            if loss_opt:
                loss_opt.zero_grad()
            loss.backward()
            opt.step()
            if loss_opt:
                loss_opt.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        r1 = val_r1()
        log.append(
            {
                "epoch": epoch,
                "loss": total / max(1, n),
                "val_recall_at_1": r1,
                "seconds": time.perf_counter() - t_ep,
            }
        )
        if progress:
            print(
                f"epoch {epoch}: loss {total / max(1, n):.4f}, val R@1 {r1:.4f}, {n / max(1e-9, log[-1]['seconds']):.0f} samples/s"
            )
        if r1 > best[0] or np.isnan(best[0]):
            best = (r1, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    model.save(out / "model", extra={"best_epoch": best[1], "val_recall_at_1": best[0]})
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(out / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log[0]))
        w.writeheader()
        w.writerows(log)
    summary = {
        "train_items": len(train_items),
        "val_items": len(val_items),
        "train_samples": len(y),
        "cache_seconds": cache_seconds,
        "best_epoch": best[1],
        "best_val_recall_at_1": best[0],
        "untrained_val_recall_at_1": log[0]["val_recall_at_1"],
        "model_dir": str(out / "model"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_training(
    config: str | None, overrides: list[str], manifest: str, data_root: str | None, out_dir: str
) -> dict[str, Any]:
    """Entry point of ``tools/train.py``."""
    cfg = load_config(config, overrides)
    return train_head(cfg, load_manifest(manifest, data_root), out_dir)
