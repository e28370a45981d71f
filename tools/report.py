#!/usr/bin/env python
"""Batch accuracy report of a gallery on a query manifest: HTML, JSON, predictions, Markdown summary.

  python tools/report.py --gallery G --manifest queries.csv [--data-root DIR] --out report_dir
         [--compare OTHER_GALLERY] [--calibrate] [--seed 0]

--calibrate stores the recommended open-set threshold in the gallery. --compare evaluates
a second gallery (its own model) on the same queries and tests the top-1 difference
(McNemar exact test and a paired bootstrap interval). --backend onnx --onnx FILE embeds the
queries with an export the gallery accepts (the --compare gallery keeps its own model).
"""

from __future__ import annotations

import argparse
import sys

from recognizer.cli import (
    PHOTO_DEFAULTS,
    add_backend_arguments,
    add_query_arguments,
    backend_kwargs,
    options_from_args,
)
from recognizer.data.manifest import ManifestError, format_skipped, load_manifest
from recognizer.evaluation.report import run_report
from recognizer.gallery import Gallery, GalleryError
from recognizer.models.model import ModelLoadError
from recognizer.session import load_gallery_embedder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--manifest", required=True, help="queries (role=query rows, or every row)")
    ap.add_argument("--data-root", help="folder the manifest's paths are relative to (default: its folder)")
    ap.add_argument("--out", required=True, help="output folder: report.html, metrics.json, predictions.csv")
    ap.add_argument(
        "--compare", metavar="OTHER_GALLERY", help="a second gallery to compare on the same queries"
    )
    ap.add_argument("--calibrate", action="store_true", help="store the recommended threshold in the gallery")
    ap.add_argument("--model", help="embed with this model instead of the gallery's own (same fingerprint)")
    ap.add_argument("--seed", type=int, default=0, help="seed of random candidate sets and bootstrap")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--no-progress", action="store_true")
    add_query_arguments(ap, PHOTO_DEFAULTS)
    add_backend_arguments(ap)
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.data_root)
        gallery = Gallery.open(args.gallery)
        query_options, rerank = options_from_args(args, gallery)
        backend = backend_kwargs(args)
        embedder = None
        if backend["backend"] != "torch":
            embedder = load_gallery_embedder(gallery, args.model, **backend)
        if manifest.errors:
            print(manifest.error_report(), file=sys.stderr)
        doc, summary = run_report(
            args.gallery, manifest, args.out, compare_dir=args.compare, calibrate=args.calibrate,
            model_spec=args.model, seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
            progress=not args.no_progress, query_options=query_options, rerank=rerank, embedder=embedder,
        )  # fmt: skip
    except (GalleryError, ManifestError, ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    for line in format_skipped(doc["skipped"]):
        print(line, file=sys.stderr)
    print(f"\nwrote {args.out}/report.html, metrics.json, predictions.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
