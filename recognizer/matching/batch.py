"""Batch matching: a manifest's query rows in, one match per good row and a predictions CSV out.

Bad rows (a missing or corrupt image, unknown candidate ids) are skipped and reported with
their manifest line; the good rows still go through.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.imageio import ImageLoadError, crop_bbox, load_image
from ..data.manifest import Manifest, ManifestRow, format_skipped
from ..evaluation.metrics import top1_accuracy, topk_accuracy
from ..fileio import write_csv_atomic
from ..gallery import Gallery, Match, UnknownItemError, decide
from ..models.embed import embed_paths
from ..models.model import EmbeddingModel
from .options import QueryOptions, pool_view_scores
from .rerank import RerankConfig, verify_items

PREDICTION_COLUMNS = ("path", "item_id", "pred_item_id", "score", "accepted", "topk_ids", "topk_scores")


@dataclass
class MatchReport:
    """Batch matching outcome: one prediction per good row, the skipped rows, and accuracy."""

    rows: list[ManifestRow]
    matches: list[Match]
    failures: list[tuple[str, str]]
    seconds_embed: float
    seconds_match: float
    embeddings: np.ndarray  # one row per entry of ``rows``
    seconds_rerank: float = 0.0

    def accuracy(self) -> dict[str, float]:
        labelled = [(r, m) for r, m in zip(self.rows, self.matches, strict=True) if r.item_id]
        if not labelled:
            return {}
        truth = [r.item_id for r, _ in labelled]
        return {
            "labelled": len(labelled),
            "top1": top1_accuracy(truth, [m.item_id for _, m in labelled]),
            "topk": topk_accuracy(truth, [[i for i, _ in m.topk] for _, m in labelled]),
            "accepted_correct": top1_accuracy(truth, [m.label for _, m in labelled]),
        }

    def summary(self) -> str:
        n = len(self.rows)
        acc = self.accuracy()
        lines = [
            f"matched {n} image(s): embedding {1000 * self.seconds_embed / max(1, n):.1f} ms/img, "
            f"search {1000 * self.seconds_match / max(1, n):.3f} ms/query; "
            f"accepted {sum(m.accepted for m in self.matches)}/{n}",
        ]
        if acc:
            lines.append(
                f"top-1 {acc['top1']:.3f}, top-k {acc['topk']:.3f}, accepted-and-correct {acc['accepted_correct']:.3f} "
                f"over {acc['labelled']} labelled rows"
            )
        lines += format_skipped(self.failures)
        return "\n".join(lines)


def match_manifest(
    gallery: Gallery,
    model: EmbeddingModel,
    manifest: Manifest,
    *,
    candidates: Sequence[str] | None = None,
    k: int = 5,
    rows: Sequence[ManifestRow] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
    query_options: QueryOptions | None = None,
    rerank: RerankConfig | None = None,
) -> MatchReport:
    """Match manifest rows (default: ``role=query`` rows, or every row when there are none).

    A row's own ``candidates`` column wins over ``candidates``; rows naming unknown
    candidate ids are skipped and reported.
    """
    gallery.check_model(model.fingerprint, "the matching model")
    gallery.require_items()
    if rows is None:
        rows = manifest.select(role="query") or list(manifest.rows)
    failures = [(f"{manifest.source}: line {e.line}", e.message) for e in manifest.errors]
    default = tuple(candidates) if candidates else None
    if default:
        missing = [c for c in default if c not in gallery]
        if missing:
            raise UnknownItemError("--candidates " + gallery.unknown_message(missing))
    good = []
    for r in rows:
        cands = r.candidates or default
        missing = [c for c in cands if c not in gallery] if cands else []
        if missing:
            failures.append(
                (f"line {r.line} ({r.path})", f"candidate id(s) not in the gallery: {', '.join(missing)}")
            )
        else:
            good.append((r, cands))
    opts = query_options or QueryOptions()
    res = embed_paths(
        model, [manifest.resolve(r) for r, _ in good], bboxes=[r.bbox for r, _ in good],
        batch_size=batch_size, num_workers=num_workers, progress=progress, desc="embedding queries",
        view_fn=None if opts.is_default else opts.views,
    )  # fmt: skip
    for j, msg in res.failures:
        failures.append((f"line {good[j][0].line}", msg))
    ok = [good[j] for j in res.indices]
    t0 = time.perf_counter()
    if not ok:
        matches = []
    elif opts.multicrop != "none" and opts.pool == "max":
        matches = _match_max_over_views(gallery, res, [c for _, c in ok], k)
    else:
        matches = gallery.search(
            res.embeddings, k=max(k, rerank.top_k if rerank else 0), candidates=[c for _, c in ok]
        )
    t_match = time.perf_counter() - t0
    t_rerank = 0.0
    if rerank is not None and ok:
        t0 = time.perf_counter()
        matches = [
            _rerank_one(gallery, manifest.resolve(r), r.bbox, m, k, rerank)
            for (r, _), m in zip(ok, matches, strict=True)
        ]
        t_rerank = time.perf_counter() - t0
    else:
        matches = [_truncate(m, k) for m in matches]
    return MatchReport([r for r, _ in ok], matches, failures, res.seconds, t_match, res.embeddings, t_rerank)


def _truncate(m: Match, k: int) -> Match:
    return m if len(m.topk) <= k else dataclasses.replace(m, topk=m.topk[:k])


def _match_max_over_views(gallery: Gallery, res, cands: list, k: int) -> list[Match]:
    """Item score = the max over a query's views (multi-crop pooling by max)."""
    starts = np.concatenate([[0], np.cumsum(res.n_views)]).astype(np.int64)
    groups: dict[tuple | None, list[int]] = {}
    for i, c in enumerate(cands):
        groups.setdefault(None if c is None else tuple(c), []).append(i)
    out: list[Match | None] = [None] * len(cands)
    for c, idx in groups.items():
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
        view_emb = res.view_embeddings[rows]
        items, sc = gallery.candidate_scores(view_emb, c) if c else gallery.exact_item_scores(view_emb)
        pooled = pool_view_scores(sc, res.n_views[idx])
        for i, m in zip(idx, decide(items, pooled, k, gallery.threshold, gallery.margin), strict=True):
            out[i] = m
    return out  # type: ignore[return-value]


def _rerank_one(gallery: Gallery, path, bbox, m: Match, k: int, cfg: RerankConfig) -> Match:
    """Verify the match's top items (or the whole candidate set) geometrically and re-decide."""
    if not m.topk:
        return m
    items = [i for i, _ in m.topk[: cfg.top_k]]  # the embedding's best (within the candidates, if any)
    emb = np.array([s for _, s in m.topk[: cfg.top_k]], np.float32)
    try:
        final = verify_items(gallery, crop_bbox(load_image(path), bbox), items, emb, cfg)
    except (ImageLoadError, ValueError):
        return _truncate(m, k)
    return decide(items, final[None, :], k, gallery.threshold, gallery.margin)[0]


def write_predictions(path: str | os.PathLike, report: MatchReport) -> Path:
    """Write ``path,item_id,pred_item_id,score,accepted,topk_ids,topk_scores`` (atomically)."""
    return write_csv_atomic(
        path,
        PREDICTION_COLUMNS,
        (
            [
                r.path,
                r.item_id,
                m.item_id or "",
                f"{m.score:.6f}",
                int(m.accepted),
                ";".join(i for i, _ in m.topk),
                ";".join(f"{s:.6f}" for _, s in m.topk),
            ]
            for r, m in zip(report.rows, report.matches, strict=True)
        ),
    )
