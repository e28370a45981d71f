"""The trunk cache: the frozen backbone's feature map *before* its top block, computed once.

Stage 2 of the CPU recipe trains only the top of the backbone (EfficientNet-Lite's last block,
its 1x1 head convolution and BatchNorm) and the embedding head. Everything below the top block
is frozen, so its output map (lite0 at 160 px: 192 x 5 x 5, 9.6 kB in float16) is computed once
per image and view, and every epoch of every run (the identity curve, background augmentation
on and off) reuses it: an epoch over 30,000 images costs the top block alone, tens of seconds
on two cores instead of the trunk's 20+ minutes.

``Trunk`` and ``TopBlock`` split one ``EmbeddingModel`` without copying weights; ``TopBlock``
applied to a cached map gives exactly what the whole model's pooled features would (tested).
Images reach the trunk through ``DataLoader`` workers that decode, render or augment them
(``ImageSource``); the trunk itself runs on ONNX Runtime when it is installed (about 2x torch's
CPU speed here, max abs difference ~4e-5), else on torch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.model import EmbeddingModel


def top_units(model: EmbeddingModel, blocks: int = 1) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(trunk modules, top modules)`` of a timm EfficientNet-style body, top = last ``blocks`` blocks + head conv."""
    body = model.backbone.body
    if not hasattr(body, "blocks") or not hasattr(body, "conv_head"):
        raise ValueError(f"backbone {model.backbone.name!r} has no blocks/conv_head to split (lite0/1/2 do)")
    n = len(body.blocks)
    if not 1 <= blocks < n:
        raise ValueError(f"top blocks must be in [1, {n - 1}], got {blocks}")
    trunk = [body.conv_stem, body.bn1, *list(body.blocks)[: n - blocks]]
    top = [*list(body.blocks)[n - blocks :], body.conv_head, body.bn2]
    return trunk, top


class Trunk(nn.Module):
    """Image batch -> feature map before the top block (shares the model's weights)."""

    def __init__(self, model: EmbeddingModel, blocks: int = 1):
        super().__init__()
        self.layers = nn.Sequential(*top_units(model, blocks)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TopBlock(nn.Module):
    """Cached trunk map -> L2-normalised embedding: the top block(s), pooling and head of ``model``."""

    def __init__(self, model: EmbeddingModel, blocks: int = 1):
        super().__init__()
        self.model = model
        self.layers = nn.Sequential(*top_units(model, blocks)[1])

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        return self.model.pool(self.layers(maps))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(self.pooled(maps))

    def trainable(self) -> list[nn.Parameter]:
        """What stage 2 trains: the top block(s) and the head."""
        return [*self.layers.parameters(), *self.model.pool.parameters(), *self.model.head.parameters()]

    def train(self, mode: bool = True) -> TopBlock:
        super().train(mode)
        self.model.backbone.eval()  # the trunk's frozen BatchNorm statistics stay put
        self.layers.train(mode)
        return self


class ImageSource(torch.utils.data.Dataset):
    """``i -> (i, V x 3 x S x S)``: ``load(i)`` gives an RGB image (decode or render), ``views`` its views.

    Runs in DataLoader workers, so decoding, rendering and augmentation overlap the trunk.
    """

    def __init__(self, n: int, load: Callable[[int], np.ndarray], preprocess, views=None):
        self.n, self.load, self.preprocess, self.views = n, load, preprocess, views

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        rgb = self.load(i)
        vs = self.views(i, rgb) if self.views is not None else [rgb]
        return i, torch.stack([self.preprocess.to_tensor(v) for v in vs])


def _collate(items):
    return [i for i, _ in items], torch.cat([t for _, t in items]), [len(t) for _, t in items]


class TrunkRunner:
    """Runs a ``Trunk`` on batches: ONNX Runtime when available (``backend="auto"``), else torch."""

    def __init__(self, trunk: Trunk, input_size: int, backend: str = "auto", threads: int | None = None):
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend {backend!r}; valid: auto, onnx, torch")
        self.trunk = trunk.eval()
        self.session = None
        if backend != "torch":
            try:
                self.session = self._onnx_session(input_size, threads)
            except ImportError:
                if backend == "onnx":
                    raise
        self.backend = "onnx" if self.session is not None else "torch"

    def _onnx_session(self, input_size: int, threads: int | None):
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trunk.onnx"
            x = torch.zeros(2, 3, input_size, input_size)
            torch.onnx.export(self.trunk, x, str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)  # fmt: skip
            so = ort.SessionOptions()
            if threads:
                so.intra_op_num_threads = threads
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, {"x": batch.numpy()})[0]
        with torch.inference_mode():
            return self.trunk(batch.contiguous(memory_format=torch.channels_last)).float().numpy()


def trunk_maps(
    runner: TrunkRunner,
    source: ImageSource,
    *,
    batch_size: int = 64,
    num_workers: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All views of all ``source`` images through the trunk: ``(float16 N_views x C x h x w, image index per view)``."""
    loader = torch.utils.data.DataLoader(
        source, batch_size=max(1, batch_size // max(1, _views_hint(source))), num_workers=num_workers,
        collate_fn=_collate, persistent_workers=False,
    )  # fmt: skip
    maps: list[np.ndarray] = []
    owner: list[int] = []
    t0, done = time.perf_counter(), 0
    for idx, batch, counts in loader:
        maps.append(runner(batch).astype(np.float16))
        owner.extend(i for i, c in zip(idx, counts, strict=True) for _ in range(c))
        done += len(idx)
        if progress is not None:
            progress(done, len(source), time.perf_counter() - t0)
    if not maps:
        return np.zeros((0, 1, 1, 1), np.float16), np.zeros(0, np.int64)
    return np.concatenate(maps), np.asarray(owner, np.int64)


def _views_hint(source: ImageSource) -> int:
    return 1 if source.views is None else getattr(source.views, "count", 1)


def embed_maps(top: TopBlock, maps: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Embeddings of cached maps through ``top`` (eval mode) -> ``N x D`` float32."""
    top.eval()
    x = torch.as_tensor(maps)
    out = []
    with torch.inference_mode():
        for chunk in x.split(batch_size):
            out.append(top(chunk.float()).numpy())
    return np.concatenate(out) if out else np.zeros((0, top.model.embedding_dim), np.float32)


def pool_by_owner(emb: np.ndarray, owner: Sequence[int]) -> np.ndarray:
    """Mean embedding of each image's views (views are consecutive), re-normalised."""
    owner = np.asarray(owner)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    sums = np.add.reduceat(emb, starts, axis=0)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
