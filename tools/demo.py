#!/usr/bin/env python
"""The main job: embed a catalog with an off-the-shelf backbone and measure nearest-neighbour accuracy.

python tools/demo.py --out demo_out                       # embedded synthetic catalog (no data needed)
python tools/demo.py --out demo_out --manifest data_manifests/grocery_unseen.csv --data-root ../shared/data/grocery
"""

from __future__ import annotations

import argparse
import sys

from recognizer.demo import format_results, run_demo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="output folder (results JSON, generated catalog)")
    ap.add_argument(
        "--manifest", help="manifest with role=gallery and role=query rows (default: synthetic catalog)"
    )
    ap.add_argument("--data-root", help="folder the manifest's paths are relative to (default: its folder)")
    ap.add_argument(
        "--model",
        default="lite0",
        help="backbone name (lite0/lite1/lite2, timm/..., torchvision/...) or model folder",
    )
    ap.add_argument("--items", type=int, default=60, help="synthetic catalog: number of items")
    ap.add_argument("--wild", type=int, default=5, help="synthetic catalog: wild photos per item")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, help="override the model's input size (e.g. 160)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, help="decoding workers (default: by core count)")
    ap.add_argument(
        "--all-items", action="store_true", help="evaluate on all items, not only split=test (unseen)"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the random-init baseline")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    results = run_demo(
        args.out,
        manifest=args.manifest,
        data_root=args.data_root,
        model=args.model,
        n_items=args.items,
        n_wild=args.wild,
        seed=args.seed,
        input_size=args.input_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        unseen_only=not args.all_items,
        baseline=not args.no_baseline,
        progress=not args.no_progress,
    )
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
