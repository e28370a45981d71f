"""The identity curve: unseen accuracy against the number (and the mix) of training identities.

Training sets are assembled from cached map sets (``map_data``): the real dev identities (grocery
training items without any packaged good, so the packages protocol stays unseen, and COIL training
objects every 10 degrees; each photo clean plus one augmented copy, background paste on or off)
and the first ``n - real`` synthetic identities (catalog image + 2 wild photos each; their catalog
images' augmented copies where cached). Every model of a curve is scored on the same cached
evaluation maps against the off-the-shelf model (``map_protocols``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import load_manifest
from .map_data import MapSet
from .map_protocols import Protocol, compare_models, curve_markdown, load_sets, manifest_protocol
from .top_trainer import TopTrainConfig, make_net, top_state, train_top_block
from .trunk_cache import TopBlock

EVAL_SETS = ("eval_grocery_gallery", "eval_grocery_query", "eval_coil_gallery", "eval_coil_query",
             "eval_covers_gallery", "eval_covers_query")  # fmt: skip
PROTOCOL_NAMES = ("grocery 1-shot", "grocery few-shot", "grocery packages", "COIL unseen", "synthetic covers")


def dev_protocols(manifests: Path, shared: Path, cache_dir: Path) -> list[Protocol]:
    """The five dev protocols, keyed like the cache (grocery and COIL from ``shared``, covers from the cache)."""
    g1 = load_manifest(manifests / "grocery_unseen.csv", shared / "grocery", strict=True)
    gf = load_manifest(manifests / "grocery_unseen_fewshot.csv", shared / "grocery", strict=True)
    gp = load_manifest(manifests / "grocery_packages.csv", shared / "grocery", strict=True)
    co = load_manifest(manifests / "coil_unseen.csv", shared / "coil", strict=True)
    cv = load_manifest(cache_dir / "covers" / "manifest.csv", strict=True)
    return [manifest_protocol(n, m) for n, m in zip(PROTOCOL_NAMES, (g1, gf, gp, co, cv), strict=True)]


def training_set(cache_dir: Path, n_identities: int | None, *, background: bool, synthetic: bool = True,
                 real: bool = True, pooled: bool = False) -> MapSet:  # fmt: skip
    """Real identities (clean + one augmented copy) plus synthetic ones up to ``n_identities`` in all.

    ``pooled``: the pooled-feature files (``pooled_<set>.npz``) instead of the trunk maps."""
    pre = "pooled_" if pooled else ""
    load = lambda n: MapSet.load(cache_dir / f"{pre}{n}.npz")  # noqa: E731
    bg = "bgon" if background else "bgoff"
    parts = []
    n_real = 0
    if real:
        parts += [load("train_real_clean"), load(f"train_real_aug_{bg}")]
        n_real = len(set(parts[0].items.tolist()))
    if synthetic:
        n_syn = (n_identities or 10**9) - n_real
        if n_syn > 0:
            syn = load("train_syn")
            keep_items = set(sorted(set(syn.items.tolist()))[:n_syn])
            parts.append(syn.subset(np.isin(syn.items, list(keep_items))))
            aug = cache_dir / f"{pre}train_syn_aug_{bg}.npz"
            if aug.is_file():
                a = MapSet.load(aug)
                parts.append(a.subset(np.isin(a.items, list(keep_items))))
    if not parts:
        raise ValueError("a training set needs real or synthetic identities")
    return MapSet.concat(parts)


def run_points(
    cache_dir: Path,
    protocols: list[Protocol],
    points: dict[str, dict[str, Any]],
    cfg: TopTrainConfig,
    *,
    out_dir: Path | None = None,
    pooled: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model per point (``{label: {n_identities, background, synthetic, real, shares, loss, epochs}}``),
    score all against the off-the-shelf model in one comparison, and return results + stats."""
    from dataclasses import replace

    baseline = "lite0@160 (off the shelf)"
    pre = "pooled_" if pooled else ""
    eval_sets = load_sets(cache_dir, [pre + n for n in EVAL_SETS])
    tops: dict[str, Any] = {baseline: make_net(eval_sets[0].maps, cfg.input_size)}
    stats: dict[str, Any] = {}
    for label, p in points.items():
        data = training_set(cache_dir, p.get("n_identities"), background=p.get("background", False),
                            synthetic=p.get("synthetic", True), real=p.get("real", True), pooled=pooled)  # fmt: skip
        run_cfg = replace(cfg, **{k: p[k] for k in ("shares", "loss", "epochs", "lr", "head_lr", "loss_lr") if k in p})
        if run_cfg.shares and "shares" not in p:  # the recipe's shares, for the sources this point has
            present = set(data.sources.tolist())
            run_cfg = replace(run_cfg, shares={k: v for k, v in run_cfg.shares.items() if k in present} or None)
        log(f"== {label}: {len(set(data.items.tolist()))} identities, {len(data)} maps")
        top, st = train_top_block(data, run_cfg, log=log)
        tops[label], stats[label] = top, st
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_file

            state = top_state(top) if isinstance(top, TopBlock) else {"head.fc.weight": top.head.fc.weight.detach()}
            save_file(state, str(out_dir / f"{_slug(label)}.safetensors"))
    res = compare_models(tops, eval_sets, protocols, baseline)
    out = {"results": res, "stats": stats, "markdown": curve_markdown(res, baseline)}
    if out_dir is not None:
        (out_dir / "curve.json").write_text(json.dumps({k: v for k, v in out.items()}, indent=2, default=str))
        (out_dir / "curve.md").write_text(out["markdown"])
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


