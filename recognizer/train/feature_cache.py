"""The stage-1 feature cache: pooled backbone features, computed once, reused for many epochs.

While the backbone is frozen only the head trains, and the head sees nothing but pooled
features. ``stage1.cached: true`` (the CPU fast path) computes them once, for a clean copy and
``stage1.copies`` augmented copies of each image, so each head epoch takes seconds;
``cached: false`` streams augmented images instead (the GPU path, where fresh augmentation
every epoch pays). The cache is keyed by everything the features depend on and kept on disk,
so later runs and ``--resume`` reuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..data.manifest import Manifest, ManifestRow
from ..fileio import write_bytes_atomic, write_text_atomic
from ..models.model import EmbeddingModel
from .data import make_augment
from .distill import Teacher
from .parallel import Dist


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
    net = CacheNet(model, teacher)
    feats, tfeats, labels, order, skipped = [], [], [], [], []
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
        order.append(np.array([c * len(rows) + mine[i] for i in res.indices], dtype=np.int64))
        if c == 0:
            skipped = [(str(paths[i]), msg) for i, msg in res.failures]
    x, y = np.concatenate(feats), np.concatenate(labels)
    t = np.concatenate(tfeats) if tfeats else None
    if dist.world_size > 1:  # gathered in one process's order (copy by copy, rows in order): same batches
        gathered: list = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (x, y, t, skipped, np.concatenate(order)))
        perm = np.argsort(np.concatenate([g[4] for g in gathered]), kind="stable")
        x = np.concatenate([g[0] for g in gathered])[perm]
        y = np.concatenate([g[1] for g in gathered])[perm]
        t = np.concatenate([g[2] for g in gathered])[perm] if t is not None else None
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


class CacheNet(torch.nn.Module):
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
