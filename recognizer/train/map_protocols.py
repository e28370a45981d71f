"""The dev protocols scored from cached trunk maps: many models compared on one set of embeddings.

Each protocol is a gallery (``role=gallery`` rows, seen whole) and queries (``role=query`` rows,
framed ``crop:0.6`` as the photo tools frame them), split by class: only items no model trained
on. Every query is scored against every gallery item by the item's best-matching vector
(``max``, the gallery's default), top-1 over the whole gallery. Because all models share the
frozen trunk, one cache of each image serves them all; the off-the-shelf model is the untrained
``TopBlock`` on the same maps, so each row is paired with it query by query (McNemar exact p).
This reproduces ``evaluate_protocols`` for ``lite0@160`` (same views, same scoring) at a
fraction of the cost; the shipped model is also checked through the real enrolment path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluation.metrics import bootstrap_ci, mcnemar_exact
from .map_data import MapSet
from .trunk_cache import TopBlock, embed_maps


@dataclass
class Protocol:
    """Gallery and query rows of one protocol, as keys into cached map sets."""

    name: str
    gallery_keys: list[str]
    gallery_items: list[str]
    query_keys: list[str]
    query_items: list[str]


def manifest_protocol(name: str, manifest, query_view: str = "crop:0.6", items: set[str] | None = None) -> Protocol:
    """A protocol from a manifest (optionally only ``items``), with keys as ``map_data.cache_rows`` writes them."""
    keep = [r for r in manifest.rows if items is None or r.item_id in items]
    gal = [r for r in keep if r.role == "gallery"]
    qry = [r for r in keep if r.role == "query"]
    return Protocol(
        name,
        [f"{manifest.resolve(r)}|whole" for r in gal],
        [r.item_id for r in gal],
        [f"{manifest.resolve(r)}|{query_view}" for r in qry],
        [r.item_id for r in qry],
    )


class MapEmbeddings:
    """Embeddings of every cached evaluation map under one model, looked up by key."""

    def __init__(self, top: TopBlock, sets: list[MapSet]):
        self.index: dict[str, int] = {}
        embs = []
        for s in sets:
            base = sum(len(e) for e in embs)
            embs.append(embed_maps(top, s.maps))
            for i, k in enumerate(s.keys.tolist()):
                self.index.setdefault(_norm(k), base + i)
        self.emb = np.concatenate(embs)

    def __call__(self, keys: list[str]) -> np.ndarray:
        keys = [_norm(k) for k in keys]
        missing = [k for k in keys if k not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} images are not in the map cache, e.g. {missing[0]}")
        return self.emb[[self.index[k] for k in keys]]


def _norm(key: str) -> str:
    """``path|view`` with the path made absolute (against the working directory) and normalised."""
    path, sep, rest = key.partition("|")
    return os.path.abspath(path) + sep + rest


def protocol_hits(emb: MapEmbeddings, p: Protocol) -> np.ndarray:
    """Per query: is the best item (max over its gallery vectors) the right one?"""
    g, q = emb(p.gallery_keys), emb(p.query_keys)
    items = sorted(set(p.gallery_items))
    col = {it: i for i, it in enumerate(items)}
    sims = q @ g.T
    best = np.full((len(q), len(items)), -np.inf, np.float32)
    for j, it in enumerate(p.gallery_items):
        best[:, col[it]] = np.maximum(best[:, col[it]], sims[:, j])
    pred = np.asarray(items)[best.argmax(1)]
    return pred == np.asarray(p.query_items)


def compare_models(
    tops: dict[str, TopBlock], eval_sets: list[MapSet], protocols: list[Protocol], baseline: str
) -> dict[str, dict[str, dict]]:
    """``{protocol: {model: {top1, ci95, queries, vs_baseline: {diff, mcnemar_p, only_base, only_model}}}}``."""
    hits = {}
    for label, top in tops.items():
        emb = MapEmbeddings(top, eval_sets)
        hits[label] = {p.name: protocol_hits(emb, p) for p in protocols}
    out: dict[str, dict[str, dict]] = {}
    for p in protocols:
        base = hits[baseline][p.name]
        cells = {}
        for label in tops:
            h = hits[label][p.name]
            lo, hi = bootstrap_ci(h.astype(float), n_boot=500, seed=0)
            cell = {"top1": float(h.mean()), "ci95": [lo, hi], "queries": int(len(h))}
            if label != baseline:
                only_b, only_m, pval = mcnemar_exact(base, h)
                cell["vs_baseline"] = {"diff": float(h.mean() - base.mean()), "mcnemar_p": pval,
                                       "only_baseline_right": only_b, "only_model_right": only_m}  # fmt: skip
            cells[label] = cell
        out[p.name] = cells
    return out


def curve_markdown(res: dict[str, dict[str, dict]], baseline: str) -> str:
    """Models as rows, protocols as columns: top-1 (difference vs baseline, McNemar p)."""
    names = list(res)
    models = list(next(iter(res.values())))
    lines = ["| model | " + " | ".join(f"{n} ({res[n][baseline]['queries']} q)" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for m in models:
        cells = []
        for n in names:
            c = res[n][m]
            vs = c.get("vs_baseline")
            cells.append(f"{c['top1']:.3f}" + (f" ({vs['diff']:+.3f}, p={vs['mcnemar_p']:.2g})" if vs else " (baseline)"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_sets(cache_dir: Path, names: list[str]) -> list[MapSet]:
    return [MapSet.load(Path(cache_dir) / f"{n}.npz") for n in names]
