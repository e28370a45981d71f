#!/usr/bin/env python
"""The main job: train a head, enrol unseen items with calibration, match, report, run the camera.

python tools/demo.py --out demo_out                       # embedded synthetic catalog (no data needed)
python tools/demo.py --out demo_out --manifest data_manifests/grocery_unseen.csv --data-root ../shared/data/grocery --no-train

Every model is measured on the items held out from training, against the off-the-shelf backbone in
the same run. Outputs: demo_results.json, report/report.html, camera.mp4 and camera_events.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recognizer.demo import format_results, run_demo

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_head.yaml"


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
    ap.add_argument("--baseline", action="store_true", help="also measure a random-init copy of the backbone")
    ap.add_argument("--train-config", default=str(DEMO_CONFIG), help="head training recipe (YAML)")
    ap.add_argument("--no-train", action="store_true", help="no head training: the off-the-shelf backbone only")
    ap.add_argument("--no-calibrate", action="store_true", help="keep the tools' default query settings")
    ap.add_argument("--no-report", action="store_true", help="skip report.html")
    ap.add_argument("--no-camera", action="store_true", help="skip the camera run on a generated video")
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
        baseline=args.baseline,
        train_config=None if args.no_train else args.train_config,
        calibrate=not args.no_calibrate,
        report=not args.no_report,
        camera=not args.no_camera,
        progress=not args.no_progress,
    )
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
