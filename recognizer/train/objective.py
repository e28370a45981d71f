"""What a training step minimises, and how: the objective module, optimisers and LR schedule.

The metric loss, its miner and its reducer are pytorch-metric-learning's objects; distillation
is added with its weight. The head (and pooling) and any unfrozen backbone blocks share one
optimiser, the backbone with its own, smaller learning rate (``backbone_lr_scale`` x the
head's); a loss with its own class weights (ArcFace and kin) gets a second one
(``loss_optimizer``). Each stage warms up linearly and decays with a cosine, per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.model import EmbeddingModel
from .config import ConfigError
from .losses import EmbeddingDistillation


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


def build_optimizer(component: dict, params) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimiser from ``{name, args}``."""
    name, args = component["name"], dict(component.get("args") or {})
    cls = getattr(torch.optim, name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"unknown optimizer {name!r} in torch.optim")
    return cls(params, **args)


def stage_optimizers(
    cfg: dict[str, Any], sc: dict[str, Any], model: EmbeddingModel, loss_fn, backbone_params: list
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """``(model optimiser, loss optimiser or None)`` for a stage whose config is ``sc``.

    The head and pooling train at the optimiser's ``lr`` x the stage's ``lr_scale``; the
    trainable backbone parameters at ``backbone_lr_scale`` x that.
    """
    lr_scale = sc.get("lr_scale", 1.0)
    head_params = list(model.head.parameters()) + list(model.pool.parameters())
    base_lr = cfg["optimizer"]["args"].get("lr", 1e-3) * lr_scale
    groups = [{"params": head_params, "lr": base_lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": base_lr * sc["backbone_lr_scale"]})
    opt = build_optimizer(
        {"name": cfg["optimizer"]["name"], "args": {**cfg["optimizer"]["args"], "lr": base_lr}}, groups
    )
    loss_params = list(loss_fn.parameters())
    loss_opt = build_optimizer(cfg["loss_optimizer"], loss_params) if loss_params else None
    return opt, loss_opt


def warmup_cosine(total_steps: int, warmup_steps: int, min_scale: float):
    """LR multiplier: linear warmup to 1, then cosine down to ``min_scale`` at ``total_steps``."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_scale + (1 - min_scale) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def stage_schedulers(
    cfg: dict[str, Any], steps_per_epoch: int, epochs: int, *optimizers
) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One warmup-cosine schedule, stepped per batch, for each optimiser that is not None."""
    sched_fn = warmup_cosine(
        steps_per_epoch * epochs, int(cfg["schedule"]["warmup_epochs"] * steps_per_epoch),
        cfg["schedule"]["min_lr_scale"],
    )  # fmt: skip
    return [torch.optim.lr_scheduler.LambdaLR(o, sched_fn) for o in optimizers if o is not None]


def optimizer_step(loss: torch.Tensor, opt, loss_opt, scheds) -> None:
    """Backpropagate ``loss``, step both optimisers, then the schedules."""
    opt.zero_grad(set_to_none=True)
    if loss_opt is not None:
        loss_opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if loss_opt is not None:
        loss_opt.step()
    for s in scheds:
        s.step()
