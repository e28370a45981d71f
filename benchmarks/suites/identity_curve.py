"""Suite ``identity_curve``: unseen accuracy against the number and mix of training identities.

Points at about 100, 1,000 and 10,000 identities (the 56 real dev identities plus synthetic ones,
``recognizer.data.identities``) and the synthetic share (real items given half of every batch, or
none at all), each scored on the five dev protocols (grocery unseen 1-shot and few-shot, grocery
packages, COIL unseen, synthetic covers) against off-the-shelf lite0 in the same run, with exact
McNemar p (``recognizer.train.curve.run_curve``). ``mode="head"`` trains a residual head on pooled
features (seconds per epoch); ``mode="top"`` trains lite0's top block on the cached trunk maps.
Needs the map cache (``tools/train.py --cache-maps DIR``: ~40 min on a shared 2-core CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import MANIFESTS, SHARED_DATA

QUICK = {"points": (100,), "epochs": 1, "shares": False}


def run(
    cache_dir: str | Path = "runs/items/cache",
    points: tuple[int, ...] = (100, 1000, 10000),
    epochs: int = 4,
    mode: str = "head",
    shares: bool = True,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    from recognizer.train.curve import run_curve

    cache = Path(cache_dir)
    if not (cache / "train_syn.npz").is_file():
        return {"skipped": f"{cache}: no map cache (build it with tools/train.py --cache-maps {cache})"}
    res = run_curve(cache, MANIFESTS, SHARED_DATA, points=tuple(points), epochs=epochs, mode=mode, shares=shares,
                    out_dir=Path(out_dir) if out_dir else None)  # fmt: skip
    return {"mode": mode, "markdown": res["markdown"], "results": res["results"], "stats": res["stats"]}
