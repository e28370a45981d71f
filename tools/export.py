#!/usr/bin/env python
"""Export the embedding model for deployment: ONNX (fp32, optionally int8), verified against PyTorch.

  python tools/export.py --model lite0@160 --format onnx --out exports/lite0_160
  python tools/export.py --model runs/grocery_head/model --format onnx --out exports/head \
         --int8 static --calibration data_manifests/grocery_train.csv --data-root ../shared/data/grocery
  python tools/export.py --model lite0 --format onnx --out exports/lite0 --int8 dynamic \
         --eval-manifest data_manifests/grocery_unseen.csv --data-root ../shared/data/grocery

Writes model.onnx (+ model.int8-MODE.onnx), each with a JSON sidecar (model description and
fingerprint, preprocessing, opset, precision, verification figures, SHA-256), and
MODEL_CARD.md + model_card.json (size, parameters, input, throughput, latency, top-1 with
--eval-manifest). Verification runs on real images (--calibration's, else the synthetic
catalog): fp32 needs every cosine >= 0.999, int8 a mean >= 0.98 and a min >= 0.95; below
that the tool fails with the figures and writes nothing for that model.

Use an export with --backend onnx --onnx OUT/model.onnx in enroll, match, report and camera.
"""

from __future__ import annotations

import argparse
import os
import sys

from recognizer.data.manifest import ManifestError
from recognizer.deploy import ExportError, export_model, write_model_card
from recognizer.models.model import ModelLoadError, load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="lite0|lite1|lite2[@SIZE] or a trained model folder")
    ap.add_argument("--format", choices=["onnx"], default="onnx")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument(
        "--int8", choices=["dynamic", "static"], action="append", help="also write an int8 model (repeatable)"
    )
    ap.add_argument(
        "--calibration", metavar="MANIFEST", help="real images for verification and static int8 calibration"
    )
    ap.add_argument(
        "--data-root", help="folder the manifests' paths are relative to (default: each manifest's folder)"
    )
    ap.add_argument("--n-verify", type=int, default=32, help="images to verify each export on")
    ap.add_argument("--n-calibration", type=int, default=64, help="images to calibrate static int8 on")
    ap.add_argument("--exporter", choices=["auto", "dynamo", "legacy"], default="auto")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: torch's)")
    ap.add_argument(
        "--eval-manifest", help="model card accuracy: manifest with role=gallery and role=query rows"
    )
    ap.add_argument("--query-stride", type=int, default=1, help="model card accuracy: every n-th query")
    ap.add_argument(
        "--speed-repeats", type=int, default=5, help="model card: timed batches of 32 per variant"
    )
    ap.add_argument(
        "--latency-runs", type=int, default=30, help="model card: timed single images per variant"
    )
    ap.add_argument("--no-card", action="store_true", help="skip MODEL_CARD.md (and its measurements)")
    args = ap.parse_args(argv)
    if args.int8 and "static" in args.int8 and not args.calibration:
        print(
            "note: no --calibration manifest; static int8 calibrates on the synthetic catalog",
            file=sys.stderr,
        )
    try:
        model = load_model(args.model)
        exports = export_model(
            model, args.out, int8=args.int8, calibration=args.calibration, data_root=args.data_root,
            n_verify=args.n_verify, n_calibration=args.n_calibration, opset=args.opset, exporter=args.exporter,
            threads=args.threads, log=print,
            model_spec=os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
        )  # fmt: skip
        for e in exports:
            v = e.verification
            print(
                f"wrote {e.path} ({e.precision}, {e.path.stat().st_size / 1e6:.1f} MB, fingerprint "
                f"{e.sidecar['fingerprint']}{', equivalent to the torch model' if e.sidecar['equivalent'] else ''}; "
                f"min cosine {v['min_cosine']:.5f}, mean {v['mean_cosine']:.5f} on {v['images']} images)"
            )
        if not args.no_card:
            md, js = write_model_card(
                args.out, model, exports, eval_manifest=args.eval_manifest, eval_data_root=args.data_root,
                query_stride=args.query_stride, threads=args.threads, repeats=args.speed_repeats,
                latency_runs=args.latency_runs,
            )  # fmt: skip
            print(f"wrote {md} and {js}")
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ModelLoadError, ManifestError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
