"""Enrollment and batch matching: manifests and image files in, gallery and predictions out.

These are the workflows behind ``tools/enroll.py`` and ``tools/match.py``. Bad rows (a
missing or corrupt image, an unlabelled row, unknown candidate ids) are skipped and
reported with their manifest line; the good rows still go through. Enrollment commits in
chunks, so an interrupted run keeps every chunk it finished.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .embed import embed_paths
from .fileio import write_csv_atomic
from .gallery import (
    Gallery,
    GalleryError,
    GalleryModelMismatchError,
    Match,
    UnknownItemError,
    decide,
    file_sha256,
)
from .manifest import Manifest, ManifestRow
from .model import EmbeddingModel, load_model
from .query import QueryOptions
from .rerank import RerankConfig

PREDICTION_COLUMNS = ("path", "item_id", "pred_item_id", "score", "accepted", "topk_ids", "topk_scores")


def format_skipped(failures: Sequence[tuple[str, str]], limit: int = 20) -> list[str]:
    """Report lines for skipped rows, ``(where, why)`` each; nothing when there are none."""
    if not failures:
        return []
    lines = [f"skipped {len(failures)} bad row(s):"] + [f"  {w}: {why}" for w, why in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return lines


@dataclass
class EnrollReport:
    """What an enrollment run did: counts, skipped rows with reasons, time."""

    images_added: int = 0
    items_added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (where, item already holding it)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    seconds: float = 0.0

    def summary(self, gallery: Gallery) -> str:
        lines = [
            f"enrolled {self.images_added} image(s), {len(self.items_added)} new item(s) in {self.seconds:.1f} s; "
            f"gallery now holds {len(gallery.item_ids)} items, {len(gallery)} vectors",
        ]
        if self.duplicates:
            lines.append(f"skipped {len(self.duplicates)} identical image(s) already enrolled:")
            lines += [f"  {w} (already in item {it!r})" for w, it in self.duplicates[:10]]
        lines += format_skipped(self.failures)
        return "\n".join(lines)


def open_or_create_gallery(
    root: str | os.PathLike,
    model_spec: str | None,
    *,
    backend: str = "torch",
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
) -> tuple[Gallery, EmbeddingModel]:
    """Open the gallery and its model, or create it for ``model_spec`` (default ``lite0``).

    An existing gallery is opened with its own model unless ``model_spec`` is given, in which
    case that model must have the gallery's fingerprint. ``backend="onnx"`` embeds with the
    export ``onnx`` instead (see :func:`load_gallery_embedder`); a new gallery is then
    created for that export's model.
    """
    root = Path(root)
    if (root / "gallery.sqlite").exists():
        gallery = Gallery.open(root)
        model = load_gallery_embedder(gallery, model_spec, backend=backend, onnx=onnx, threads=threads)
        return gallery, model
    if backend != "torch":
        from .backend import load_embedder, record_export_use

        if model_spec:
            raise ValueError("--model is for --backend torch; an export's sidecar names its own model")
        emb = load_embedder(backend, onnx=onnx, threads=threads)
        gallery = Gallery.create(root, emb.describe(), model_spec=emb.gallery_spec)
        record_export_use(gallery, emb)
        return gallery, emb
    if onnx:
        raise ValueError("--onnx runs on --backend onnx, not torch")
    spec = model_spec or "lite0"
    model = load_model(spec)
    spec_str = str(Path(spec).resolve()) if Path(spec).is_dir() else spec
    gallery = Gallery.create(root, model.describe(), model_spec=spec_str)
    return gallery, model


def load_gallery_embedder(
    gallery: Gallery,
    model_spec: str | None = None,
    *,
    backend: str = "torch",
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
):
    """The gallery's embedder on ``backend``: the torch model (:func:`load_gallery_model`), or the
    ONNX export ``onnx`` when the gallery accepts it (``recognizer.backend.check_gallery_accepts``)."""
    if backend == "torch":
        if onnx:
            raise ValueError("--onnx runs on --backend onnx, not torch")
        return load_gallery_model(gallery, model_spec)
    from .backend import BACKENDS, open_gallery_export

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if model_spec:
        raise ValueError("--model is for --backend torch; an export's sidecar names its own model")
    return open_gallery_export(gallery, onnx, threads=threads)


def load_gallery_model(gallery: Gallery, model_spec: str | None = None) -> EmbeddingModel:
    """The gallery's embedding model (or ``model_spec``), checked against the gallery's fingerprint."""
    exp = gallery.model_description.get("export")
    if exp is not None:  # created with a non-equivalent (int8) export: no torch model makes its embeddings
        raise GalleryModelMismatchError(
            f"{gallery.root}: the gallery was built with the {exp['precision']} ONNX export {exp['file']} "
            f"(sha256 {exp['sha256'][:16]}...); only that file makes comparable embeddings: "
            "use --backend onnx [--onnx FILE]"
        )
    spec = model_spec or gallery.model_spec
    if not spec:
        raise GalleryError(f"{gallery.root}: the gallery does not record its model; pass --model")
    if not model_spec and os.path.isabs(spec) and not Path(spec).is_dir():
        raise GalleryError(
            f"{gallery.root}: the gallery's model folder {spec} is gone; pass --model with a copy of it"
        )
    model = load_model(spec)
    gallery.check_model(model.fingerprint, f"model {spec!r}")
    return model


def enroll_files(
    gallery: Gallery,
    model: EmbeddingModel,
    entries: Sequence[tuple[str, str | os.PathLike, tuple | None]],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    chunk: int = 512,
    progress: bool = True,
    local_features: str | None = None,
) -> EnrollReport:
    """Enroll ``(item_id, path, bbox)`` entries; ``where`` strings in the report are the paths.

    Identical files (same SHA-256) already in the gallery, or repeated here, are skipped.
    Each chunk of ``chunk`` images is one atomic commit.
    """
    return _enroll(
        gallery,
        model,
        [(str(p), it, p, bb) for it, p, bb in entries],
        batch_size,
        num_workers,
        chunk,
        progress,
    )


def enroll_manifest(
    gallery: Gallery,
    model: EmbeddingModel,
    manifest: Manifest,
    rows: Sequence[ManifestRow] | None = None,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    chunk: int = 512,
    progress: bool = True,
    local_features: str | None = None,
) -> EnrollReport:
    """Enroll manifest rows: by default every row except ``role=query`` ones.

    Rows without an item id are reported, as are the manifest's own bad rows.
    """
    if rows is None:
        rows = [r for r in manifest.rows if r.role != "query"]
    entries = []
    pre_failures = [(f"{manifest.source}: line {e.line}", e.message) for e in manifest.errors]
    for r in rows:
        where = f"line {r.line} ({r.path})"
        if not r.item_id:
            pre_failures.append((where, "no item_id"))
            continue
        entries.append((where, r.item_id, manifest.resolve(r), r.bbox))
    rep = _enroll(gallery, model, entries, batch_size, num_workers, chunk, progress, local_features)
    rep.failures = pre_failures + rep.failures
    return rep


def _enroll(
    gallery, model, entries, batch_size, num_workers, chunk, progress, local_features=None
) -> EnrollReport:
    gallery.check_model(model.fingerprint, "the enrolling model")
    t0 = time.perf_counter()
    rep = EnrollReport()
    hashed = []
    for where, item, path, bbox in entries:
        try:
            h = file_sha256(path)
        except OSError as e:
            rep.failures.append((where, f"{path}: {e.strerror or e}"))
            continue
        # the same file with another crop is a different enrollment
        hashed.append((where, item, path, bbox, h if bbox is None else f"{h}:{bbox}"))
    known = gallery.known_hashes([h for *_, h in hashed])
    todo, seen = [], {}
    for e in hashed:
        where, item, _, _, h = e
        if h in known:
            rep.duplicates.append((where, known[h]))
        elif h in seen:
            rep.duplicates.append((where, seen[h]))
        else:
            seen[h] = item
            todo.append(e)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="enrolling", unit="img")
    for i in range(0, len(todo), chunk):
        part = todo[i : i + chunk]
        res = embed_paths(
            model, [p for _, _, p, _, _ in part], bboxes=[b for *_, b, _ in part],
            batch_size=batch_size, num_workers=num_workers,
        )  # fmt: skip
        for j, msg in res.failures:
            rep.failures.append((part[j][0], msg))
        ok = [part[j] for j in res.indices]
        if ok:
            added = gallery.add(
                [e[1] for e in ok],
                res.embeddings,
                paths=[os.path.abspath(e[2]) for e in ok],
                hashes=[e[4] for e in ok],
                fingerprint=model.fingerprint,
            )
            rep.images_added += added.added
            rep.items_added += added.new_items
            rep.duplicates += added.duplicates
            if local_features:
                store_features_for(
                    gallery,
                    local_features,
                    [(v, ok[p][2], ok[p][3]) for v, p in zip(added.vids, added.positions, strict=True)],
                )
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    rep.seconds = time.perf_counter() - t0
    return rep


def store_features_for(
    gallery: Gallery, method: str, entries: Sequence[tuple[int, str | os.PathLike, tuple | None]]
) -> int:
    """Compute and store local features (for geometric re-ranking) of ``(vid, path, bbox)`` entries.

    Images that cannot be read now (moved since enrollment) are skipped; they are then
    simply not verified.
    """
    from .imageio import ImageLoadError, crop_bbox, load_image
    from .rerank import extract

    feats = {}
    for vid, path, bbox in entries:
        try:
            feats[vid] = extract(crop_bbox(load_image(path), bbox), method)
        except (ImageLoadError, ValueError):
            continue
    return gallery.store_local_features(method, feats)


def backfill_local_features(gallery: Gallery, method: str, *, progress: bool = True) -> int:
    """Compute ``method`` features for every enrolled vector that lacks them (from the stored paths)."""
    todo = gallery.vectors_without_features(method)
    done = 0
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"{method} features", unit="img")
    for i in range(0, len(todo), 256):
        part = todo[i : i + 256]
        done += store_features_for(gallery, method, [(v, p, None) for v, p in part])
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    return done


# --------------------------------------------------------------------------------- matching


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
        top1 = np.mean([m.item_id == r.item_id for r, m in labelled])
        acc = np.mean([m.accepted and m.item_id == r.item_id for r, m in labelled])
        topk = np.mean([r.item_id in [i for i, _ in m.topk] for r, m in labelled])
        return {
            "labelled": len(labelled),
            "top1": float(top1),
            "topk": float(topk),
            "accepted_correct": float(acc),
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
            raise UnknownItemError("--candidates " + gallery._unknown_message(missing))
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
    from .query import pool_view_scores

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
    from .imageio import ImageLoadError, crop_bbox, load_image
    from .rerank import verify_items

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