AUGMENT_OFF = {"crop_scale": [0.5, 1.0], "flip": 0.5, "color": 0.3, "background": 0.0, "mask": "auto",
               "background_folder": None}  # fmt: skip
AUGMENT_ON = dict(AUGMENT_OFF, background=0.5)


def real_training_rows(manifests: Path, shared: Path):
    """``(manifest, rows)`` of the real dev identities: grocery training items except every packaged good
    (the packages protocol stays unseen) and COIL training objects every 10 degrees."""
    packages = {r.item_id for r in load_manifest(manifests / "grocery_packages.csv", shared / "grocery").rows}
    tm = load_manifest(manifests / "train_grocery_coil.csv", shared, strict=True)

    def keep(r) -> bool:
        if r.item_id in packages:
            return False
        if r.path.startswith("coil/"):
            return int(r.path.rsplit("__", 1)[1].split(".")[0]) % 10 == 0
        return True

    return tm, [r for r in tm.rows if keep(r)]


def build_caches(
    cache_dir: Path,
    manifests: Path,
    shared: Path,
    *,
    n_synthetic: int = 9944,
    per_item: int = 3,
    input_size: int = 160,
    num_workers: int = 1,
    threads: int = 2,
) -> dict[str, float]:
    """Every map set the curve needs (sets already on disk are kept); returns seconds per set computed."""
    from ..data.synthetic import generate_covers
    from ..models.model import build_model
    from .map_data import cache_rows, cache_synthetic
    from .trunk_cache import Trunk, TrunkRunner

    cache_dir.mkdir(parents=True, exist_ok=True)
    model = build_model({"backbone": "lite0", "input_size": input_size}).eval()
    runner = TrunkRunner(Trunk(model), input_size, threads=threads)
    pre, took = model.preprocess, {}

    def put(name: str, make: Callable[[], MapSet]) -> None:
        if not (cache_dir / f"{name}.npz").is_file():
            ms = make()
            ms.save(cache_dir / f"{name}.npz")
            took[name] = ms.seconds

    rows: dict = {}
    for n in ("grocery_unseen", "grocery_unseen_fewshot", "grocery_packages"):
        gm = load_manifest(manifests / f"{n}.csv", shared / "grocery", strict=True)
        rows.update({(r.path, r.role): r for r in gm.rows})
    role = lambda want: [r for (_, ro), r in rows.items() if ro == want]  # noqa: E731
    put("eval_grocery_gallery", lambda: cache_rows(runner, pre, gm, role("gallery"), "grocery", num_workers=num_workers))
    put("eval_grocery_query", lambda: cache_rows(runner, pre, gm, role("query"), "grocery", view="crop:0.6",
                                                 num_workers=num_workers))  # fmt: skip
    cm = load_manifest(manifests / "coil_unseen.csv", shared / "coil", strict=True)
    vm = load_manifest(generate_covers(cache_dir / "covers", n_items=100, n_queries=3, seed=0), strict=True)
    for name, m, src in (("coil", cm, "coil"), ("covers", vm, "covers")):
        for ro, view in (("gallery", "whole"), ("query", "crop:0.6")):
            put(f"eval_{name}_{ro}", lambda m=m, ro=ro, view=view, src=src: cache_rows(
                runner, pre, m, [r for r in m.rows if r.role == ro], src, view=view, num_workers=num_workers))
    tm, tr = real_training_rows(manifests, shared)
    src_of = lambda r: "grocery" if r.path.startswith("grocery/") else "coil"  # noqa: E731
    for name, aug in (("train_real_clean", None), ("train_real_aug_bgoff", AUGMENT_OFF), ("train_real_aug_bgon", AUGMENT_ON)):
        put(name, lambda aug=aug: MapSet.concat([
            cache_rows(runner, pre, tm, [r for r in tr if src_of(r) == s], s, augment=aug, seed=1, num_workers=num_workers)
            for s in ("grocery", "coil")]))  # fmt: skip
    n_aug = min(944, n_synthetic)
    for name, aug in (("train_syn_aug_bgoff", AUGMENT_OFF), ("train_syn_aug_bgon", AUGMENT_ON)):
        put(name, lambda aug=aug: cache_synthetic(runner, pre, 0, n_aug, per_item=per_item, augment=aug, photos=[0],
                                                  size=input_size, num_workers=num_workers))  # fmt: skip
    put("train_syn", lambda: cache_synthetic(runner, pre, 0, n_synthetic, per_item=per_item, size=input_size,
                                             num_workers=num_workers))  # fmt: skip
    return took


