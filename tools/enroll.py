#!/usr/bin/env python
"""Enroll items into a gallery from a few photos each, without retraining.

  python tools/enroll.py --gallery G --manifest items.csv [--data-root DIR] [--model lite0|MODEL_DIR]
  python tools/enroll.py --gallery G --item cola-330ml --images a.jpg b.jpg [--name "Cola 330 ml"]
  python tools/enroll.py --gallery G --remove cola-330ml
  python tools/enroll.py --gallery G --list
  python tools/enroll.py --gallery G --set-threshold 0.6 [--set-margin 0.02]
  python tools/enroll.py --gallery G --set-score-mode probe
  python tools/enroll.py --gallery G --manifest items.csv --backend onnx --onnx export/model.onnx
  python tools/enroll.py --gallery G --calibrate
  python tools/enroll.py --gallery G --reembed --model lite0@160

An enrolment that changed the gallery ends with a self-calibration (unless --no-calibrate): the
gallery measures, on pseudo-queries made from its own photos (held-out photos; synthetic views of
one-photo items), which query view, score mode, re-ranking and open-set threshold work best for it,
and stores them; match, report and camera use them unless a flag says otherwise.

A new gallery is created for --model (default: off-the-shelf lite0). An existing gallery
uses its own model; a --model with other weights is refused. --backend onnx embeds with
an export from tools/export.py: an existing gallery accepts it only when it was verified
equivalent to the gallery's model (or the gallery was created with that very file).

The gallery keeps a copy of every enrolled photo (images/, by SHA-256; --store-images thumbnails keeps only
a thumbnail and the source path), so --reembed --model SPEC can move it to another model: the new model's
vectors, local features and calibration are built from those photos beside the old ones, then switched to
in one atomic step (a kill -9 at any moment leaves the old gallery, or the finished new one).
"""

from __future__ import annotations

import argparse
import sys

