"""Self-calibration: a gallery measures, on pseudo-queries made from its own photos, how it is best queried.

Every gallery differs (catalog images or shelf photos, flat packages or 3D objects, one photo per
item or many), and no single default suits them all. After an enrolment, :func:`calibrate` makes
pseudo-queries from what was enrolled and tries the options of the one recognition path on them:

- **pseudo-queries**: every photo of an item with 2+ photos is a *held-out* query once: the
  photos are dealt into up to ``folds`` folds, and a fold's photos are scored against the gallery
  without them (all their views left out; every item keeps a photo in each fold). An item with one
  photo gives *synthetic* views of it (perspective, scale, rotation, lighting, shadow, blur,
  occlusion, pasted on real background photos: the nuisances of
  :func:`~recognizer.data.synthetic.wild_photo`).
- **options**: the query view (zoom/aspect), mirror averaging, the score mode (max / prototype /
  probe), the colour cue's weight (:mod:`.cues`), geometric re-ranking (on/off, items verified, photos per item, inlier gate), each
  scored by top-1 over the whole gallery and within random sets of 10 candidates, with their
  cost. Inlier counts are computed once per (query, enrolled photo) and reused by every
  re-ranking variant.
- **choice**, one option at a time from the plain setting (the default view, ``max``, nothing
  else): the score mode, then the view, mirror averaging, the colour weight, re-ranking. A
  step's variant (scored by the mean of the two top-1 figures) is adopted only when its paired
  gain over the current setting, query by query, exceeds ``min_gain_se`` standard errors; among
  the variants that do, the cheapest that is not clearly worse than the step's best wins (so
  verifying 10 items instead of 3 must earn its cost). A few dozen pseudo-queries are noisy: on
  grocery few-shot, four draws of 57 held-out photos put crop:0.8, whole, a tie and crop:0.6
  first (with probe), and the largest of 25 noisy figures is not a real gain. Held-out shelf photos also leaned to wider
  views than real queries did (cause not established). So the defaults stand unless the
  evidence against them is clear; the uncalibrated defaults (with
  re-ranking) are adopted last the same way. Then the open-set threshold at the chosen
  setting (pseudo-queries with their own item left out are the unknowns).

:meth:`Calibration.apply` stores the choice and its evidence in the gallery; every tool reads it
through :func:`~.settings.resolve_query`, and a flag still overrides.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.imageio import ImageLoadError, crop_bbox, load_image
from ..evaluation.metrics import open_set_curves, recommend_threshold
from ..gallery import Gallery
from ..models.embed import pool_view_embeddings
from .cues import COLOUR_METHOD, add_colour, colour_histogram
from .options import QueryOptions, parse_view, view_name
from .pipeline import COLOUR_TOP, Recognizer
from .rerank import RerankConfig, count_inliers, extract, verification_bonus
from .settings import PHOTO_DEFAULTS

VIEWS = ("whole", "crop:0.6", "crop:0.8")
MODES = ("max", "prototype", "probe")
COLOUR_WEIGHTS = (0.1, 0.2, 0.3)
RERANK_GRID = {"top_k": (3, 10), "per_item": (1, 3), "min_inliers": (15, 25)}


@dataclass
class PseudoQueries:
    """Queries made from the gallery's own photos, with the vectors they must not be scored against."""

    truth: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # "held_out" or "synthetic"
    fold: list[int] = field(default_factory=list)  # per query: which fold's vectors it is scored without
    fold_without: list[list[int]] = field(default_factory=list)  # per fold: the held-out photos' vids (all views)
    unreadable: list[str] = field(default_factory=list)  # stored photos that could not be read now


def _photos(gallery: Gallery) -> dict[str, list[tuple[str, str, list[int]]]]:
    """``item -> [(path, photo key, vids of every view of that photo)]`` in enrolment order."""
    photos: dict[str, dict[str, tuple[str, str, list[int]]]] = {}
    for r in gallery.records():
        key = str(r["sha256"]).split("#")[0]  # a photo's other views carry "#view" after its hash
        photos.setdefault(r["item_id"], {}).setdefault(key, (r["path"], key, []))[2].append(int(r["vid"]))
    return {it: list(p.values()) for it, p in photos.items()}


