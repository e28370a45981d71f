#!/usr/bin/env python
"""Write a PNG grid of augmented training samples, so a person can look at what the model sees.

  python tools/augment_grid.py --manifest data_manifests/train_grocery_coil.csv --data-root ../shared/data \
         --out runs/augment_grid.png [--n 8] [--config configs/grocery_head.yaml] [augment.background=1.0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from recognizer.data.imageio import load_image
from recognizer.data.manifest import load_manifest
from recognizer.train import ConfigError, augment_grid, load_config, make_augment


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--data-root")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=8, help="images (rows)")
    ap.add_argument(
        "--copies", type=int, default=5, help="augmented copies per image (columns after the original)"
    )
    ap.add_argument("--config")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = load_manifest(args.manifest, args.data_root)
    rng = np.random.default_rng(args.seed)
    rows = [m.rows[i] for i in rng.choice(len(m.rows), size=min(args.n, len(m.rows)), replace=False)]
    out = augment_grid(
        [load_image(m.resolve(r)) for r in rows],
        make_augment(cfg["augment"], args.seed),
        args.out,
        args.copies,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
