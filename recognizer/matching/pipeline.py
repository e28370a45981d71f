"""The one recognition path: views -> embed -> score against the gallery -> verify -> decide.

Every way of matching goes through :class:`Recognizer`: batch matching of a manifest
(``tools/match.py``), the report (``tools/report.py``), the camera (``tools/camera.py``), the
demo and Python callers (:func:`match_images`). Each step exists once, so the same image with
the same settings gets the same answer from every tool:

1. *views*: how a photo is framed (:class:`~.options.QueryOptions`: aspect, zoom, multi-crop);
2. *embed*: every view of every image through the gallery's model in batches;
3. *score*: item scores against the gallery, per candidate set (views pooled by mean embedding
   or by max score);
4. *verify*: the best items re-scored by geometric verification with the gallery's stored
   local features (:mod:`.rerank`), when a :class:`~.rerank.RerankConfig` is given;
5. *decide*: top-k, threshold and margin (:func:`~recognizer.gallery.decide`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.imageio import ImageLoadError, crop_bbox, load_image
from ..gallery import Gallery, Match, decide
from ..gallery.search import Candidates, candidate_groups
from ..models.embed import embed_arrays, embed_paths, pool_view_embeddings
from .cues import COLOUR_METHOD, add_colour, colour_histogram
from .options import QueryOptions, pool_view_scores
from .rerank import RerankConfig, verify_items

COLOUR_TOP = 10  # items re-scored by the colour cue without re-ranking (with it: the re-ranked top K)


@dataclass
class Views:
    """Embedded views: ``emb`` holds every view, ``n_views`` how many belong to each image, in order."""

    emb: np.ndarray
    n_views: np.ndarray
    failures: list[tuple[int, str]] = field(default_factory=list)  # (image index, reason): not embedded
    indices: list[int] = field(default_factory=list)  # the images that were, in order
    seconds: float = 0.0

    def pooled(self) -> np.ndarray:
        """One embedding per image: the mean over its views (the view itself when there is one)."""
        return self.emb if (self.n_views == 1).all() else pool_view_embeddings(self.emb, self.n_views)

    def rows_of(self, images: Sequence[int]) -> np.ndarray:
        """Row indices in ``emb`` of these images' views (positions among the embedded images)."""
        starts = np.concatenate([[0], np.cumsum(self.n_views)]).astype(np.int64)
        return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in images]) if len(images) else np.zeros(0, np.int64)