from recognizer.cli import add_backend_arguments, backend_kwargs, parse_query_settings
from recognizer.data.imageio import ImageLoadError
from recognizer.data.manifest import ManifestError, load_manifest
from recognizer.enroll import DEFAULT_LOCAL_FEATURES, backfill_local_features, enroll_files, enroll_manifest
from recognizer.gallery import SCORE_MODES, STORE_MODES, Gallery, GalleryError, versions
from recognizer.matching.calibrate import calibrate
from recognizer.matching.cues import COLOUR_METHOD
from recognizer.matching.options import parse_view
from recognizer.migrate import reembed_gallery
from recognizer.models.model import ModelLoadError
from recognizer.session import load_gallery_embedder, open_or_create_gallery


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True, help="gallery folder (created if missing)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--manifest", help="CSV manifest; rows with role=query are not enrolled")
    what.add_argument("--item", help="item id to enroll --images under")
    what.add_argument("--remove", metavar="ITEM", help="remove an item and all its vectors")
    what.add_argument("--list", action="store_true", help="list the enrolled items")
    what.add_argument(
        "--set-threshold", type=float, metavar="COS", help="store the open-set cosine threshold"
    )
    what.add_argument(
        "--set-score-mode", choices=SCORE_MODES,
        help="how an item's vectors score a query: max (nearest photo, default), mean_topn, prototype (mean "
        "vector), probe (prototypes refined on the enrolled photos; best with several photos per item)",
    )  # fmt: skip
    what.add_argument(
        "--calibrate", action="store_true",
        help="measure and store the gallery's query settings now (done after every enrolment unless --no-calibrate)",
    )  # fmt: skip
    what.add_argument(
        "--reembed", action="store_true",
        help="re-embed every enrolled photo with --model (vectors, local features, calibration) from the kept photos, "
        "then switch the gallery to it atomically; names, attributes and settings carry over",
    )  # fmt: skip
    what.add_argument(
        "--compact", action="store_true",
        help="rewrite the vector segments as one, dropping removed items' vectors (also done automatically "
        "when a quarter of the stored vectors are removed ones, unless --no-compact)",
    )  # fmt: skip
    for kind in ("photo", "camera"):
        what.add_argument(
            f"--set-{kind}-query", metavar="KEY=VALUE,...",
            help=f"store how {kind} queries are framed and verified (aspect, zoom, multicrop, pool, rerank, rerank_top, "
            f"rerank_budget_ms), e.g. aspect=crop,zoom=0.6,rerank=sift; the {kind} tools use it unless a flag says otherwise",
        )  # fmt: skip
    ap.add_argument("--no-compact", action="store_true", help="never compact automatically")
    ap.add_argument("--no-calibrate", action="store_true", help="keep the stored query settings after enrolling")
    ap.add_argument("--set-margin", type=float, help="with --set-threshold: margin over the second-best item")
    ap.add_argument("--images", nargs="+", help="with --item: image files")
    ap.add_argument("--name", help="with --item: display name")
    ap.add_argument("--data-root", help="folder the manifest's paths are relative to (default: its folder)")
    ap.add_argument(
        "--model", help="lite0/lite1/lite2 or a trained model folder (default: the gallery's, or lite0)"
    )
    ap.add_argument(
        "--local-features",
        choices=["sift", "orb", "none"],
        default=DEFAULT_LOCAL_FEATURES,
        help="keypoints stored for geometric re-ranking (new images, and enrolled ones lacking them): "
        f"sift (default: {DEFAULT_LOCAL_FEATURES}), orb (faster) or none",
    )
    ap.add_argument(
        "--views",
        help="comma-separated views to enroll each photo under (whole, crop:ZOOM, squash:ZOOM), e.g. whole,crop:0.6; "
        "stored in the gallery and used by later enrolments (default: the gallery's, else whole)",
    )
    ap.add_argument(
        "--store-images", choices=STORE_MODES,
        help="what the gallery keeps of each enrolled photo, for --reembed: full (a copy, the default) or "
        "thumbnails (a thumbnail; --reembed then reads the source paths); stored in the gallery",
    )  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--commit-every", type=int, default=512, help="images per atomic commit")
    ap.add_argument("--workers", type=int, help="decoding workers (default: by core count)")
    ap.add_argument("--no-progress", action="store_true")
    add_backend_arguments(ap)
    args = ap.parse_args(argv)
    if args.item and not args.images:
        ap.error("--item needs --images")
    try:
        query_settings = {f"{k}_query": parse_query_settings(s) for k in ("photo", "camera")
                          if (s := getattr(args, f"set_{k}_query"))}  # fmt: skip
        if args.reembed:
            if not args.model or backend_kwargs(args)["backend"] != "torch":
                ap.error("--reembed needs --model (the torch model spec or folder to move the gallery to)")
            rep = reembed_gallery(args.gallery, args.model, batch_size=args.batch_size, num_workers=args.workers,
                                  calibrate=not args.no_calibrate, progress=not args.no_progress)  # fmt: skip
            print(rep.summary())
            return 0
        if args.calibrate:
            g = Gallery.open(args.gallery)
            _calibrate(g, load_gallery_embedder(g, args.model, **backend_kwargs(args)))
            return 0
        if args.list or args.remove or args.compact or args.set_threshold is not None or args.set_score_mode or query_settings:
            g = Gallery.open(args.gallery)
            if query_settings:
                g.update_settings({k: {**g.settings.get(k, {}), **v} for k, v in query_settings.items()})
                print(f"settings: {g.settings}")
            elif args.remove:
                n = g.remove_item(args.remove)
                print(f"removed item {args.remove!r} ({n} vectors); {len(g.item_ids)} items left")
                _auto_compact(g, args)
            elif args.compact:
                c = g.compact()
                print(f"compacted {c['segments_before']} segment(s) into {c['segments']}, "
                      f"dropped {c['dead_rows_dropped']} removed vector(s)")  # fmt: skip
            elif args.set_threshold is not None:
                g.set_threshold(args.set_threshold, args.set_margin)
                print(f"threshold {g.threshold:.4f}, margin {g.margin:.4f}")
            elif args.set_score_mode:
                g.set_score_mode(args.set_score_mode)
                print(f"score mode {g.score_mode} (recalibrate the threshold for it: tools/report.py)")
            else:
                print(f"{args.gallery}: {len(g.item_ids)} items, {len(g)} vectors, model {g.fingerprint} "
                      f"({g.model_spec}), threshold {g.threshold:.3f}, margin {g.margin:.3f}, score mode {g.score_mode}")  # fmt: skip
                print(f"settings: {g.settings or '{}'} (enroll views: {', '.join(g.settings.get('enroll_views', ['whole']))})")
                print(f"version: {versions.active_name(args.gallery)} (images kept: {g.settings.get('store_images', 'full')})")
                s = g.storage()
                print(f"storage: {s['segments']} segment file(s), {s['stored_rows']} stored vectors, "
                      f"{s['dead_rows']} of them removed (tools/enroll.py --compact drops them)")  # fmt: skip
                for it in g.items():
                    print(f"  {it.item_id}\t{it.vectors}\t{it.name}")
            return 0
        views = [v.strip() for v in args.views.split(",") if v.strip()] if args.views else None
        for v in views or ():
            parse_view(v)  # a bad name fails before the gallery is touched
        gallery, model = open_or_create_gallery(args.gallery, args.model, **backend_kwargs(args))
        if views and views != gallery.settings.get("enroll_views", ["whole"]):
            if len(gallery):
                print(f"note: {args.gallery} already holds photos enrolled under views "
                      f"{gallery.settings.get('enroll_views', ['whole'])}; new photos get {views}")  # fmt: skip
            gallery.update_settings({"enroll_views": views})
        if args.store_images and args.store_images != gallery.settings.get("store_images"):
            gallery.update_settings({"store_images": args.store_images})
        kw = dict(
            batch_size=args.batch_size,
            num_workers=args.workers,
            chunk=args.commit_every,
            progress=not args.no_progress,
            local_features=args.local_features,
        )
        if args.manifest:
            report = enroll_manifest(gallery, model, load_manifest(args.manifest, args.data_root), **kw)
        else:
            report = enroll_files(gallery, model, [(args.item, p, None) for p in args.images], **kw)
            if args.name and args.item in gallery:
                gallery.set_item(args.item, name=args.name)
        print(report.summary(gallery))
        for method in [m for m in (args.local_features, COLOUR_METHOD) if m != "none"]:
            n = backfill_local_features(gallery, method, progress=not args.no_progress)
            if n:
                print(f"{method} features stored for {n} earlier image(s)")
        _auto_compact(gallery, args)
        if report.images_added and not args.no_calibrate:
            if len(gallery.item_ids) >= 2:
                _calibrate(gallery, model)
            else:
                print("calibration: needs at least 2 items (skipped)")
        return 0 if report.images_added or not report.failures else 1
    except (GalleryError, ManifestError, ModelLoadError, ImageLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _calibrate(g: Gallery, model) -> None:
    try:
        cal = calibrate(g, model)
    except ValueError as e:
        print(f"calibration skipped: {e}")
        return
    cal.apply(g)
    print(cal.summary())
    print(f"stored: photo_query {g.settings['photo_query']}, score mode {g.score_mode}, threshold {g.threshold:.3f}")


def _auto_compact(g: Gallery, args: argparse.Namespace, dead_share: float = 0.25) -> None:
    """Compact when removed vectors are ``dead_share`` of what the segments store (unless --no-compact)."""
    s = g.storage()
    if not args.no_compact and s["dead_rows"] and s["dead_rows"] >= dead_share * s["stored_rows"]:
        c = g.compact()
        print(f"compacted: dropped {c['dead_rows_dropped']} removed vector(s)")


if __name__ == "__main__":
    sys.exit(main())
