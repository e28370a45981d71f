"""Enrollment: manifests and image files in, gallery vectors (and local features) out.

The workflow behind ``tools/enroll.py``. Bad rows (a missing or corrupt image, an
unlabelled row) are skipped and reported with their manifest line; the good rows still go
through. Enrollment commits in chunks, so an interrupted run keeps every chunk it finished. Each photo is kept in
the gallery's image store (a content-addressed copy, or only a thumbnail) so that ``recognizer.migrate``
can re-embed the gallery with another model later.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .data.imageio import ImageLoadError, crop_bbox, load_image
from .data.manifest import Manifest, ManifestRow, format_skipped
from .fileio import file_sha256
from .gallery import DEFAULT_STORE_MODE, Gallery, photo_hash
from .matching.cues import COLOUR_METHOD, as_feature, colour_histogram
from .matching.options import parse_view
from .matching.rerank import extract
from .models.embed import embed_paths
from .models.model import EmbeddingModel

# A new gallery enrols each photo whole and as the centre crop the photo tools query with: measured with
# ``tools/bench.py --suite enrol_views`` (lite0, 19 unseen grocery items, crop:0.6 queries), whole+crop beat
# whole alone by +2.9 points top-1 from the catalog image and +4.8 from 9 photos per item.
DEFAULT_VIEWS = ("whole", "crop:0.6")
DEFAULT_LOCAL_FEATURES = "sift"  # keypoints for geometric verification; None or "none": not stored


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



def enroll_files(
    gallery: Gallery,
    model: EmbeddingModel,
    entries: Sequence[tuple[str, str | os.PathLike, tuple | None]],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    chunk: int = 512,
    progress: bool = True,
    local_features: str | None = DEFAULT_LOCAL_FEATURES,
    views: Sequence[str] | None = None,
) -> EnrollReport:
    """Enroll ``(item_id, path, bbox)`` entries; ``where`` strings in the report are the paths.

    Identical files (same SHA-256) already in the gallery, or repeated here, are skipped.
    Each chunk of ``chunk`` images is one atomic commit. ``views`` (default: :func:`enrolment_views`):
    one vector per photo and view, e.g. ``["whole", "crop:0.6"]`` so that zoomed queries meet zoomed
    references. ``local_features`` (``sift``, ``orb``, or None): keypoints stored per photo.
    """
    return _enroll(
        gallery,
        model,
        [(str(p), it, p, bb) for it, p, bb in entries],
        batch_size,
        num_workers,
        chunk,
        progress,
        local_features,
        views,
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
    local_features: str | None = DEFAULT_LOCAL_FEATURES,
    views: Sequence[str] | None = None,
) -> EnrollReport:
    """Enroll manifest rows: by default every row except ``role=query`` ones (``views`` as in :func:`enroll_files`).

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
    rep = _enroll(gallery, model, entries, batch_size, num_workers, chunk, progress, local_features, views)
    rep.failures = pre_failures + rep.failures
    return rep


def enrolment_views(gallery: Gallery, views: Sequence[str] | None = None) -> list[str]:
    """The views to enrol under: given, else the gallery's, else :data:`DEFAULT_VIEWS` for an empty
    gallery (stored, so later enrolments agree) and ``whole`` for one enrolled before views existed."""
    if views:
        return list(views)
    stored = gallery.settings.get("enroll_views")
    if stored:
        return list(stored)
    if len(gallery) == 0:
        gallery.update_settings({"enroll_views": list(DEFAULT_VIEWS)})
        return list(DEFAULT_VIEWS)
    return ["whole"]


