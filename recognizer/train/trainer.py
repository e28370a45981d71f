"""Metric-learning training in two stages, judged on classes it never trained on.

* Stage 1, backbone frozen. ``stage1.cached: true`` is the CPU fast path: pooled backbone
  features are computed once, for a clean copy and ``stage1.copies`` augmented copies of each
  image, and the head trains on that cache for many epochs in seconds each. ``cached: false``
  streams augmented images instead (the GPU path, where fresh augmentation every epoch pays).
* Stage 2 unfreezes the top ``stage2.unfreeze_blocks`` backbone blocks, with their own,
  smaller learning rate (``backbone_lr_scale`` x the head's). BatchNorm of frozen blocks stays
  in eval mode.

Each stage warms up linearly and decays with a cosine. Losses, miners and the reducer are
pytorch-metric-learning's objects; the batch sampler (balanced over a long tail, shardable
over DDP ranks) and embedding distillation from a teacher are this package's. Data streams
from the manifest through DataLoader workers; nothing but the optional feature cache is held
in memory. Under ``torchrun`` the run is data-parallel (gloo on CPU, NCCL on GPU).

The best epoch, over both stages and including the untrained start, is kept by Recall@1 on
validation *classes* held out from the training classes. A checkpoint written atomically after
every epoch makes the run resumable (``--resume``) and crash-safe.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..data.manifest import Manifest, ManifestRow, load_manifest
from ..fileio import write_bytes_atomic, write_csv_atomic, write_text_atomic
from ..models.model import EmbeddingModel, build_model, load_model
from .losses import EmbeddingDistillation, LossConfigError, build_loss, build_miner
from .sampling import BalancedBatchSampler

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"val_fraction": 0.2, "num_workers": None, "cache_dir": None},
    "model": {
        "backbone": "lite0",
        "pooling": {"name": "avg"},
        "head": {"name": "residual", "args": {}},
        "input_size": 224,
    },
    "loss": {"name": "ArcFaceLoss", "args": {"margin": 28.6, "scale": 64}},
    "miner": None,  # e.g. {name: TripletMarginMiner, args: {type_of_triplets: semihard}}
    "class_weights": None,  # e.g. {power: 0.5}: rare classes weigh more in the loss
    "sampler": {"m": 4, "batch_size": 64, "per_class": None},
    "optimizer": {"name": "AdamW", "args": {"lr": 1.0e-3, "weight_decay": 1.0e-4}},
    "loss_optimizer": {"name": "SGD", "args": {"lr": 1.0e-2}},  # the loss's own class weights
    "schedule": {"warmup_epochs": 0, "min_lr_scale": 0.0},
    "stage1": {"epochs": 10, "cached": True, "copies": 2},
    "stage2": {"epochs": 0, "unfreeze_blocks": 1, "backbone_lr_scale": 0.1, "lr_scale": 1.0},
    "distill": None,  # {teacher: lite2 | pretrained | MODEL_DIR, weight: 1.0, mode: cosine | relational}
    "amp": "auto",  # bfloat16 autocast on CUDA; off on CPU
    "channels_last": True,
    "augment": {
        "crop_scale": [0.5, 1.0],
        "flip": 0.5,
        "color": 0.3,
        "background": 0.5,  # probability of pasting a cut-out item on a real photo
        "mask": "auto",  # auto: only clean white/black backgrounds; grabcut: any photo (slow)
        "background_folder": None,  # default: scikit-image's real photos
    },
}
# Components given whole ({name, args}) rather than merged key by key.
_WHOLE = ("loss", "miner", "optimizer", "loss_optimizer", "distill", "class_weights", "head", "pooling")
DISTILL_KEYS = {"teacher", "weight", "mode"}
CHECKPOINT_FILE = "checkpoint.pt"


class ConfigError(ValueError):
    """A config key or value that does not exist or does not fit."""


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        where = f"{path}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(base)}")
        if isinstance(base[k], dict) and isinstance(v, dict) and k not in _WHOLE:
            out[k] = _merge(base[k], v, where + ".")
        else:
            out[k] = v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    for layer in _config_chain(path) if path else []:
        cfg = _merge(cfg, layer)
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
    _check(cfg)
    return cfg


def _config_chain(path: str | Path, seen: tuple = ()) -> list[dict]:
    """The file's layers, base first: a config may start from another with ``base: other.yaml`` (relative path)."""
    p = Path(path).resolve()
    if p in seen:
        raise ConfigError(f"{path}: base configs form a loop ({' -> '.join(str(s) for s in (*seen, p))})")
    with open(p, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    return (_config_chain(p.parent / base, (*seen, p)) if base else []) + [data]


def _check(cfg: dict[str, Any]) -> None:
    d = cfg.get("distill")
    if d is not None:
        if not isinstance(d, dict) or "teacher" not in d or set(d) - DISTILL_KEYS:
            raise ConfigError(f"distill must be {{teacher, weight, mode}}, got {d!r}")
        if d.get("mode", "cosine") not in EmbeddingDistillation.MODES:
            raise ConfigError(f"distill.mode {d['mode']!r}; valid: {', '.join(EmbeddingDistillation.MODES)}")
    cw = cfg.get("class_weights")
    if cw is not None and (not isinstance(cw, dict) or set(cw) != {"power"}):
        raise ConfigError(f"class_weights must be {{power: P}}, got {cw!r}")
    if cfg["amp"] not in ("auto", True, False):
        raise ConfigError(f"amp {cfg['amp']!r}; valid: auto, true, false")
    for st in ("stage1", "stage2"):
        if not isinstance(cfg[st]["epochs"], int) or cfg[st]["epochs"] < 0:
            raise ConfigError(f"{st}.epochs must be a non-negative integer, got {cfg[st]['epochs']!r}")


def config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_classes(items: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Class-disjoint (train, validation) item sets."""
    rng = np.random.default_rng(seed)
    order = [items[i] for i in rng.permutation(len(items))]
    n_val = max(1, int(round(fraction * len(items)))) if fraction > 0 else 0
    return set(order[n_val:]), set(order[:n_val])


def recall_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out Recall@1 among the given embeddings."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return float((labels[s.argmax(axis=1)] == labels).mean())


def validation_recall(emb: np.ndarray, labels: np.ndarray, is_gallery: np.ndarray) -> float:
    """Recall@1 of the validation classes, as enrollment will use the model.

    With ``role=gallery`` rows (e.g. catalog images) the photos are matched against those alone,
    one-shot, which is far harder and more telling than leave-one-out among photos (near-duplicate
    neighbours make that saturate); without them, leave-one-out.
    """
    if not is_gallery.any() or is_gallery.all():
        return recall_at_1(emb, labels)
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    g, q = np.flatnonzero(is_gallery), np.flatnonzero(~is_gallery)
    best = (e[q] @ e[g].T).argmax(axis=1)
    return float((labels[g][best] == labels[q]).mean())


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


# ---------------------------------------------------------------------------------------- parallel


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def setup_distributed() -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


# ---------------------------------------------------------------------------------------- model parts


def backbone_units(model: EmbeddingModel) -> list[torch.nn.Module]:
    """The backbone's blocks from input to output, as ``unfreeze_blocks`` counts them.

    timm EfficientNet/MobileNet-style bodies: the stem, each stage of ``blocks``, then the final
    conv + BN as one unit. Other bodies: their top-level children that hold parameters.
    """
    body = model.backbone.body
    if hasattr(body, "blocks"):
        names = [n for n, _ in body.named_children()]
        i = names.index("blocks")
        pre = [
            c for n, c in body.named_children() if names.index(n) < i and any(True for _ in c.parameters())
        ]
        post = [
            c for n, c in body.named_children() if names.index(n) > i and any(True for _ in c.parameters())
        ]
        units = [torch.nn.ModuleList(pre)] if pre else []
        units += list(body.blocks)
        if post:
            units.append(torch.nn.ModuleList(post))
        return units
    return [c for c in body.children() if any(True for _ in c.parameters())]


def freeze_backbone(model: EmbeddingModel, unfreeze_blocks: int) -> list[torch.nn.Parameter]:
    """Freeze the backbone but its top ``unfreeze_blocks`` units; returns the trainable backbone parameters."""
    units = backbone_units(model)
    if unfreeze_blocks > len(units):
        raise ConfigError(f"stage2.unfreeze_blocks {unfreeze_blocks}: the backbone has {len(units)} blocks")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    trainable = units[len(units) - unfreeze_blocks :] if unfreeze_blocks else []
    for u in trainable:
        for p in u.parameters():
            p.requires_grad_(True)
    return [p for p in model.backbone.parameters() if p.requires_grad]


def set_train_mode(model: EmbeddingModel) -> None:
    """Head (and pooling) in train mode; backbone modules train only where they have trainable parameters."""
    model.train()
    for m in model.backbone.modules():
        own = list(m.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            m.eval()  # frozen BatchNorm keeps its pretrained running statistics
    if not any(p.requires_grad for p in model.backbone.parameters()):
        model.backbone.eval()


class Teacher(torch.nn.Module):
    """A frozen embedding model whose embeddings the student is pulled toward.

    Images arrive preprocessed for the student; they are mapped back to [0, 1], resized and
    renormalised for the teacher when the two differ in input size or normalisation.
    """

    def __init__(self, model: EmbeddingModel, student_preprocess):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        s, t = student_preprocess, model.preprocess
        self.size = t.input_size if t.input_size != s.input_size else None
        self.register_buffer("s_mean", torch.tensor(s.mean).view(1, 3, 1, 1))
        self.register_buffer("s_std", torch.tensor(s.std).view(1, 3, 1, 1))
        self.register_buffer("t_mean", torch.tensor(t.mean).view(1, 3, 1, 1))
        self.register_buffer("t_std", torch.tensor(t.std).view(1, 3, 1, 1))
        self.same_norm = tuple(s.mean) == tuple(t.mean) and tuple(s.std) == tuple(t.std)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # always eval

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same_norm:
            x = ((x * self.s_std + self.s_mean) - self.t_mean) / self.t_std
        if self.size is not None:
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return self.model(x)


def build_teacher(cfg: dict[str, Any], student: EmbeddingModel) -> Teacher | None:
    d = cfg.get("distill")
    if not d:
        return None
    spec = d["teacher"]
    teacher = copy.deepcopy(student) if spec == "pretrained" else load_model(spec)
    return Teacher(teacher, student.preprocess)


class Objective(torch.nn.Module):
    """Model + metric loss (+ distillation) as one module, so DDP all-reduces every trainable gradient."""

    def __init__(
        self, model: EmbeddingModel, loss_fn, miner, distill: EmbeddingDistillation | None, weight: float
    ):
        super().__init__()
        self.model, self.loss_fn, self.miner = model, loss_fn, miner
        self.distill, self.distill_weight = distill, weight

    def forward(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cached: bool):
        emb = self.model.embed_features(x) if cached else self.model(x)
        emb = emb.float()
        metric = self.loss_fn(emb, y, self.miner(emb, y)) if self.miner is not None else self.loss_fn(emb, y)
        if self.distill is None or target is None:
            return metric, metric.detach(), torch.zeros(())
        d = self.distill(emb, target)
        return metric + self.distill_weight * d, metric.detach(), d.detach()


def _optimizer(component: dict, params) -> torch.optim.Optimizer:
    name, args = component["name"], dict(component.get("args") or {})
    cls = getattr(torch.optim, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"unknown optimizer {name!r} in torch.optim")
    return cls(params, **args)


def warmup_cosine(total_steps: int, warmup_steps: int, min_scale: float):
    """LR multiplier: linear warmup to 1, then cosine down to ``min_scale`` at ``total_steps``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_scale + (1 - min_scale) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


# ---------------------------------------------------------------------------------------- feature cache


def cache_features(
    model: EmbeddingModel,
    manifest: Manifest,
    rows: list[ManifestRow],
    copies: int,
    augment: dict,
    seed: int,
    *,
    teacher: Teacher | None = None,
    cache_dir: Path | None = None,
    dist: Dist | None = None,
    num_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """Pooled backbone features (and teacher embeddings) of a clean copy plus ``copies`` augmented ones.

    Returns ``(features, item ids, teacher embeddings or None, skipped (path, reason))``. With
    ``cache_dir`` the arrays are stored under a key of everything they depend on and reused by
    later runs and by ``--resume``. Under DDP each rank embeds a share and all gather.
    """
    from ..models.embed import embed_paths

    dist = dist or Dist()
    key = hashlib.sha256(
        json.dumps(
            [_pooled_key(model), None if teacher is None else teacher.model.fingerprint, copies, augment, seed,
             [(manifest.resolve(r), r.item_id, r.bbox) for r in rows]],
            sort_keys=True, default=str,
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    files = {n: cache_dir / f"{key}.{n}.npy" for n in ("x", "y", "t")} if cache_dir else {}
    if files and files["x"].is_file() and files["y"].is_file():
        t = np.load(files["t"]) if files["t"].is_file() else None
        skipped = json.loads((cache_dir / f"{key}.skipped.json").read_text())
        return np.load(files["x"]), np.load(files["y"]), t, [tuple(s) for s in skipped]

    mine = list(range(dist.rank, len(rows), dist.world_size))
    paths = [manifest.resolve(rows[i]) for i in mine]
    net = _CacheNet(model, teacher)
    feats, tfeats, labels, skipped = [], [], [], []
    for c in range(copies + 1):
        aug = make_augment(augment, seed * 1000 + c + 7919 * dist.rank)

        def view(rgb: np.ndarray, _aug=aug, _clean=c == 0) -> list[np.ndarray]:
            return [rgb] if _clean else [_aug(rgb)]

        res = embed_paths(
            net, paths, bboxes=[rows[i].bbox for i in mine], view_fn=view, desc=f"features copy {c}",
            progress=dist.main, num_workers=num_workers,
        )  # fmt: skip
        out = res.view_embeddings
        feats.append(out[:, : net.feat_dim])
        if teacher is not None:
            tfeats.append(out[:, net.feat_dim :])
        labels.append(np.array([rows[mine[i]].item_id for i in res.indices]))
        if c == 0:
            skipped = [(str(paths[i]), msg) for i, msg in res.failures]
    x, y = np.concatenate(feats), np.concatenate(labels)
    t = np.concatenate(tfeats) if tfeats else None
    if dist.world_size > 1:
        gathered: list = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (x, y, t, skipped))
        x = np.concatenate([g[0] for g in gathered])
        y = np.concatenate([g[1] for g in gathered])
        t = np.concatenate([g[2] for g in gathered]) if t is not None else None
        skipped = [s for g in gathered for s in g[3]]
    if files and dist.main:
        for name, arr in (("x", x), ("y", y), ("t", t)):
            if arr is not None:
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                write_bytes_atomic(files[name], buf.getvalue())
        write_text_atomic(cache_dir / f"{key}.skipped.json", json.dumps(skipped))
    return x, y, t, skipped


def _pooled_key(model: EmbeddingModel) -> str:
    """What pooled features depend on: backbone weights, pooling and preprocessing (not the head)."""
    h = hashlib.sha256(
        json.dumps([model.config["pooling"], model.preprocess.to_dict()], sort_keys=True).encode()
    )
    for name, t in sorted({**model.backbone.state_dict(), **model.pool.state_dict()}.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _CacheNet(torch.nn.Module):
    """Pooled features (no head, no normalisation), with the teacher's embedding appended when distilling."""

    def __init__(self, model: EmbeddingModel, teacher: Teacher | None):
        super().__init__()
        self.inner, self.teacher = model, teacher
        self.preprocess = model.preprocess
        self.feat_dim = model.backbone.feat_dim
        self.embedding_dim = self.feat_dim + (teacher.model.embedding_dim if teacher is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.inner.pooled_features(x)
        return f if self.teacher is None else torch.cat([f, self.teacher(x)], dim=1)


# ---------------------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """What a checkpoint holds besides tensors: where the run is and what it has seen."""

    stage: int = 1
    epoch: int = 0  # epochs completed within ``stage``
    best: dict[str, Any] = field(default_factory=dict)  # {val_recall_at_1, stage, epoch}
    log: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Trainer:
    """One training run: ``build`` once, then ``fit`` runs the stages, epoch by epoch (``train_one_epoch``)."""

    def __init__(
        self, cfg: dict[str, Any], manifest: Manifest, out_dir: str | Path, *, progress: bool = True
    ):
        self.cfg, self.manifest, self.out = cfg, manifest, Path(out_dir)
        self.progress = progress
        self.dist = setup_distributed()

    # -- build
    def build(self, resume: bool = False) -> None:
        cfg = self.cfg
        ckpt_path = self.out / CHECKPOINT_FILE
        if ckpt_path.exists() and not resume:
            raise ConfigError(
                f"{self.out} already holds a run ({CHECKPOINT_FILE}); pass --resume or another --out"
            )
        torch.manual_seed(cfg["seed"])
        rows = [r for r in self.manifest.rows if r.item_id and r.split in ("", "train", "val")]
        if not rows:
            raise ConfigError(f"{self.manifest.source}: no usable training rows (split empty, train or val)")
        items = sorted({r.item_id for r in rows})
        self.train_items, self.val_items = split_classes(items, cfg["data"]["val_fraction"], cfg["seed"])
        self.tr_rows = [r for r in rows if r.item_id in self.train_items]
        self.va_rows = [r for r in rows if r.item_id in self.val_items]
        self.classes = {c: i for i, c in enumerate(sorted(self.train_items))}
        m, bs = cfg["sampler"]["m"], cfg["sampler"]["batch_size"]
        if bs % m or bs // m > len(self.classes):
            raise ConfigError(
                f"sampler.batch_size {bs} must be a multiple of sampler.m {m} and at most m x classes = "
                f"{m * len(self.classes)}"
            )
        self.model = build_model(dict(cfg["model"])).to(self.dist.device)
        self.teacher = build_teacher(cfg, self.model)
        if self.teacher is not None:
            self.teacher.to(self.dist.device)
        labels = np.array([self.classes[r.item_id] for r in self.tr_rows])
        try:
            self.loss_fn = build_loss(
                cfg, num_classes=len(self.classes), embedding_size=self.model.embedding_dim, labels=labels
            ).to(self.dist.device)
            self.miner = build_miner(cfg.get("miner"))
            d = cfg.get("distill")
            self.distill = EmbeddingDistillation(d.get("mode", "cosine")) if d else None
        except LossConfigError as e:
            raise ConfigError(str(e)) from None
        self.objective = Objective(
            self.model,
            self.loss_fn,
            self.miner,
            self.distill,
            float((cfg.get("distill") or {}).get("weight", 1.0)),
        )
        self.amp = cfg["amp"] is True or (cfg["amp"] == "auto" and self.dist.device.type == "cuda")
        if cfg["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.state = RunState()
        self._ckpt = None
        if resume and ckpt_path.exists():
            self._ckpt = load_checkpoint(ckpt_path, cfg)
            self.model.load_state_dict(self._ckpt["model"])
            self.loss_fn.load_state_dict(self._ckpt["loss"])
            self.state = RunState(**json.loads(self._ckpt["state"]))
            self.best_state = self._ckpt["best_model"]
        else:
            self.best_state = None

    # -- stages
    def fit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.cfg
        if not self.state.log:
            r1 = self.validate(use_cache=cfg["stage1"]["cached"] and cfg["stage1"]["epochs"] > 0)
            self._record(0, 0, {"loss": float("nan"), "lr": 0.0, "val_recall_at_1": r1, "images_per_second": 0.0,
                                "seconds": 0.0, "metric_loss": float("nan"), "distill_loss": float("nan")})  # fmt: skip
        for stage in (1, 2):
            epochs = cfg[f"stage{stage}"]["epochs"]
            if (
                stage < self.state.stage
                or epochs == 0
                or (stage == self.state.stage and self.state.epoch >= epochs)
            ):
                continue
            if stage > self.state.stage:
                self.state.stage, self.state.epoch = stage, 0
            self.run_stage(stage)
        return self.finish(time.perf_counter() - t0)

    def run_stage(self, stage: int) -> None:
        cfg, sc = self.cfg, self.cfg[f"stage{stage}"]
        cached = stage == 1 and sc["cached"]
        if stage == 2 and self.state.epoch == 0 and self.best_state is not None:
            self.model.load_state_dict(self.best_state)  # fine-tune from the best head, not the last
        unfreeze = sc["unfreeze_blocks"] if stage == 2 else 0
        backbone_params = freeze_backbone(self.model, unfreeze)
        lr_scale = sc.get("lr_scale", 1.0)
        head_params = list(self.model.head.parameters()) + list(self.model.pool.parameters())
        base_lr = cfg["optimizer"]["args"].get("lr", 1e-3) * lr_scale
        groups = [{"params": head_params, "lr": base_lr}]
        if backbone_params:
            groups.append({"params": backbone_params, "lr": base_lr * sc["backbone_lr_scale"]})
        opt = _optimizer(
            {"name": cfg["optimizer"]["name"], "args": {**cfg["optimizer"]["args"], "lr": base_lr}}, groups
        )
        loss_params = list(self.loss_fn.parameters())
        loss_opt = _optimizer(cfg["loss_optimizer"], loss_params) if loss_params else None
        if cached:
            x, y, t = self._cached_data()
            loader = self._loader(
                y, torch.utils.data.TensorDataset(*([x, y] + ([t] if t is not None else []))), 0
            )
        else:
            self._set_center(None)
            loader = self._stream_loader()
        steps = len(loader.batch_sampler)
        total = steps * sc["epochs"]
        sched_fn = warmup_cosine(
            total, int(cfg["schedule"]["warmup_epochs"] * steps), cfg["schedule"]["min_lr_scale"]
        )
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, sched_fn) for o in (opt, loss_opt) if o is not None]
        if self._ckpt is not None and self._ckpt.get("stage") == stage:  # resuming inside this stage
            opt.load_state_dict(self._ckpt["opt"])
            if loss_opt is not None and "loss_opt" in self._ckpt:
                loss_opt.load_state_dict(self._ckpt["loss_opt"])
            for s, sd in zip(scheds, self._ckpt["scheds"], strict=False):
                s.load_state_dict(sd)
        self._ckpt = None
        objective = self.objective
        if self.dist.world_size > 1:
            objective = torch.nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None,
                find_unused_parameters=False,
            )  # fmt: skip
        for epoch in range(self.state.epoch + 1, sc["epochs"] + 1):
            stats = self.train_one_epoch(objective, loader, opt, loss_opt, scheds, cached, stage, epoch)
            if self.dist.world_size > 1:  # BatchNorm running statistics drift per rank: take rank 0's
                for b in self.model.buffers():
                    torch.distributed.broadcast(b, 0)
            stats["val_recall_at_1"] = self.validate(use_cache=cached)
            self.state.epoch = epoch
            self._record(stage, epoch, stats)
            self.save_checkpoint(stage, opt, loss_opt, scheds)

    def _loader(self, labels, dataset, num_workers: int, **kw) -> torch.utils.data.DataLoader:
        s = self.cfg["sampler"]
        sampler = BalancedBatchSampler(
            np.asarray(labels), s["m"], s["batch_size"], per_class=s["per_class"], seed=self.cfg["seed"],
            rank=self.dist.rank, world_size=self.dist.world_size,
        )  # fmt: skip
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, **kw)

    def _cached_data(self):
        cfg = self.cfg
        cache_dir = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else self.out / "cache"
        # The "pretrained" teacher is the student before training: its embeddings follow from the cached
        # pooled features, so the plain feature cache serves (and is shared with runs without distillation).
        from_features = self.teacher is not None and cfg["distill"]["teacher"] == "pretrained"
        x, y, t, skipped = cache_features(
            self.model, self.manifest, self.tr_rows, cfg["stage1"]["copies"], cfg["augment"], cfg["seed"],
            teacher=None if from_features else self.teacher, cache_dir=cache_dir, dist=self.dist,
            num_workers=cfg["data"]["num_workers"],
        )  # fmt: skip
        self._set_center(torch.from_numpy(x))
        if from_features:
            with torch.no_grad():
                t = torch.cat(
                    [self.teacher.model.embed_features(c) for c in torch.from_numpy(x).split(4096)]
                ).numpy()
        self._note_skipped(skipped)
        y = torch.tensor([self.classes[c] for c in y])
        return torch.from_numpy(x), y, (torch.from_numpy(t) if t is not None else None)

    def _set_center(self, feats: torch.Tensor | None) -> None:
        """A centring head gets the mean pooled feature of the training photos, once, before training."""
        head = self.model.head
        if not getattr(head, "center", False) or self.state.log[1:]:
            return
        if feats is None:  # streaming: the clean training photos, embedded once
            from ..models.embed import embed_paths

            rows = self.tr_rows[:: max(1, len(self.tr_rows) // 2000)]
            res = embed_paths(_CacheNet(self.model, None), [self.manifest.resolve(r) for r in rows],
                              bboxes=[r.bbox for r in rows], num_workers=self.cfg["data"]["num_workers"])  # fmt: skip
            feats = torch.from_numpy(res.embeddings)
        with torch.no_grad():
            head.mean.copy_(feats.float().mean(0).to(head.mean.device))
        if self.teacher is not None and self.cfg["distill"]["teacher"] == "pretrained":
            self.teacher.model.head.mean.copy_(head.mean)  # the starting point, centred alike

    def _stream_loader(self) -> torch.utils.data.DataLoader:
        from ..models.embed import default_num_workers

        rows = self.tr_rows
        ds = TrainImages(
            [str(self.manifest.resolve(r)) for r in rows], np.array([self.classes[r.item_id] for r in rows]),
            [r.bbox for r in rows], self.model.preprocess, self.cfg["augment"], self.cfg["seed"] + 7919 * self.dist.rank,
        )  # fmt: skip
        nw = self.cfg["data"]["num_workers"]
        nw = default_num_workers() if nw is None else nw
        return self._loader(
            ds.labels, ds, nw, collate_fn=_collate_train, worker_init_fn=_worker_init if nw else None,
            pin_memory=self.dist.device.type == "cuda",
        )  # fmt: skip

    def train_one_epoch(
        self, objective, loader, opt, loss_opt, scheds, cached: bool, stage: int, epoch: int
    ) -> dict:
        from tqdm import tqdm

        loader.batch_sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "epoch"):
            loader.dataset.epoch = epoch
        set_train_mode(self.model)
        dev = self.dist.device
        t_ep = time.perf_counter()
        total = metric_sum = distill_sum = 0.0
        n = 0
        bar = tqdm(
            loader,
            desc=f"stage {stage} epoch {epoch}",
            leave=False,
            disable=not (self.progress and self.dist.main),
        )
        for batch in bar:
            if cached:
                xb, yb, tb = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
            else:
                xb, yb, bad = batch
                self._note_skipped([(loader.dataset.paths[i], e) for i, e in bad])
                if xb is None:
                    continue
                tb = None
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            if not cached and self.cfg["channels_last"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
                if not cached and self.teacher is not None:
                    tb = self.teacher(xb)
                loss, metric, dl = objective(xb, yb, None if tb is None else tb.to(dev), cached)
            opt.zero_grad(set_to_none=True)
            if loss_opt is not None:
                loss_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if loss_opt is not None:
                loss_opt.step()
            for s in scheds:
                s.step()
            total += float(loss.detach()) * len(yb)
            metric_sum += float(metric) * len(yb)
            distill_sum += float(dl) * len(yb)
            n += len(yb)
            bar.set_postfix(loss=f"{total / n:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        seconds = time.perf_counter() - t_ep
        return {
            "loss": total / max(1, n),
            "metric_loss": metric_sum / max(1, n),
            "distill_loss": distill_sum / max(1, n) if self.distill is not None else float("nan"),
            "lr": opt.param_groups[0]["lr"],
            "images_per_second": n * self.dist.world_size / max(seconds, 1e-9),
            "seconds": seconds,
        }

    @torch.no_grad()
    def validate(self, use_cache: bool) -> float:
        """Recall@1 among the validation classes' clean photos (on rank 0; the others return NaN).

        ``use_cache``: through the head only, on cached pooled features (valid while the backbone
        is frozen); otherwise through the whole model.
        """
        if not self.va_rows or not self.dist.main:
            self.dist.barrier()
            return float("nan")
        self.model.eval()
        from ..models.embed import embed_paths

        paths = [self.manifest.resolve(r) for r in self.va_rows]
        bboxes = [r.bbox for r in self.va_rows]
        nw = self.cfg["data"]["num_workers"]
        if use_cache:
            if getattr(self, "_val_cache", None) is None:
                res = embed_paths(_CacheNet(self.model, None), paths, bboxes=bboxes, num_workers=nw)
                self._val_cache = (torch.from_numpy(res.embeddings), res.indices, res.failures)
            x, idx, failures = self._val_cache
            e = self.model.embed_features(x.to(self.dist.device)).float().cpu().numpy()
        else:
            res = embed_paths(
                self.model, paths, bboxes=bboxes, num_workers=nw, channels_last=self.cfg["channels_last"]
            )
            e, idx, failures = res.embeddings, res.indices, res.failures
        self._note_skipped([(str(paths[i]), m) for i, m in failures])
        y = np.array([self.va_rows[i].item_id for i in idx])
        gallery = np.array([self.va_rows[i].role == "gallery" for i in idx])
        self.dist.barrier()
        return validation_recall(e, y, gallery)

    # -- bookkeeping
    def _note_skipped(self, items) -> None:
        known = {s[0] for s in self.state.skipped}
        for path, msg in items:
            if str(path) not in known:
                self.state.skipped.append((str(path), msg))
                known.add(str(path))
                if self.dist.main:
                    print(f"skipped {path}: {msg}")

    def _record(self, stage: int, epoch: int, stats: dict) -> None:
        row = {"stage": stage, "epoch": epoch, **{k: float(v) for k, v in stats.items()}}
        self.state.log.append(row)
        r1 = row["val_recall_at_1"]
        best = self.state.best.get("val_recall_at_1")
        if best is None or (not math.isnan(r1) and (math.isnan(best) or r1 > best)):
            self.state.best = {"val_recall_at_1": r1, "stage": stage, "epoch": epoch}
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.dist.main and epoch and self.progress:
            print(
                f"stage {stage} epoch {epoch}/{self.cfg[f'stage{stage}']['epochs']}: loss {row['loss']:.4f} "
                f"lr {row['lr']:.2e} val R@1 {r1:.4f} {row['images_per_second']:.1f} img/s ({row['seconds']:.1f} s)",
                flush=True,
            )

    def save_checkpoint(self, stage: int, opt, loss_opt, scheds) -> None:
        """One file, written to a temp name, fsynced, renamed: a crash leaves the previous checkpoint whole."""
        if not self.dist.main:
            return
        ck = {
            "config_hash": config_hash(self.cfg),
            "stage": stage,
            "state": json.dumps(self.state.__dict__),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "loss": {k: v.detach().cpu() for k, v in self.loss_fn.state_dict().items()},
            "best_model": self.best_state,
            "opt": opt.state_dict(),
            "scheds": [s.state_dict() for s in scheds],
        }
        if loss_opt is not None:
            ck["loss_opt"] = loss_opt.state_dict()
        buf = io.BytesIO()
        torch.save(ck, buf)
        write_bytes_atomic(self.out / CHECKPOINT_FILE, buf.getvalue())
        self._write_log()

    def _write_log(self) -> None:
        log = self.state.log
        cols = list(dict.fromkeys(k for row in log for k in row))
        write_csv_atomic(self.out / "log.csv", cols, [[row.get(c, "") for c in cols] for row in log])
        write_text_atomic(self.out / "log.json", json.dumps(log, indent=1))

    def finish(self, seconds: float) -> dict[str, Any]:
        in_sync = True
        if self.dist.world_size > 1:  # DDP must have kept every rank's weights identical
            hashes: list = [None] * self.dist.world_size
            torch.distributed.all_gather_object(hashes, self.model.weights_sha256())
            in_sync = len(set(hashes)) == 1
        if not self.dist.main:
            return {}
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        best = self.state.best
        self.model.save(self.out / "model", extra={"best_stage": best["stage"], "best_epoch": best["epoch"],
                                                   "val_recall_at_1": best["val_recall_at_1"]})  # fmt: skip
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
        self._write_log()
        summary = {
            "train_items": len(self.train_items),
            "val_items": len(self.val_items),
            "train_images": len(self.tr_rows),
            "world_size": self.dist.world_size,
            "ranks_weights_equal": in_sync,
            "best_stage": best["stage"],
            "best_epoch": best["epoch"],
            "best_val_recall_at_1": best["val_recall_at_1"],
            "untrained_val_recall_at_1": self.state.log[0]["val_recall_at_1"],
            "beats_untrained": bool(best["stage"] > 0),
            "epochs_run": len(self.state.log) - 1,
            "seconds": seconds,
            "skipped": [{"path": p, "reason": r} for p, r in self.state.skipped],
            "model_dir": str(self.out / "model"),
        }
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary


def load_checkpoint(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickle code runs) and check it belongs to ``cfg``."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if ck.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            f"{path}: written by another config (hash {ck.get('config_hash')}, this one {config_hash(cfg)}); "
            "resume with the run's own config.yaml and overrides"
        )
    return ck


def run_training(
    config: str | None,
    overrides: list[str],
    manifest: str,
    data_root: str | None,
    out_dir: str,
    *,
    resume: bool = False,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Entry point of ``tools/train.py``."""
    cfg = load_config(config, overrides)
    man = load_manifest(manifest, data_root, allow_outside_root=allow_outside_root)
    if man.errors:
        import sys

        print(man.error_report(), file=sys.stderr)
    trainer = Trainer(cfg, man, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer.build(resume=resume)
    trainer._note_skipped((f"{manifest}:{e.line}", e.message) for e in man.errors)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.world_size > 1 and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()