@dataclass
class Recognizer:
    """A gallery, its model and how to query it: see the module docstring.

    ``exhaustive`` scores every item exactly even in a gallery large enough for the IVF
    shortlist (evaluation wants every item's rank; deployment wants speed).
    """

    gallery: Gallery
    model: Any
    query: QueryOptions = field(default_factory=QueryOptions)
    rerank: RerankConfig | None = None
    exhaustive: bool = False
    seconds_verify: float = 0.0  # spent in geometric verification so far

    def __post_init__(self) -> None:
        self.gallery.check_model(self.model.fingerprint, "the matching model")

    # ------------------------------------------------------------------ 1-2: views, embed

    def embed_arrays(self, images: Sequence[np.ndarray]) -> Views:
        """Embed RGB arrays (camera crops, decoded photos)."""
        views = [self.query.views(im) for im in images]
        flat = [v for vs in views for v in vs]
        emb = embed_arrays(self.model, flat) if flat else np.zeros((0, self.gallery.embedding_dim), np.float32)
        return Views(emb, np.array([len(v) for v in views], np.int64), indices=list(range(len(images))))

    def embed_paths(self, paths: Sequence[str | os.PathLike], bboxes: Sequence | None = None, **kw: Any) -> Views:
        """Embed image files with decoding in workers; unreadable files are listed in ``failures``."""
        res = embed_paths(self.model, paths, bboxes=bboxes, view_fn=self.query.views, **kw)
        return Views(res.view_embeddings, np.asarray(res.n_views, np.int64), res.failures, list(res.indices), res.seconds)

    # ------------------------------------------------------------------ 3-5: score, verify, decide

    def scores(self, views: Views, images: Sequence[int], candidates: Sequence[str] | None, k: int = 5):
        """``(items, len(images) x I)`` item scores of these embedded images against one candidate set."""
        rows = views.rows_of(images)
        n = views.n_views[list(images)]
        if self.query.pool == "max" and self.query.multicrop != "none":
            items, s = self._score(views.emb[rows], candidates, k)
            return items, pool_view_scores(s, n)
        emb = pool_view_embeddings(views.emb[rows], n) if (n > 1).any() else views.emb[rows]
        return self._score(emb, candidates, k)

    def _score(self, emb: np.ndarray, candidates: Sequence[str] | None, k: int):
        if candidates is None and self.exhaustive:
            return self.gallery.exact_item_scores(emb)
        return self.gallery.item_scores(emb, candidates, k=k)

    def verify(self, items: list[str], scores: np.ndarray, image: Callable[[int], np.ndarray | None]) -> np.ndarray:
        """Re-score each row's best items with the colour cue and geometrically (``image(i)`` gives row i's
        RGB, None if unreadable)."""
        w = self.query.colour
        if self.rerank is None and not w:
            return scores
        t0 = time.perf_counter()
        out = scores.copy()
        top = self.rerank.top_k if self.rerank else COLOUR_TOP
        hists: dict[str, list] = {}
        if w:  # the enrolled photos' histograms of every row's best items
            best = {items[j] for row in scores for j in np.argsort(-row)[:top]}
            hists = {it: [d for _, d in f] for it, f in self.gallery.features.read(sorted(best), COLOUR_METHOD, 64).items()}
        for i in range(len(scores)):
            rgb = image(i)
            if rgb is None:
                continue
            if w:
                out[i] = add_colour(out[i], items, colour_histogram(rgb), hists, w, top)
            if self.rerank is not None:
                out[i] = verify_items(self.gallery, rgb, items, out[i], self.rerank)
        self.seconds_verify += time.perf_counter() - t0
        return out

    def decide(self, items: list[str], scores: np.ndarray, k: int) -> list[Match]:
        return decide(items, scores, k, self.gallery.threshold, self.gallery.margin)

    def match(
        self, views: Views, candidates: Candidates, image: Callable[[int], np.ndarray | None], k: int = 5
    ) -> list[Match]:
        """Matches of the embedded images (``candidates`` as in :meth:`Gallery.search`, per embedded image)."""
        out: list[Match | None] = [None] * len(views.n_views)
        for cands, idx in candidate_groups(candidates, len(views.n_views)).items():
            items, s = self.scores(views, idx, cands, max(k, self.rerank.top_k if self.rerank else 0))
            s = self.verify(items, s, lambda j, idx=idx: image(idx[j]))
            for i, m in zip(idx, self.decide(items, s, k), strict=True):
                out[i] = m
        return out  # type: ignore[return-value]

    def match_arrays(self, images: Sequence[np.ndarray], *, candidates: Candidates = None, k: int = 5) -> list[Match]:
        """Match RGB arrays."""
        return self.match(self.embed_arrays(images), candidates, lambda i: images[i], k)

    def match_files(
        self, paths: Sequence[str | os.PathLike], bboxes: Sequence | None = None,
        candidates: Sequence[Sequence[str]] | None = None, *, k: int = 5, **embed_kw: Any,
    ) -> FileMatches:  # fmt: skip
        """Embed files once and match them over the whole gallery and, when given, within each file's
        own candidates (evaluation's two figures from one embedding), timing each stage."""
        v0 = self.seconds_verify
        t0 = time.perf_counter()
        views = self.embed_paths(paths, bboxes, **embed_kw)
        t_embed = time.perf_counter() - t0
        load = file_loader([paths[i] for i in views.indices], [bboxes[i] for i in views.indices] if bboxes else None)
        t0 = time.perf_counter()
        full = self.match(views, None, load, k)
        t_full = time.perf_counter() - t0
        v_full = self.seconds_verify - v0
        within = self.match(views, [tuple(candidates[i]) for i in views.indices], load, k) if candidates is not None else None
        n = max(1, len(views.indices))
        return FileMatches(views.indices, views.failures, full, within,
                           ms_embed=1000 * t_embed / n, ms_match=1000 * (t_full - v_full) / n, ms_verify=1000 * v_full / n)  # fmt: skip


@dataclass
class FileMatches:
    """What :meth:`Recognizer.match_files` found: per readable file (``indices``), its whole-gallery
    match and its match within its candidates; ms per query of one real query's path (embedding,
    scoring and deciding, verification with the colour cue) over the whole gallery."""

    indices: list[int]
    failures: list[tuple[int, str]]
    full: list[Match]
    within: list[Match] | None
    ms_embed: float
    ms_match: float
    ms_verify: float

    @property
    def ms_per_query(self) -> float:
        return self.ms_embed + self.ms_match + self.ms_verify


def file_loader(paths: Sequence[str | os.PathLike], bboxes: Sequence | None = None) -> Callable[[int], np.ndarray | None]:
    """``i -> RGB of paths[i]`` (cropped to its bbox), or None when it cannot be read now."""

    def load(i: int) -> np.ndarray | None:
        try:
            return crop_bbox(load_image(paths[i]), bboxes[i] if bboxes else None)
        except (ImageLoadError, ValueError):
            return None

    return load


def match_images(
    gallery: Gallery, model: Any, images: Sequence[str | os.PathLike | np.ndarray], *,
    candidates: Candidates = None, k: int = 5, query: QueryOptions | None = None, rerank: RerankConfig | None = None,
) -> list[Match]:  # fmt: skip
    """Match image files or RGB arrays; ``model`` must have the gallery's fingerprint.

    An image that cannot be read raises its :class:`~recognizer.data.imageio.ImageLoadError`.
    ``candidates`` as in :meth:`Gallery.search`.
    """
    rec = Recognizer(gallery, model, query or QueryOptions(), rerank)
    arrays = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
    return rec.match_arrays(arrays, candidates=candidates, k=k)
