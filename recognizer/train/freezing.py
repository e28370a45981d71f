"""Which parts of the model train: the head always, the backbone's top blocks in stage 2.

Stage 1 freezes the whole backbone; stage 2 unfreezes its top ``stage2.unfreeze_blocks``
blocks. BatchNorm of frozen blocks stays in eval mode, so its pretrained running statistics
are not updated by training batches while its weights are frozen.
"""

from __future__ import annotations

import torch

from ..models.model import EmbeddingModel
from .config import ConfigError


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
