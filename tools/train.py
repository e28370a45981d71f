#!/usr/bin/env python
"""Train an embedding model with metric learning (stage 1: head on frozen features; stage 2: unfreeze top blocks).

  python tools/train.py --config configs/grocery_head.yaml --manifest data_manifests/grocery_train.csv \\
         --data-root ../shared/data/grocery --out runs/grocery_head [stage1.epochs=5 loss.args.margin=20]

Writes OUT/model (safetensors + JSON: enroll with --model OUT/model), OUT/config.yaml, OUT/log.csv,
OUT/log.json, OUT/summary.json and OUT/checkpoint.pt (after every epoch; --resume continues from it).
The best epoch is chosen by Recall@1 on validation classes held out from the training classes.
Data-parallel: torchrun --nproc_per_node N tools/train.py ... (gloo on CPU, NCCL on GPU).

Many identities on a CPU (the trunk cached once, before lite0's top block; see recognizer.train.curve):

  python tools/train.py --cache-maps runs/items/cache                 # eval sets, real + 9,944 synthetic identities
  python tools/train.py --curve runs/items/cache --mode top --points 10000 --epochs 2 --out runs/items/top10k
  python tools/train.py --curve runs/items/cache --mode head --out runs/items/curve   # the identity curve
"""

from __future__ import annotations

import argparse
import json
import sys

from recognizer.data.manifest import ManifestError
from recognizer.models.model import ModelLoadError
from recognizer.train import ConfigError, run_training


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML run config (defaults: recognizer.train.DEFAULTS)")
    ap.add_argument("--manifest", help="training manifest (rows with split train/val or none)")
    ap.add_argument("--cache-maps", metavar="DIR", help="build the trunk-map cache of the identity curve in DIR")
    ap.add_argument("--curve", metavar="DIR", help="run the identity curve on the map cache in DIR")
    ap.add_argument("--mode", choices=["head", "top"], default="head", help="--curve: residual head or top block")
    ap.add_argument("--points", type=int, nargs="+", default=[100, 1000, 10000], help="--curve: identities per point")
    ap.add_argument("--epochs", type=int, default=4, help="--curve: epochs per point")
    ap.add_argument("--no-shares", action="store_true", help="--curve: skip the synthetic-share points")
    ap.add_argument("--data-root")
    ap.add_argument("--out", help="run folder (required except with --cache-maps)")
    ap.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    ap.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest paths outside --data-root"
    )
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.curve and not args.out:
        ap.error("--curve needs --out")
    if args.cache_maps or args.curve:
        return _curve(args)
    if not args.manifest or not args.out:
        ap.error("--manifest and --out are required (or --cache-maps / --curve)")
    try:
        summary = run_training(
            args.config, args.overrides, args.manifest, args.data_root, args.out,
            resume=args.resume, allow_outside_root=args.allow_outside_root,
        )  # fmt: skip
    except (ConfigError, ManifestError, ModelLoadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary:  # rank 0
        print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
        if summary["skipped"]:
            print(f"{len(summary['skipped'])} input(s) skipped, listed in summary.json", file=sys.stderr)
    return 0


def _curve(args) -> int:
    from pathlib import Path

    from recognizer.train.curve import build_caches, run_curve
    from recognizer.train.top_trainer import load_top_config

    repo = Path(__file__).resolve().parent.parent
    shared = Path(args.data_root) if args.data_root else repo.parent / "shared" / "data"
    if args.cache_maps:
        took = build_caches(Path(args.cache_maps), repo / "data_manifests", shared)
        print(json.dumps({"computed_seconds": took}, indent=2))
        return 0
    try:
        cfg = load_top_config(args.config)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = run_curve(Path(args.curve), repo / "data_manifests", shared, points=tuple(args.points), epochs=args.epochs,
                    mode=args.mode, shares=not args.no_shares, out_dir=Path(args.out), cfg=cfg)  # fmt: skip
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