REAL_HALF = {"grocery": 0.25, "coil": 0.25, "synthetic": 0.5}


def curve_points(
    points: tuple[int, ...] = (100, 1000, 10000), shares: bool = True, synthetic_only: bool = False
) -> dict[str, dict[str, Any]]:
    """The curve's training sets by label: real only, then each size; with ``shares`` the sizes above the first
    with real items given half of every batch; with ``synthetic_only`` the largest with no real identity."""
    pts: dict[str, dict[str, Any]] = {"56 real": {"synthetic": False}}
    for n in points:
        pts[f"{n:,} (56 real + {n - 56:,} syn)"] = {"n_identities": n}
    if shares:
        for n in points[1:]:
            pts[f"{n:,}, real share 0.5"] = {"n_identities": n, "shares": REAL_HALF}
    if synthetic_only:
        pts[f"{points[-1]:,} syn only"] = {"n_identities": points[-1], "real": False}
    return pts


def run_curve(
    cache_dir: Path,
    manifests: Path,
    shared: Path,
    *,
    points: tuple[int, ...] = (100, 1000, 10000),
    epochs: int = 4,
    mode: str = "head",
    shares: bool = True,
    out_dir: Path | None = None,
    cfg: TopTrainConfig | None = None,
) -> dict[str, Any]:
    """The identity curve: ``mode="head"`` (residual head on pooled features) or ``"top"`` (lite0's top block
    on trunk maps), every point against off-the-shelf lite0 on the five dev protocols."""
    if mode not in ("head", "top"):
        raise ValueError(f"mode {mode!r}; valid: head, top")
    if mode == "head":
        pool_cached(cache_dir)
    prots = dev_protocols(manifests, shared, cache_dir)
    from dataclasses import replace

    cfg = replace(cfg or TopTrainConfig(), epochs=epochs)
    res = run_points(cache_dir, prots, curve_points(tuple(points), shares), cfg, out_dir=out_dir,
                     pooled=mode == "head")  # fmt: skip
    return {"mode": mode, **res}


def pool_cached(cache_dir: Path, input_size: int = 160) -> list[str]:
    """``pooled_<set>.npz`` (1280-d features under the pretrained top block) for every cached set lacking one."""
    import torch

    from .top_trainer import make_net

    done = []
    for f in sorted(cache_dir.glob("*.npz")):
        out = cache_dir / f"pooled_{f.name}"
        if f.name.startswith("pooled_") or out.is_file():
            continue
        ms = MapSet.load(f)
        top = make_net(ms.maps, input_size).eval()
        with torch.inference_mode():
            feats = [top.pooled(c.float()).numpy().astype(np.float16) for c in torch.from_numpy(ms.maps).split(512)]
        MapSet(np.concatenate(feats), ms.items, ms.sources, ms.keys, ms.seconds).save(out)
        done.append(out.name)
    return done
