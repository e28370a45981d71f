#!/usr/bin/env python
"""Train an embedding model with metric learning (stage 1: head on frozen features; stage 2: unfreeze top blocks).

  python tools/train.py --config configs/grocery_head.yaml --manifest data_manifests/grocery_train.csv \\
         --data-root ../shared/data/grocery --out runs/grocery_head [stage1.epochs=5 loss.args.margin=20]

Writes OUT/model (safetensors + JSON: enroll with --model OUT/model), OUT/config.yaml, OUT/log.csv,
OUT/log.json, OUT/summary.json and OUT/checkpoint.pt (after every epoch; --resume continues from it).
The best epoch is chosen by Recall@1 on validation classes held out from the training classes.
Data-parallel: torchrun --nproc_per_node N tools/train.py ... (gloo on CPU, NCCL on GPU).
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
    ap.add_argument("--manifest", required=True, help="training manifest (rows with split train/val or none)")
    ap.add_argument("--data-root")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    ap.add_argument(
        "--allow-outside-root", action="store_true", help="accept manifest paths outside --data-root"
    )
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after the options
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


if __name__ == "__main__":
    sys.exit(main())
