#!/usr/bin/env python
"""Build manifests (CSV) from image folders, the shared data sets, or the synthetic catalog.

python tools/make_manifest.py imagefolder PHOTOS_ROOT --out PHOTOS_ROOT/manifest.csv [--split train] [--role gallery]
python tools/make_manifest.py grocery ../shared/data/grocery --out-dir data_manifests
python tools/make_manifest.py coil ../shared/data/coil --out-dir data_manifests
python tools/make_manifest.py synthetic demo_data --items 40 --wild 5 --seed 0
"""

from __future__ import annotations

import argparse
import sys

from recognizer.data.datasets import build_manifests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["imagefolder", "grocery", "coil", "combined", "synthetic"])
    ap.add_argument("root", help="photo folder (imagefolder/grocery/coil) or output folder (synthetic)")
    ap.add_argument("--out", help="imagefolder: output CSV (default ROOT/manifest.csv)")
    ap.add_argument("--out-dir", default="data_manifests", help="grocery/coil: folder for the CSVs")
    ap.add_argument(
        "--split", default="", choices=["", "train", "val", "test"], help="imagefolder: split column"
    )
    ap.add_argument("--role", default="", choices=["", "gallery", "query"], help="imagefolder: role column")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the class split and candidate sets (default: each source's own)",
    )
    ap.add_argument("--unseen-fraction", type=float, default=0.33, help="share of classes held out as unseen")
    ap.add_argument("--items", type=int, default=40, help="synthetic: number of items")
    ap.add_argument("--wild", type=int, default=5, help="synthetic: wild photos per item")
    args = ap.parse_args(argv)
    for path, n in build_manifests(
        args.kind,
        args.root,
        out=args.out,
        out_dir=args.out_dir,
        split=args.split,
        role=args.role,
        seed=args.seed,
        unseen_fraction=args.unseen_fraction,
        n_items=args.items,
        n_wild=args.wild,
    ):
        print(f"wrote {path} ({n} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