def _enroll(
    gallery, model, entries, batch_size, num_workers, chunk, progress, local_features=DEFAULT_LOCAL_FEATURES, views=None
) -> EnrollReport:
    gallery.check_model(model.fingerprint, "the enrolling model")
    views = enrolment_views(gallery, views)
    local_features = None if local_features == "none" else local_features
    opts = [parse_view(v) for v in views]  # unknown view names raise before anything is read
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
    bar = None
    if progress and hashed:
        from tqdm import tqdm

        bar = tqdm(total=len(hashed) * len(views), desc="enrolling", unit="img")
    failed: set[str] = set()
    for v, (name, view) in enumerate(zip(views, opts, strict=True)):
        # one vector per photo and view; the whole photo keeps the plain content hash
        todo = _new_entries(gallery, [(*e[:4], e[4] if name == "whole" else f"{e[4]}#{name}") for e in hashed], rep, v == 0)
        for i in range(0, len(todo), chunk):
            part = [e for e in todo[i : i + chunk] if e[0] not in failed]
            res = embed_paths(
                model, [p for _, _, p, _, _ in part], bboxes=[b for *_, b, _ in part],
                batch_size=batch_size, num_workers=num_workers, view_fn=None if view.is_default else view.views,
            )  # fmt: skip
            for j, msg in res.failures:
                rep.failures.append((part[j][0], msg))
                failed.add(part[j][0])
            ok, emb = [part[j] for j in res.indices], res.embeddings
            if ok and v == 0:  # keep the photos (a copy, or a thumbnail) before the vectors that need them commit
                ok, emb = _keep_images(gallery, ok, emb, rep, failed)
            if ok:
                added = gallery.add(
                    [e[1] for e in ok], emb, paths=[os.path.abspath(e[2]) for e in ok],
                    hashes=[e[4] for e in ok], fingerprint=model.fingerprint,
                )  # fmt: skip
                rep.images_added += added.added if v == 0 else 0
                rep.items_added += added.new_items
                rep.duplicates += added.duplicates if v == 0 else []
                if v == 0:  # keypoints and colours once per photo, on its first view's vector
                    store_features_for(
                        gallery,
                        [m for m in (local_features, COLOUR_METHOD) if m],
                        [(vid, ok[p][2], ok[p][3]) for vid, p in zip(added.vids, added.positions, strict=True)],
                    )
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    rep.seconds = time.perf_counter() - t0
    return rep


def _keep_images(gallery: Gallery, ok: list, emb, rep: EnrollReport, failed: set[str]) -> tuple[list, object]:
    """Keep each photo in the gallery's image store (``settings["store_images"]``); drop those that cannot be kept."""
    mode = gallery.settings.get("store_images", DEFAULT_STORE_MODE)
    bad = gallery.images.keep([(photo_hash(e[4]), e[2]) for e in ok], mode)
    for j, msg in bad.items():
        rep.failures.append((ok[j][0], msg))
        failed.add(ok[j][0])
    keep = [j for j in range(len(ok)) if j not in bad]
    return [ok[j] for j in keep], emb[keep]


def _new_entries(gallery: Gallery, hashed: list, rep: EnrollReport, report: bool) -> list:
    """The entries whose hash is neither enrolled nor repeated here (``report``: list the others as duplicates)."""
    known = gallery.known_hashes([h for *_, h in hashed])
    todo, seen = [], {}
    for e in hashed:
        where, item, _, _, h = e
        dup = known.get(h) or seen.get(h)
        if dup is not None:
            if report:
                rep.duplicates.append((where, dup))
        else:
            seen[h] = item
            todo.append(e)
    return todo


def store_features_for(
    gallery: Gallery, method: str | Sequence[str], entries: Sequence[tuple[int, str | os.PathLike, tuple | None]]
) -> int:
    """Compute and store per-photo features of ``(vid, path, bbox)`` entries, each image read once:
    keypoints (``sift``/``orb``, for geometric re-ranking) and/or the colour histogram (``hsv``).

    Images that cannot be read now (moved since enrollment) are skipped; they are then
    simply not verified. Returns how many images got features.
    """
    methods = [method] if isinstance(method, str) else list(method)
    feats: dict[str, dict] = {m: {} for m in methods}
    for vid, path, bbox in entries:
        try:
            rgb = crop_bbox(load_image(path), bbox)
        except (ImageLoadError, ValueError):
            continue
        for m in methods:
            feats[m][vid] = as_feature(colour_histogram(rgb)) if m == COLOUR_METHOD else extract(rgb, m)
    return max((gallery.features.store_features(m, f) for m, f in feats.items()), default=0)


def backfill_local_features(gallery: Gallery, method: str, *, progress: bool = True) -> int:
    """Compute ``method`` features for every enrolled vector that lacks them (from the stored paths)."""
    todo = gallery.features.missing(method)
    if todo:  # read the gallery's kept copy where it has one: the source may have moved since
        readable = {r["vid"]: r["path"] for r in gallery.records()}
        todo = [(v, readable.get(v) or p) for v, p in todo]
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

