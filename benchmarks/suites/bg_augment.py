"""Suite ``bg_augment``: background augmentation on vs off, same data, scored on unseen items; plus the mask grid.

Two top-block models train on the same cached identities (the real dev items and ~944 synthetic
ones at the 1,000-identity point); they differ only in the augmented copy of each clean-background
photo (grocery catalog images, COIL objects, synthetic catalog shots): pasted on a real photo
(``augment.background: 0.5``, mask ``auto``) or not. Both are scored against off-the-shelf lite0
on the five dev protocols, in one run. The grid shows what the masks look like: GrabCut on
in-store photos next to the plain-background threshold on catalog and COIL photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..common import MANIFESTS, SHARED_DATA

QUICK = {"points": 100, "epochs": 1}
# Not run by the suite: ``mask_grid`` (tools: see the module's docstring) writes the PNG of masks.


def mask_grid(out_png: str | Path, data_root: str | Path = SHARED_DATA, n: int = 6, seed: int = 0) -> dict[str, Any]:
    """PNG rows: image | auto mask | GrabCut mask | pasted (GrabCut), for in-store, catalog and COIL photos."""
    import cv2

    from recognizer.data.backgrounds import load_backgrounds
    from recognizer.data.imageio import load_image
    from recognizer.data.manifest import load_manifest
    from recognizer.train.augment import BackgroundPaste, foreground_mask

    m = load_manifest(MANIFESTS / "train_grocery_coil.csv", data_root)
    rng = np.random.default_rng(seed)
    groups = {
        "in-store": [r for r in m.rows if "/train/" in r.path or "/val/" in r.path],
        "catalog (white)": [r for r in m.rows if "_Iconic" in r.path],
        "COIL (black)": [r for r in m.rows if r.path.startswith("coil/")],
    }
    paste = BackgroundPaste(load_backgrounds(), p=1.0, mask_method="grabcut", seed=seed)
    rows, found = [], {}
    cell = 128

    def overlay(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            out = (rgb * 0.3).astype(np.uint8)
            cv2.putText(out, "no mask", (8, rgb.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 80, 80), 1)
            return out
        tint = rgb.copy()
        tint[mask == 0] = (tint[mask == 0] * 0.25 + np.array([0, 0, 120]) * 0.75).astype(np.uint8)
        return tint

    for name, rs in groups.items():
        pick = [rs[i] for i in rng.choice(len(rs), size=min(n, len(rs)), replace=False)]
        found[name] = {"auto": 0, "grabcut": 0, "n": len(pick)}
        for r in pick:
            rgb = cv2.resize(load_image(m.resolve(r)), (cell, cell), interpolation=cv2.INTER_AREA)
            auto, grab = foreground_mask(rgb, "auto"), foreground_mask(rgb, "grabcut")
            found[name]["auto"] += auto is not None
            found[name]["grabcut"] += grab is not None
            rows.append(np.hstack([rgb, overlay(rgb, auto), overlay(rgb, grab),
                                   cv2.resize(paste(rgb), (cell, cell))]))  # fmt: skip
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return {"png": str(out), "columns": ["image", "auto mask", "GrabCut mask", "pasted with GrabCut"], "masks_found": found}


def run(
    cache_dir: str | Path = "runs/items/cache",
    points: int = 1000,
    epochs: int = 4,
    mode: str = "head",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Background paste on/off at ``points`` identities, each against off-the-shelf lite0 (cached maps;
    ``mode`` as in the identity curve: ``head`` on pooled features, ``top`` the top block)."""
    from recognizer.train.curve import dev_protocols, pool_cached, run_points
    from recognizer.train.top_trainer import TopTrainConfig

    cache = Path(cache_dir)
    if not (cache / "train_real_aug_bgon.npz").is_file():
        return {"skipped": f"{cache}: no map cache (build it with tools/train.py --cache-maps)"}
    if mode == "head":
        pool_cached(cache)
    prots = dev_protocols(MANIFESTS, SHARED_DATA, cache)
    pts = {f"{points:,} ids, background {s}": {"n_identities": points, "background": s == "on"} for s in ("off", "on")}
    res = run_points(cache, prots, pts, TopTrainConfig(epochs=epochs), out_dir=Path(out_dir) if out_dir else None,
                     pooled=mode == "head")  # fmt: skip
    return {"markdown": res["markdown"], "results": res["results"], "stats": res["stats"]}
