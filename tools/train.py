#!/usr/bin/env python
"""Train an embedding head with metric learning on cached frozen-backbone features (stage 1).

  python tools/train.py --config configs/grocery_head.yaml --manifest data_manifests/grocery_train.csv \
         --data-root ../shared/data/grocery --out runs/grocery_head [epochs=5 loss.args.margin=20]

Writes OUT/model (safetensors + JSON: enroll with --model OUT/model), OUT/config.yaml,
OUT/log.csv and OUT/summary.json. The best epoch is chosen by Recall@1 on validation
classes held out from the training classes.
"""

from __future__ import annotations

import argparse
import json
import sys

from recognizer.manifest import ManifestError
from recognizer.train import ConfigError, run_training


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML run config (defaults: recognizer.train.DEFAULTS)")
    ap.add_argument("--manifest", required=True, help="training manifest (rows with split train/val or none)")
    ap.add_argument("--data-root")
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    args = ap.parse_args(argv)
    try:
        summary = run_training(args.config, args.overrides, args.manifest, args.data_root, args.out)
    except (ConfigError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
