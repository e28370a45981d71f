"""Stage 2 on cached trunk maps: the top block and head train with a metric loss; the trunk never runs.

The model starts as the off-the-shelf backbone (top block pretrained, no head). Batches come
from :class:`~recognizer.data.multisource.MultiSourceBatchSampler` (each source's share of the
batch set explicitly); the loss is pytorch-metric-learning's, built from ``{name, args}`` as in
the main trainer (``ArcFaceLoss``, ``SubCenterArcFaceLoss``, ``TripletMarginLoss`` ...). A
class-weight loss starts from the class means of the starting embeddings (so epoch 1 already
pulls photos toward their own item, not toward random directions), and the maps get one cheap
augmentation of their own: a horizontal flip. Time and peak memory are measured.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.multisource import MultiSourceBatchSampler
from ..models.model import ResidualHead, build_model
from .losses import LOSSES_WITH_CLASSES, build_loss
from .map_data import MapSet
from .trunk_cache import TopBlock, embed_maps


@dataclass
class TopTrainConfig:
    """What a cached stage-2 run needs; ``loss`` is a pytorch-metric-learning ``{name, args}``."""

    epochs: int = 4
    lr: float = 1.0e-4  # the top block: fine-tuning pretrained weights
    head_lr: float = 1.0e-3  # a residual head (pooled features): W starts at zero
    weight_decay: float = 1.0e-4
    loss: dict = field(default_factory=lambda: {"name": "ArcFaceLoss", "args": {"margin": 28.6, "scale": 64}})
    loss_lr: float = 1.0e-2
    m: int = 2
    batch_size: int = 64
    shares: dict | None = None
    flip: float = 0.5
    input_size: int = 160
    seed: int = 0
    proxy_init: bool = True


class HeadNet(torch.nn.Module):
    """Pooled features -> L2-normalised embedding through a residual head (``x + Wx``, W = 0 at start).

    The cheap end of the curve: trained on pooled features cached once (the top block frozen), so
    a 10,000-identity point costs seconds per epoch; at W = 0 it is exactly the off-the-shelf model.
    """

    def __init__(self, dim: int = 1280):
        super().__init__()
        self.head = ResidualHead(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(x), dim=-1)

    def trainable(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())


def make_net(maps: np.ndarray, input_size: int = 160) -> TopBlock | HeadNet:
    """The off-the-shelf starting point for ``maps``: a ``TopBlock`` for 4-d trunk maps, a ``HeadNet`` for pooled vectors."""
    if maps.ndim == 2:
        return HeadNet(maps.shape[1])
    return TopBlock(build_model({"backbone": "lite0", "input_size": input_size, "head": None}))


def load_top_config(path: str | None, **overrides: Any) -> TopTrainConfig:
    """A ``TopTrainConfig`` from a YAML mapping (unknown keys are refused, naming the valid ones)."""
    import dataclasses

    import yaml

    from .config import ConfigError

    data: dict[str, Any] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    valid = [f.name for f in dataclasses.fields(TopTrainConfig)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"{path or 'overrides'}: unknown key(s) {unknown}; valid: {', '.join(valid)}")
    return TopTrainConfig(**data)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux: kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_top_block(data: MapSet, cfg: TopTrainConfig, *, log=print) -> tuple[TopBlock | HeadNet, dict[str, Any]]:
    """Train lite0's top block on ``data``'s cached trunk maps (or a residual head on pooled features,
    when ``data.maps`` is 2-d); returns the trained net and run stats (time, peak RSS, loss weight size)."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    top = make_net(data.maps, cfg.input_size)
    dim = 1280 if isinstance(top, TopBlock) else data.maps.shape[1]
    names, labels = np.unique(data.items, return_inverse=True)
    sampler = MultiSourceBatchSampler(labels, data.sources, cfg.m, cfg.batch_size, shares=cfg.shares, seed=cfg.seed)
    loss_cfg = {"loss": cfg.loss, "class_weights": None}
    loss_fn = build_loss(loss_cfg, num_classes=len(names), embedding_size=dim)
    if cfg.proxy_init and cfg.loss["name"] in LOSSES_WITH_CLASSES and hasattr(loss_fn, "W"):
        _init_proxies(loss_fn, embed_maps(top, data.maps), labels, len(names))
    maps = torch.from_numpy(data.maps)
    y = torch.from_numpy(labels)
    lr = cfg.lr if isinstance(top, TopBlock) else cfg.head_lr
    opt = torch.optim.AdamW(top.trainable(), lr=lr, weight_decay=cfg.weight_decay)
    loss_params = list(loss_fn.parameters())
    loss_opt = torch.optim.SGD(loss_params, lr=cfg.loss_lr, momentum=0.9) if loss_params else None
    steps = cfg.epochs * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / max(1, steps))))
    g = torch.Generator().manual_seed(cfg.seed)
    log_rows = []
    for epoch in range(1, cfg.epochs + 1):
        t0, total, n = time.perf_counter(), 0.0, 0
        top.train()
        for batch in sampler.epoch_batches(epoch):
            idx = torch.tensor(batch)
            xb = maps[idx].float()
            if cfg.flip > 0 and xb.ndim == 4:
                flip = torch.rand(len(idx), generator=g) < cfg.flip
                xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(top(xb), y[idx])
            opt.zero_grad()
            if loss_opt is not None:
                loss_opt.zero_grad()
            loss.backward()
            opt.step()
            if loss_opt is not None:
                loss_opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        secs = time.perf_counter() - t0
        log_rows.append({"epoch": epoch, "loss": total / max(1, n), "seconds": secs, "samples_per_second": n / secs})
        log(f"epoch {epoch}/{cfg.epochs}: loss {total / max(1, n):.4f}, {n / secs:.0f} maps/s ({secs:.0f} s)")
    top.eval()
    w_mb = sum(p.numel() * p.element_size() for p in loss_params) / 2**20
    stats = {
        "identities": len(names),
        "maps": len(data),
        "sources": {s: int(len(sampler.by_source[s])) for s in sampler.sources},
        "shares": dict(zip(sampler.sources, map(float, sampler.shares), strict=True)),
        "loss": cfg.loss,
        "loss_weight_mb": w_mb,
        "epochs": log_rows,
        "train_seconds": time.perf_counter() - t_start,
        "peak_rss_mb": peak_rss_mb(),
    }
    return top, stats