def _read(path: str, key: str) -> np.ndarray:
    _, sep, bbox = key.partition(":")  # a crop's hash is "sha:(x, y, w, h)"
    rgb = load_image(path)
    return crop_bbox(rgb, ast.literal_eval(bbox)) if sep else rgb


def synthetic_views(rgb: np.ndarray, n: int, rng: np.random.Generator, backgrounds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``n`` wild-looking photos of one enrolled photo: cut out when its background is plain, else the whole photo."""
    from ..data.synthetic import plain_background, rgba_from_plain_background, wild_photo

    border = plain_background(rgb)
    if border is not None:
        rgba = rgba_from_plain_background(rgb, dark=border < 50)
    else:
        rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    h, w = rgba.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 4), np.uint8)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = rgba
    size = int(np.clip(side, 224, 448))
    return [wild_photo(square, rng, backgrounds, size, hard=0.7) for _ in range(n)]


def pseudo_queries(gallery: Gallery, *, max_queries: int = 240, folds: int = 3,
                   synthetic_per_item: int = 4, seed: int = 0) -> PseudoQueries:  # fmt: skip
    """Every photo of multi-photo items held out once (in folds) and synthetic views of one-photo
    items (see the module docstring).

    At most ``max_queries``: beyond that, an even seeded sample of items gives them. Synthetic
    queries are scored with fold 0's photos left out, like that fold's held-out ones.
    """
    from ..data.backgrounds import load_backgrounds

    rng = np.random.default_rng(seed)
    photos = _photos(gallery)
    items = sorted(photos)
    per_item = {it: len(photos[it]) if len(photos[it]) > 1 else synthetic_per_item for it in items}
    if sum(per_item.values()) > max_queries:  # an even, seeded sample of items
        order = rng.permutation(len(items))
        kept, total = [], 0
        for j in order:
            if total + per_item[items[j]] <= max_queries:
                kept.append(items[j])
                total += per_item[items[j]]
        items = sorted(kept)
    pq = PseudoQueries(fold_without=[[] for _ in range(max(1, folds))])
    backgrounds = None
    for it in items:
        ph = photos[it]
        if len(ph) >= 2:
            k = min(folds, len(ph))  # an item's photos over k folds: each fold leaves it at least one
            start = int(rng.integers(len(pq.fold_without)))
            for n, j in enumerate(rng.permutation(len(ph))):
                path, key, vids = ph[j]
                try:
                    rgb = _read(path, key)
                except (ImageLoadError, ValueError, OSError, SyntaxError):
                    pq.unreadable.append(path)
                    continue
                f = (start + n % k) % len(pq.fold_without)
                pq.truth.append(it)
                pq.images.append(rgb)
                pq.kinds.append("held_out")
                pq.fold.append(f)
                pq.fold_without[f] += vids
        else:
            path, key, _ = ph[0]
            try:
                rgb = _read(path, key)
            except (ImageLoadError, ValueError, OSError, SyntaxError):
                pq.unreadable.append(path)
                continue
            backgrounds = backgrounds if backgrounds is not None else load_backgrounds()
            for im in synthetic_views(rgb, per_item[it], rng, backgrounds):
                pq.truth.append(it)
                pq.images.append(im)
                pq.kinds.append("synthetic")
                pq.fold.append(0)
    return pq


@dataclass
class Trial:
    """One setting measured on the pseudo-queries."""

    view: str
    flip: bool
    mode: str
    rerank: dict[str, Any] | None  # None: off; else {"method", "top_k", "per_item", "min_inliers"}
    colour: float = 0.0  # weight of the colour cue (.cues)
    top1: float = 0.0
    top1_candidates: float = 0.0
    ms_per_query: float = 0.0
    hits: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per query: (right + right in candidates) / 2

    @property
    def objective(self) -> float:
        return (self.top1 + self.top1_candidates) / 2

    @property
    def name(self) -> str:
        rr = "rerank off" if self.rerank is None else (
            f"{self.rerank['method']} top{self.rerank['top_k']} x{self.rerank['per_item']} >={self.rerank['min_inliers']}"
        )  # fmt: skip
        colour = f" colour {self.colour:g}" if self.colour else ""
        return f"{self.view}{'+flip' if self.flip else ''} {self.mode}{colour} {rr}"

    def beats(self, other: Trial, min_gain_se: float) -> bool:
        """Better than ``other`` on the same queries by more than ``min_gain_se`` standard errors of
        the paired per-query difference (a sign test's spirit, with half points for candidates)."""
        d = self.hits - other.hits
        if len(d) == 0:
            return False
        se = float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        return bool(float(d.mean()) > max(min_gain_se * se, 1e-9))

    def settings(self) -> dict[str, Any]:
        """The ``photo_query`` settings this trial stands for."""
        q = parse_view(self.view)
        out: dict[str, Any] = {"aspect": q.aspect, "zoom": q.zoom, "flip": self.flip, "colour": self.colour,
                               "rerank": "none"}  # fmt: skip
        if self.rerank is not None:
            out.update(rerank=self.rerank["method"], rerank_top=self.rerank["top_k"],
                       rerank_per_item=self.rerank["per_item"], rerank_min_inliers=self.rerank["min_inliers"])  # fmt: skip
        return out

    def row(self) -> dict[str, Any]:
        return {"setting": self.name, "top1": round(self.top1, 4), "top1_candidates": round(self.top1_candidates, 4),
                "ms_per_query": round(self.ms_per_query, 2)}  # fmt: skip


@dataclass
class Calibration:
    """What :func:`calibrate` measured and chose."""

    chosen: Trial
    defaults: Trial
    trials: list[Trial]
    threshold: float
    unknown_accept: float
    n_queries: dict[str, int]
    seconds: float
    unreadable: list[str] = field(default_factory=list)
    steps: list[tuple[str, str, bool]] = field(default_factory=list)  # (option, its best variant, adopted)

    def apply(self, gallery: Gallery) -> None:
        """Store the chosen settings, the score mode and the threshold, with the evidence."""
        gallery.update_settings({
            "photo_query": self.chosen.settings(),
            "calibration": {
                "chosen": self.chosen.row(), "defaults": self.defaults.row(), "threshold": self.threshold,
                "unknown_accept_at_threshold": self.unknown_accept, "queries": self.n_queries,
                "seconds": round(self.seconds, 2), "generation": gallery.generation, "at": time.time(),
                "trials": [t.row() for t in sorted(self.trials, key=lambda t: -t.objective)[:12]],
                "steps": [{"option": o, "best": b, "adopted": a} for o, b, a in self.steps],
            },
        })  # fmt: skip
        gallery.set_score_mode(self.chosen.mode)
        gallery.set_threshold(self.threshold)

    def summary(self) -> str:
        c, d = self.chosen, self.defaults
        nq = ", ".join(f"{v} {k}" for k, v in self.n_queries.items())
        lines = [
            f"calibrated on {sum(self.n_queries.values())} pseudo-queries ({nq}) in {self.seconds:.1f} s",
            f"  defaults: {d.name}: top-1 {d.top1:.3f}, within candidates {d.top1_candidates:.3f}, {d.ms_per_query:.0f} ms/query",
            f"  chosen:   {c.name}: top-1 {c.top1:.3f}, within candidates {c.top1_candidates:.3f}, {c.ms_per_query:.0f} ms/query",
            f"  open-set threshold {self.threshold:.3f} (pseudo-unknowns accepted: {self.unknown_accept:.1%})",
            "  steps: " + "; ".join(f"{o}: {b} {'adopted' if a else 'not a clear gain'}" for o, b, a in self.steps),
        ]
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} enrolled photo(s) unreadable now, not used: {self.unreadable[:3]}")
        return "\n".join(lines)


class _Scorer:
    """Embedding and re-ranking scores of the pseudo-queries under each trial, with cached pieces."""

    def __init__(self, gallery: Gallery, model: Any, pq: PseudoQueries, n_candidates: int, seed: int) -> None:
        self.g, self.model, self.pq = gallery, model, pq
        self.items = list(gallery.item_ids)
        col = {it: j for j, it in enumerate(self.items)}
        self.truth = np.array([col[t] for t in pq.truth], np.int64)
        rng = np.random.default_rng(seed + 1)
        k = min(n_candidates, len(self.items))
        self.cands = np.zeros((len(self.truth), len(self.items)), bool)
        for i, t in enumerate(self.truth):  # the truth plus k-1 random others
            others = np.delete(np.arange(len(self.items)), t)
            self.cands[i, t] = True
            self.cands[i, rng.choice(others, k - 1, replace=False)] = True
        self._emb: dict[tuple[str, bool], tuple[np.ndarray, float]] = {}
        self._scores: dict[tuple[str, bool, str], np.ndarray] = {}
        self._feats: dict[int, tuple] = {}  # query -> (features, ms to extract)
        self._inliers: dict[tuple[int, int], tuple[int, float]] = {}  # (query, vid) -> (inliers, ms)
        self.final = np.zeros((0, len(self.items)), np.float32)  # the last measured trial's final scores
        self._colours: tuple | None = None
        self.fold = np.asarray(pq.fold, np.int64)
        self.records = gallery.records()
        # per fold, the reference photos' vectors: everything but that fold's held-out photos
        self.kept = [[r for r in self.records if r["vid"] not in w] for w in map(set, pq.fold_without)]
        self.photo_vids: list[dict[str, list[int]]] = []  # per fold: item -> first-view vids with features, oldest first
        self.method: str | None = None

    def embeddings(self, view: str, flip: bool) -> tuple[np.ndarray, float]:
        """Pooled query embeddings under this view, and ms per query to make them.

        The mirrored setting reuses the plain view's embeddings: its pooled mean is the normalised
        sum of the view's and the mirror's, so only the mirrors are embedded.
        """
        key = (view, flip)
        if key not in self._emb:
            q = parse_view(view)
            rec = Recognizer(self.g, self.model, QueryOptions(aspect=q.aspect, zoom=q.zoom))
            t0 = time.perf_counter()
            if flip:
                base, ms = self.embeddings(view, False)
                mirrors = rec.embed_arrays([np.ascontiguousarray(im[:, ::-1]) for im in self.pq.images]).emb
                emb = pool_view_embeddings(np.stack([base, mirrors], 1).reshape(-1, base.shape[1]), [2] * len(base))
            else:
                ms, emb = 0.0, rec.embed_arrays(self.pq.images).pooled()
            self._emb[key] = (emb, ms + 1000 * (time.perf_counter() - t0) / max(1, len(emb)))
        return self._emb[key]

    def scores(self, view: str, flip: bool, mode: str) -> np.ndarray:
        key = (view, flip, mode)
        if key not in self._scores:
            emb, _ = self.embeddings(view, flip)
            s = np.zeros((len(emb), len(self.items)), np.float32)
            for f, without in enumerate(self.pq.fold_without):  # each fold against the gallery without it
                rows = np.flatnonzero(self.fold == f)
                if len(rows):
                    items, s[rows] = self.g.exact_item_scores(emb[rows], without_vids=without, score_mode=mode)
                    assert items == self.items
            self._scores[key] = s
        return self._scores[key]

    def _per_fold(self, stored: dict[int, Any], value: Callable[[int], Any]) -> list[dict[str, list[Any]]]:
        """Per fold, ``item -> [value(vid)]`` over that fold's reference vectors that have ``stored`` features."""
        out = []
        for kept in self.kept:
            by_item: dict[str, list[Any]] = {}
            for r in kept:
                if r["vid"] in stored:
                    by_item.setdefault(r["item_id"], []).append(value(int(r["vid"])))
            out.append(by_item)
        return out

    def setup_rerank(self, method: str) -> None:
        self.method = method
        self.gallery_feats = self.g.features.of_vectors([r["vid"] for r in self.records], method)
        self.photo_vids = self._per_fold(self.gallery_feats, lambda vid: vid)

    def inliers(self, q: int, vid: int, cfg: RerankConfig) -> tuple[int, float]:
        if q not in self._feats:
            t0 = time.perf_counter()
            f = extract(self.pq.images[q], cfg.method, max_side=cfg.max_side, nfeatures=cfg.nfeatures)
            self._feats[q] = (f, 1000 * (time.perf_counter() - t0))
        if (q, vid) not in self._inliers:
            t0 = time.perf_counter()
            n = count_inliers(self._feats[q][0], self.gallery_feats[vid], cfg.method, cfg)
            self._inliers[(q, vid)] = (n, 1000 * (time.perf_counter() - t0))
        return self._inliers[(q, vid)]

    def colours(self) -> tuple[list[np.ndarray], list[dict[str, list[np.ndarray]]], float]:
        """Query histograms, per fold the enrolled photos' (its held-out ones left out) per item, and ms per query."""
        if self._colours is None:
            t0 = time.perf_counter()
            qh = [colour_histogram(im) for im in self.pq.images]
            ms = 1000 * (time.perf_counter() - t0) / max(1, len(qh))
            stored = self.g.features.of_vectors([r["vid"] for r in self.records], COLOUR_METHOD)
            self._colours = (qh, self._per_fold(stored, lambda vid: stored[vid][1]), ms)
        return self._colours

    def measure(self, t: Trial) -> Trial:
        s = self.scores(t.view, t.flip, t.mode)
        t.ms_per_query = self.embeddings(t.view, t.flip)[1]
        full, cand, ms = s.copy(), np.where(self.cands, s, -np.inf), 0.0
        if t.colour:
            qh, ih, t_ms = self.colours()
            top = t.rerank["top_k"] if t.rerank else COLOUR_TOP
            for q in range(len(s)):
                full[q] = add_colour(full[q], self.items, qh[q], ih[self.fold[q]], t.colour, top)
                cand[q] = add_colour(cand[q], self.items, qh[q], ih[self.fold[q]], t.colour, top)
            t.ms_per_query += t_ms
        if t.rerank is not None:
            cfg = RerankConfig(method=t.rerank["method"], top_k=t.rerank["top_k"], per_item=t.rerank["per_item"],
                               min_inliers=t.rerank["min_inliers"])  # fmt: skip
            for q in range(len(s)):
                for row in (full[q], cand[q]):
                    ms += self._rerank_row(q, row, cfg)
            t.ms_per_query += ms / max(1, 2 * len(s))  # one of the two paths per real query
        right, right_cand = full.argmax(1) == self.truth, cand.argmax(1) == self.truth
        t.hits = (right.astype(np.float64) + right_cand) / 2
        t.top1 = float(right.mean()) if len(s) else 0.0
        t.top1_candidates = float(right_cand.mean()) if len(s) else 0.0
        self.final = full
        return t

    def _rerank_row(self, q: int, row: np.ndarray, cfg: RerankConfig) -> float:
        """Re-score ``row`` in place as :func:`~.rerank.verify_items` would; returns the ms it would take."""
        ms = 0.0
        for j in np.argsort(-row)[: cfg.top_k]:
            if not np.isfinite(row[j]):
                break
            n = 0
            for vid in self.photo_vids[self.fold[q]].get(self.items[j], [])[: cfg.per_item]:
                ni, mi = self.inliers(q, vid, cfg)
                n, ms = max(n, ni), ms + mi
            row[j] += verification_bonus(n, cfg)
        return ms + self._feats[q][1] if q in self._feats else ms


def calibrate(
    gallery: Gallery, model: Any, *, views: Sequence[str] = VIEWS, modes: Sequence[str] = MODES,
    flip: bool = True, colour: bool = True, rerank: bool = True, max_queries: int = 240, n_candidates: int = 10,
    min_gain_se: float = 1.645, seed: int = 0,
) -> Calibration:  # fmt: skip
    """Measure the query settings on pseudo-queries and return the best (see the module docstring).

    Raises ValueError when the gallery has fewer than 2 items or no readable photo.
    """
    t0 = time.perf_counter()
    gallery.check_model(model.fingerprint, "the calibrating model")
    if len(gallery.item_ids) < 2:
        raise ValueError(f"{gallery.root}: calibration needs at least 2 items, the gallery has {len(gallery.item_ids)}")
    pq = pseudo_queries(gallery, max_queries=max_queries, seed=seed)
    if not pq.truth:
        raise ValueError(f"{gallery.root}: no enrolled photo could be read for calibration ({pq.unreadable[:3]})")
    sc = _Scorer(gallery, model, pq, n_candidates, seed)
    d = PHOTO_DEFAULTS
    default_view = view_name(QueryOptions(aspect=d["aspect"], zoom=d["zoom"]))
    method = next((m for m in ("sift", "orb") if m in gallery.features.methods()), None) if rerank else None
    if method:
        sc.setup_rerank(method)
    default_rr = {"method": method, "top_k": d["rerank_top"], "per_item": d["rerank_per_item"],
                  "min_inliers": d["rerank_min_inliers"]} if method else None  # fmt: skip
    trials: list[Trial] = []
    steps: list[tuple[str, str, bool]] = []

    def step(option: str, current: Trial, variants: list[Trial]) -> Trial:
        """The cheapest variant that clearly beats ``current`` and is not clearly worse than the best
        variant, else ``current`` (so a re-ranking twice as costly must also be clearly better)."""
        measured = [sc.measure(v) for v in variants]
        trials.extend(measured)
        if not measured:
            return current
        top = max(measured, key=lambda v: (v.objective, -v.ms_per_query))
        good = [v for v in measured if v.beats(current, min_gain_se) and not top.beats(v, min_gain_se)]
        best = min(good, key=lambda v: (v.ms_per_query, -v.objective)) if good else top
        steps.append((option, best.name, bool(good)))
        return best if good else current

    cur = sc.measure(Trial(default_view, False, "max", None))  # the plain setting every step starts from
    trials.append(cur)
    cur = step("score mode", cur, [Trial(default_view, False, m, None) for m in modes if m != "max"])
    cur = step("view", cur, [Trial(v, False, cur.mode, None) for v in dict.fromkeys(views) if v != default_view])
    if flip:
        cur = step("mirror", cur, [Trial(cur.view, True, cur.mode, None)])
    if colour and COLOUR_METHOD in gallery.features.methods():
        cur = step("colour", cur, [Trial(cur.view, cur.flip, cur.mode, None, w) for w in COLOUR_WEIGHTS])
    if method:  # inliers are computed once per (query, photo) and reused by every variant
        grid = [{"method": method, "top_k": k, "per_item": p, "min_inliers": mi} for k in RERANK_GRID["top_k"]
                for p in RERANK_GRID["per_item"] for mi in RERANK_GRID["min_inliers"]]  # fmt: skip
        cur = step("re-ranking", cur, [Trial(cur.view, cur.flip, cur.mode, rr, cur.colour) for rr in grid])
    defaults = sc.measure(Trial(default_view, False, "max", default_rr))
    trials.append(defaults)
    if defaults.beats(cur, min_gain_se):  # never clearly worse than the uncalibrated defaults
        steps.append(("defaults", defaults.name, True))
        cur = defaults
    chosen = cur
    # 4. the open-set threshold at the chosen setting: own item in (known) and left out (unknown)
    sc.measure(chosen)
    final = sc.final
    top_known = final.max(1)
    correct = final.argmax(1) == sc.truth
    others = final.copy()
    others[np.arange(len(final)), sc.truth] = -np.inf
    top_unknown = others.max(1)
    scores = np.concatenate([top_known, top_unknown])
    known = np.concatenate([np.ones(len(final), bool), np.zeros(len(final), bool)])
    thresholds = np.linspace(scores.min() - 0.01, scores.max() + 0.01, 201)
    curves = open_set_curves(scores, np.concatenate([correct, np.zeros(len(final), bool)]), known, thresholds)
    thr, _ = recommend_threshold(curves)
    ua = float(curves["unknown_accept"][int(np.argmin(np.abs(thresholds - thr)))])
    n = {k: pq.kinds.count(k) for k in ("held_out", "synthetic") if k in pq.kinds}
    return Calibration(chosen, defaults, trials, thr, ua, n, time.perf_counter() - t0, pq.unreadable, steps)
