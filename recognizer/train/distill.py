"""The teacher for embedding distillation: a frozen model whose embeddings the student follows.

``distill.teacher`` is a model folder, a backbone name, or ``pretrained`` (a frozen copy of the
student as it starts). The loss that compares the two is ``losses.EmbeddingDistillation``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..models.model import EmbeddingModel, load_model


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
    """The config's teacher (``distill.teacher``), or None without distillation."""
    d = cfg.get("distill")
    if not d:
        return None
    spec = d["teacher"]
    teacher = copy.deepcopy(student) if spec == "pretrained" else load_model(spec)
    return Teacher(teacher, student.preprocess)