def _init_proxies(loss_fn: torch.nn.Module, emb: np.ndarray, labels: np.ndarray, n: int) -> None:
    """Set each class's weight vector(s) to the class mean of the starting embeddings (PML's W is ``D x classes*k``)."""
    sums = np.zeros((n, emb.shape[1]), np.float64)
    np.add.at(sums, labels, emb)
    means = F.normalize(torch.from_numpy(sums).float(), dim=1).T  # D x n
    with torch.no_grad():
        W = loss_fn.W
        k = W.shape[1] // n
        init = means.repeat_interleave(k, dim=1) if k > 1 else means
        if k > 1:  # sub-centres: the mean plus a little noise, so they can split
            init = F.normalize(init + 0.05 * torch.randn_like(init), dim=0)
        W.copy_(init.to(W.dtype))


def top_state(top: TopBlock, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The trained top block's tensors under the backbone body's own names (``blocks.6.*``, ``conv_head.*``,
    ``bn2.*``): what ``recognizer/models/weights/items_lite0_160.safetensors`` holds."""
    body = top.model.backbone.body
    prefixes = tuple(f"{n}." for n, mod in body.named_children() if any(mod is u for u in top.layers))
    blocks = [f"blocks.{i}." for i, b in enumerate(body.blocks) if any(b is u for u in top.layers)]
    keep = prefixes + tuple(blocks)
    out = {}
    for k, v in body.state_dict().items():
        if k.startswith(keep):
            out[k] = v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous()
    return out
