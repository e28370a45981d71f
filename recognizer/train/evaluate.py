"""Model selection during training: Recall@1 on the held-out validation classes.

The best epoch, over both stages and including the untrained start, is the one with the
highest validation Recall@1. After every epoch the validation photos are embedded (while the
backbone is frozen, only through the head, from pooled features computed once); with
``role=gallery`` rows they are matched one-shot against those (as enrollment will use the
model), without them leave-one-out.

``recognizer.evaluation.metrics.recall_at_k`` gives the same Recall@1 but sorts every row of
the similarity matrix (about 250x slower at 5,000 photos, and an n x n index array); here,
once per epoch, only the top-1 neighbour is needed, so an ``argmax`` does.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.manifest import Manifest, ManifestRow
from ..models.model import EmbeddingModel
from .feature_cache import CacheNet


def _normalise(emb: np.ndarray) -> np.ndarray:
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def recall_at_1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out Recall@1 among the given embeddings."""
    e = _normalise(emb)
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
    e = _normalise(emb)
    g, q = np.flatnonzero(is_gallery), np.flatnonzero(~is_gallery)
    best = (e[q] @ e[g].T).argmax(axis=1)
    return float((labels[g][best] == labels[q]).mean())


class Validation:
    """Embeds the validation classes' clean photos and scores them with ``validation_recall``.

    ``use_cache``: through the head only, on pooled features computed once (valid while the
    backbone is frozen); otherwise through the whole model.
    """

    def __init__(
        self, manifest: Manifest, rows: list[ManifestRow], num_workers: int | None, channels_last: bool
    ):
        self.rows, self.num_workers, self.channels_last = rows, num_workers, channels_last
        self.paths = [manifest.resolve(r) for r in rows]
        self._cache = None

    @torch.no_grad()
    def __call__(
        self, model: EmbeddingModel, use_cache: bool, device: torch.device
    ) -> tuple[float, list[tuple[str, str]]]:
        """``(Recall@1, skipped (path, reason))``; ``model`` is left in eval mode."""
        from ..models.embed import embed_paths

        model.eval()
        bboxes = [r.bbox for r in self.rows]
        if use_cache:
            if self._cache is None:
                res = embed_paths(
                    CacheNet(model, None), self.paths, bboxes=bboxes, num_workers=self.num_workers
                )
                self._cache = (torch.from_numpy(res.embeddings), res.indices, res.failures)
            x, idx, failures = self._cache
            e = model.embed_features(x.to(device)).float().cpu().numpy()
        else:
            res = embed_paths(
                model,
                self.paths,
                bboxes=bboxes,
                num_workers=self.num_workers,
                channels_last=self.channels_last,
            )
            e, idx, failures = res.embeddings, res.indices, res.failures
        skipped = [(str(self.paths[i]), m) for i, m in failures]
        y = np.array([self.rows[i].item_id for i in idx])
        gallery = np.array([self.rows[i].role == "gallery" for i in idx])
        return validation_recall(e, y, gallery), skipped
