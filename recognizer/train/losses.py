"""Loss objects for training: pytorch-metric-learning's losses and miners as they are, plus
what it lacks, embedding-space distillation from a teacher model.

Losses are built from ``{name, args}`` config components; runtime values (number of classes,
embedding size, class weights) are joined in here, at build time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Losses that own a class-weight matrix (num_classes x embedding_size) and so need those two at build time.
LOSSES_WITH_CLASSES = (
    "ArcFaceLoss",
    "SubCenterArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
)


class LossConfigError(ValueError):
    """A loss, miner or distillation setting that does not exist or does not fit."""


def _component(component: dict[str, Any], module, kind: str, **runtime):
    name, args = component["name"], dict(component.get("args") or {})
    cls = getattr(module, name, None)
    if cls is None or not isinstance(cls, type):
        valid = sorted(n for n in dir(module) if n[0].isupper() and isinstance(getattr(module, n), type))
        raise LossConfigError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
    try:
        return cls(**args, **runtime)
    except TypeError as e:
        raise LossConfigError(f"{kind} {name}: {e}") from None


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> torch.Tensor:
    """Per-class weights ``count ** -power``, scaled so the average *sample* weight is 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    w *= len(labels) / float((w * counts).sum())
    return torch.tensor(w, dtype=torch.float32)


def build_loss(
    cfg: dict[str, Any], *, num_classes: int, embedding_size: int, labels: np.ndarray | None = None
) -> torch.nn.Module:
    """The metric loss of ``cfg['loss']``; with ``cfg['class_weights']`` its reducer weights rare classes up.

    The reducer is pytorch-metric-learning's ``ClassWeightedReducer``; ``power`` 0.5 weights each
    sample by 1/sqrt(its class's photo count), 1.0 makes every class count equally.
    """
    from pytorch_metric_learning import losses, reducers

    runtime: dict[str, Any] = {}
    if cfg["loss"]["name"] in LOSSES_WITH_CLASSES:
        runtime = {"num_classes": num_classes, "embedding_size": embedding_size}
    cw = cfg.get("class_weights")
    if cw:
        if labels is None:
            raise LossConfigError("class_weights needs the training labels")
        runtime["reducer"] = reducers.ClassWeightedReducer(
            class_weights(labels, num_classes, float(cw["power"]))
        )
    return _component(cfg["loss"], losses, "loss", **runtime)


def build_miner(cfg: dict[str, Any] | None):
    """A pytorch-metric-learning miner from ``{name, args}``, or None."""
    if not cfg:
        return None
    from pytorch_metric_learning import miners

    return _component(cfg, miners, "miner")


class EmbeddingDistillation(torch.nn.Module):
    """Pull the student's embeddings toward a teacher's, next to the metric loss.

    ``cosine``: mean of ``1 - cos(student_i, teacher_i)``; needs equal embedding sizes.
    ``relational``: mean squared difference of the two in-batch cosine-similarity matrices;
    works across sizes and keeps the teacher's geometry (which items look alike) rather than its
    coordinates. Inputs are L2-normalised embeddings.
    """

    MODES = ("cosine", "relational")

    def __init__(self, mode: str = "cosine"):
        super().__init__()
        if mode not in self.MODES:
            raise LossConfigError(f"distill.mode {mode!r}; valid: {', '.join(self.MODES)}")
        self.mode = mode

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach().to(student.dtype)
        if self.mode == "cosine":
            if student.shape[1] != teacher.shape[1]:
                raise LossConfigError(
                    f"distill.mode cosine needs equal embedding sizes (student {student.shape[1]}, "
                    f"teacher {teacher.shape[1]}); use mode: relational"
                )
            return (1 - (F.normalize(student, dim=1) * F.normalize(teacher, dim=1)).sum(1)).mean()
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher, dim=1)
        return F.mse_loss(s @ s.T, t @ t.T)
