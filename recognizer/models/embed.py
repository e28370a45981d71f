"""Batch embedding: the one code path from image files (or arrays) to embedding vectors.

Images are decoded and preprocessed in DataLoader workers while the main process runs
the model under ``inference_mode`` in channels_last (or, for an exported model, ONNX
Runtime: any object with ``preprocess``, ``embedding_dim`` and ``embed_batch``, see
``recognizer.models.onnx``). A file that cannot be read does not
stop the batch: its row is reported in ``failures`` with the loader's message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.imageio import ImageLoadError, crop_bbox, load_image
from ..data.manifest import Manifest, ManifestRow
from .model import EmbeddingModel
from .preprocess import Preprocess

BBox = tuple[float, float, float, float]


def default_num_workers() -> int:
    """Decoding workers: one on a 2-core machine (the model uses the cores), more on bigger ones."""
    n = os.cpu_count() or 1
    return 0 if n == 1 else min(8, max(1, n // 2))


class ImageFileDataset(Dataset):
    """Loads and preprocesses image files; a bad file yields an error message instead of raising."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        preprocess: Preprocess,
        bboxes: Sequence[BBox | None] | None = None,
        view_fn: Callable[[np.ndarray], list[np.ndarray]] | None = None,
    ):
        self.paths = [str(p) for p in paths]
        self.bboxes = list(bboxes) if bboxes is not None else [None] * len(self.paths)
        if len(self.bboxes) != len(self.paths):
            raise ValueError(f"{len(self.bboxes)} bboxes for {len(self.paths)} paths")
        self.preprocess = preprocess
        self.view_fn = view_fn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        """``(i, V x 3 x S x S views, "")``, or ``(i, None, message)`` for a bad file."""
        path = self.paths[i]
        try:
            rgb = load_image(path)
            try:
                rgb = crop_bbox(rgb, self.bboxes[i])
            except ValueError as e:
                raise ImageLoadError(path, str(e)) from None
            views = self.view_fn(rgb) if self.view_fn is not None else [rgb]
            return i, torch.stack([self.preprocess.to_tensor(v) for v in views]), ""
        except ImageLoadError as e:
            return i, None, str(e)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]):
    ok = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, err) for i, t, err in items if t is None]
    idx = [i for i, _ in ok]
    batch = torch.cat([t for _, t in ok]) if ok else None
    return idx, batch, bad, [len(t) for _, t in ok]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def forward_batch(model: EmbeddingModel, batch: torch.Tensor, *, channels_last: bool = True) -> np.ndarray:
    """Embed one preprocessed batch (``B x 3 x S x S``) -> ``B x D`` float32 numpy array."""
    dev = model_device(model)
    batch = batch.to(dev, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    # fp32 on every device: a gallery's fingerprint names the model, not the precision, so an fp16
    # (autocast) embedding must never be mixed with fp32 ones (ONNX exports are held to cosine >= 0.999).
    out = model(batch)
    return out.float().cpu().numpy()


def prepare_for_inference(model: EmbeddingModel, *, channels_last: bool = True) -> EmbeddingModel:
    """Eval mode, and channels_last memory layout (about 2x faster on CPU for these CNNs)."""
    if not isinstance(model, torch.nn.Module):  # another backend (recognizer.models.onnx): nothing to prepare
        return model
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def run_batch(model, batch: torch.Tensor, *, channels_last: bool = True) -> np.ndarray:
    """One preprocessed batch through either backend: the torch model, or an object with ``embed_batch``
    (``recognizer.models.onnx.OnnxEmbedder``) -> ``B x D`` float32."""
    if isinstance(model, torch.nn.Module):
        return forward_batch(model, batch, channels_last=channels_last)
    return model.embed_batch(batch)


@dataclass
class EmbedResult:
    """Embeddings of the images that loaded, and the ones that did not."""

    embeddings: np.ndarray  # N_ok x D, float32, L2-normalised (the mean over views, with view_fn)
    indices: np.ndarray  # positions in the input list of each embedding row
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input position, message)
    seconds: float = 0.0
    view_embeddings: np.ndarray | None = None  # with view_fn: every view's embedding, image by image
    n_views: np.ndarray | None = None  # with view_fn: views per embedded image


def embed_paths(
    model: EmbeddingModel,
    paths: Sequence[str | os.PathLike],
    *,
    bboxes: Sequence[BBox | None] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = False,
    channels_last: bool = True,
    desc: str = "embedding",
    view_fn: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> EmbedResult:
    """Embed image files in order; unreadable ones are listed in ``failures``, not raised.

    ``view_fn`` turns each decoded image into several views (query crops); all are
    embedded and the result holds their mean per image plus every view's embedding.
    """
    prepare_for_inference(model, channels_last=channels_last)
    ds = ImageFileDataset(paths, model.preprocess, bboxes, view_fn)
    workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=isinstance(model, torch.nn.Module) and model_device(model).type == "cuda",
    )
    chunks: list[np.ndarray] = []
    indices: list[int] = []
    counts: list[int] = []
    failures: list[tuple[int, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ds), desc=desc, unit="img")
    t0 = time.perf_counter()
    for idx, batch, bad, n_views in loader:
        failures.extend(bad)
        if batch is not None:
            chunks.append(run_batch(model, batch, channels_last=channels_last))
            indices.extend(idx)
            counts.extend(n_views)
        if bar is not None:
            bar.update(len(idx) + len(bad))
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    dim = model.embedding_dim
    emb = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, dim), np.float32)
    idx_arr = np.asarray(indices, dtype=np.int64)
    if view_fn is None:
        return EmbedResult(emb, idx_arr, sorted(failures), seconds)

    n = np.asarray(counts, dtype=np.int64)
    pooled = pool_view_embeddings(emb, n) if len(n) else np.zeros((0, dim), np.float32)
    return EmbedResult(pooled, idx_arr, sorted(failures), seconds, emb, n)


def embed_manifest(
    model: EmbeddingModel, manifest: Manifest, rows: Sequence[ManifestRow] | None = None, **kwargs
) -> tuple[EmbedResult, list[ManifestRow]]:
    """Embed manifest rows (all by default). Returns the result and the rows, aligned with ``result.indices``."""
    rows = list(manifest.rows if rows is None else rows)
    res = embed_paths(model, [manifest.resolve(r) for r in rows], bboxes=[r.bbox for r in rows], **kwargs)
    return res, rows


def embed_arrays(
    model: EmbeddingModel, images: Sequence[np.ndarray], *, channels_last: bool = True
) -> np.ndarray:
    """Embed in-memory RGB uint8 arrays (camera crops) as one batch -> ``N x D``."""
    if not images:
        return np.zeros((0, model.embedding_dim), np.float32)
    if getattr(model, "training", False):  # BatchNorm in train mode would use (and update) batch statistics
        model.eval()
    batch = torch.stack([model.preprocess.to_tensor(im) for im in images])
    return run_batch(model, batch, channels_last=channels_last)


def pool_view_embeddings(emb: np.ndarray, n_views: Sequence[int]) -> np.ndarray:
    """Mean embedding over each query's views, re-normalised."""
    starts = np.concatenate([[0], np.cumsum(n_views)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(emb, starts, axis=0)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
