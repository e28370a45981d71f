#!/usr/bin/env python
"""Match images against a gallery, optionally within a candidate set; print a table or write predictions as CSV.

  python tools/match.py --gallery G photo1.jpg photo2.jpg [--candidates A,B,C]       # a table on the screen
  python tools/match.py --gallery G --manifest queries.csv [--data-root DIR] --out preds.csv [--candidates A,B,C] [--top-k 5]

Output columns: path,item_id,pred_item_id,score,accepted,topk_ids,topk_scores. item_id is
the ground truth when the manifest has one; pred_item_id is the best-scoring item and
accepted (1/0) says whether it passed the gallery's open-set threshold and margin
(0 means "unknown"). A manifest row's own candidates column (ids joined by ';') wins over
--candidates. --backend onnx --onnx FILE embeds with an export the gallery accepts.
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
from recognizer.data.manifest import ManifestError, load_manifest, manifest_of_files
from recognizer.gallery import Gallery, GalleryError
from recognizer.matching.batch import match_manifest, matches_table, write_predictions
from recognizer.models.model import ModelLoadError
from recognizer.session import load_gallery_embedder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("images", nargs="*", help="image files to match (a table is printed; no manifest needed)")
    ap.add_argument("--manifest", help="CSV manifest of query images (role=query rows, or all)")
    ap.add_argument("--data-root", help="folder the manifest's paths are relative to (default: its folder)")
    ap.add_argument("--out", help="predictions CSV (needed with --manifest; optional with images)")
    ap.add_argument("--candidates", help="comma-separated item ids every query is constrained to")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--model", help="model to embed with (default: the gallery's own)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--no-progress", action="store_true")
    add_query_arguments(ap, PHOTO_DEFAULTS)
    add_backend_arguments(ap)
    args = ap.parse_args(argv)
    if bool(args.images) == bool(args.manifest):
        ap.error("give image files or --manifest (one of them)")
    if args.manifest and not args.out:
        ap.error("--manifest needs --out")
    try:
        gallery = Gallery.open(args.gallery)
        model = load_gallery_embedder(gallery, args.model, **backend_kwargs(args))
        cands = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
        query_options, rerank = options_from_args(args, gallery)
        manifest = load_manifest(args.manifest, args.data_root) if args.manifest else manifest_of_files(args.images)
        report = match_manifest(
            gallery, model, manifest, candidates=cands, k=args.top_k, batch_size=args.batch_size,
            num_workers=args.workers, progress=not args.no_progress and bool(args.manifest),
            query_options=query_options, rerank=rerank,
        )  # fmt: skip
        if args.images:
            print(matches_table(report, {it.item_id: it.name for it in gallery.items()}))
        if args.out:
            write_predictions(args.out, report)
        print(report.summary())
        if args.out:
            print(f"wrote {args.out}")
        return 0 if report.rows or not report.failures else 1  # every input bad: a script must be able to tell
    except (GalleryError, ManifestError, ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
