"""Batch matching: a manifest's query rows in, one match per good row and a predictions CSV out.

Bad rows (a missing or corrupt image, unknown candidate ids) are skipped and reported with
their manifest line; the good rows still go through.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.manifest import Manifest, ManifestRow, format_skipped
from ..evaluation.metrics import top1_accuracy, topk_accuracy
from ..fileio import write_csv_atomic
from ..gallery import Gallery, Match, UnknownItemError
from ..models.model import EmbeddingModel
from .options import QueryOptions
from .pipeline import Recognizer, file_loader
from .rerank import RerankConfig

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


def matches_table(report: MatchReport, names: dict[str, str], top: int = 3) -> str:
    """A plain-text table of one match per image: path, item, name, score, accepted, the top items."""
    head = ("image", "item", "name", "score", "accepted", f"top-{top}")
    rows = [
        (r.path, m.label, names.get(m.item_id or "", "") if m.accepted else "", f"{m.score:.3f}",
         "yes" if m.accepted else "no", ", ".join(f"{i} {s:.3f}" for i, s in m.topk[:top]))
        for r, m in zip(report.rows, report.matches, strict=True)
    ]  # fmt: skip
    width = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, width, strict=True)).rstrip() for row in (head, *rows))


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
    rec = Recognizer(gallery, model, query_options or QueryOptions(), rerank)
    paths, bboxes = [manifest.resolve(r) for r, _ in good], [r.bbox for r, _ in good]
    views = rec.embed_paths(paths, bboxes, batch_size=batch_size, num_workers=num_workers, progress=progress,
                            desc="embedding queries")  # fmt: skip
    for j, msg in views.failures:
        failures.append((f"line {good[j][0].line}", msg))
    ok = [good[j] for j in views.indices]
    t0 = time.perf_counter()
    load = file_loader(paths, bboxes)
    matches = rec.match(views, [c for _, c in ok], lambda i: load(views.indices[i]), k) if ok else []
    t_match = time.perf_counter() - t0
    return MatchReport([r for r, _ in ok], matches, failures, views.seconds, t_match, views.pooled(), rec.seconds_verify)


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
