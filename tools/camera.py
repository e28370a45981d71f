#!/usr/bin/env python
"""Real-time matching of camera frames against a constrained candidate set.

  python tools/camera.py --gallery G --source 0 --candidates A,B,C            # window if a display exists
  python tools/camera.py --gallery G --source video.mp4 --candidates-file table.txt \
         --headless --out annotated.mp4 --jsonl events.jsonl [--fast]
  python tools/camera.py --gallery G --source rtsp://host/stream --roi 100,50,400,300 --proposals roi

Proposals: windows (default: object blobs over the table's background, touching objects
separated by candidate-guided windows scored against the candidates; a window far wider or
narrower than the item it names is not that item; a frame embeds last frame's items and a few
more windows, so every window is scored again every few frames), foreground (each blob as one item), split (blobs separated by splitting the mask),
full (whole frame), roi (--roi), grid (--grid 2x2 of the frame or ROI).
The table background follows light changes, shadows and camera pans (--background mog2: the
older MOG2 model). Without candidates every gallery item is a candidate. --frames-jsonl writes
every alive track per frame (a state stream; --jsonl has the appear/change/leave events).
Ctrl-C or q stops a live source. The crops are embedded with ONNX Runtime when it is installed
(an fp32 export of the gallery's model, verified against torch and cached the first time; frames
are about 2x faster than with torch); --backend torch forces torch, --backend onnx --onnx FILE
uses an exported model the gallery accepts.
"""

from __future__ import annotations

import argparse
import sys

from recognizer.cli import (
    CAMERA_DEFAULTS,
    add_backend_arguments,
    add_query_arguments,
    backend_kwargs,
    options_from_args,
)
from recognizer.deploy.camera_backend import load_camera_embedder
from recognizer.gallery import Gallery, GalleryError
from recognizer.matching.camera import latency_table, run_camera
from recognizer.matching.camera_config import BACKGROUNDS, PROPOSALS, VERIFY, CameraConfig
from recognizer.models.model import ModelLoadError


def _ints(text: str, n: int, sep: str, what: str) -> tuple[int, ...]:
    parts = text.split(sep)
    if len(parts) != n or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{what} must be {n} integers joined by {sep!r}, got {text!r}")
    return tuple(int(p) for p in parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", required=True)
    ap.add_argument("--source", required=True, help="camera index (0), video file, or stream URL")
    cand = ap.add_mutually_exclusive_group()
    cand.add_argument("--candidates", help="comma-separated item ids on the table")
    cand.add_argument("--candidates-file", help="file with one item id per line")
    ap.add_argument("--proposals", choices=PROPOSALS, default=CameraConfig.proposals)
    ap.add_argument("--background", choices=BACKGROUNDS, default=CameraConfig.background)
    ap.add_argument(
        "--verify", choices=VERIFY, default=CameraConfig.verify,
        help="verify each track once (at birth, on a challenge) with the gallery's stored local features",
    )  # fmt: skip
    ap.add_argument("--roi", type=lambda s: _ints(s, 4, ",", "--roi"), help="x,y,w,h")
    ap.add_argument("--grid", type=lambda s: _ints(s, 2, "x", "--grid"), default=(2, 2), help="ROWSxCOLS")
    ap.add_argument("--threshold", type=float, help="open-set threshold (default: the gallery's)")
    ap.add_argument(
        "--min-score", type=float, default=CameraConfig.min_score,
        help=f"a name needs at least this cosine, whatever the gallery's threshold (default {CameraConfig.min_score})",
    )  # fmt: skip
    ap.add_argument(
        "--frame-ms", type=float, default=CameraConfig.frame_ms,
        help=f"windows: a frame's time the crops are budgeted to, at the embedder's speed measured at start (default "
        f"{CameraConfig.frame_ms:g}; 0: no budget, every stale window re-scored at once: more accurate when items come, "
        "go or are covered, 2-3x slower frames then)",
    )  # fmt: skip
    ap.add_argument(
        "--item-colours", type=float, default=CameraConfig.colour, metavar="W",
        help=f"re-score each crop's best items by their colours on the table (the object's pixels, relit to the light "
        f"the table was learnt in) against the items' plain-background photos: each falls W x how much worse its "
        f"colours match than the best match's (default {CameraConfig.colour:g}; 0: off; table background only). "
        "--colour is the photo tools' cue, added to the scores",
    )  # fmt: skip
    ap.add_argument("--headless", action="store_true", help="no window, even where a display exists")
    ap.add_argument("--out", help="write the annotated video here (mp4)")
    ap.add_argument("--jsonl", help="write appear/change/leave events here")
    ap.add_argument("--frames-jsonl", help="write every alive track, one line per frame, here")
    ap.add_argument(
        "--fast", action="store_true", help="play a video file as fast as possible (default: its real rate)"
    )
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--model", help="embed with this model instead of the gallery's own (same fingerprint)")
    add_query_arguments(ap, CAMERA_DEFAULTS)
    add_backend_arguments(ap, auto=True)
    args = ap.parse_args(argv)
    try:
        gallery = Gallery.open(args.gallery)
        if args.threads is not None and args.threads >= 1:  # torch too: on a busy CPU one thread can be far faster
            import torch

            torch.set_num_threads(args.threads)
        kw = backend_kwargs(args)
        if args.backend is None and not args.onnx and not args.model:
            kw["backend"] = "auto"  # ONNX Runtime when installed: the camera's frames are its hot path
        model = load_camera_embedder(gallery, args.model, **kw)
        if args.candidates_file:
            with open(args.candidates_file, encoding="utf-8") as f:
                candidates = [ln.strip() for ln in f if ln.strip()]
        else:
            candidates = (
                [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
            )
        query, rerank = options_from_args(args, gallery)
        cfg = CameraConfig(
            proposals=args.proposals,
            roi=args.roi,
            grid=args.grid,
            threshold=args.threshold,
            min_score=args.min_score,
            background=args.background,
            verify=args.verify,
            frame_ms=args.frame_ms or None,
            colour=args.item_colours,
            query=query,
            rerank=rerank,
        )
        stats = run_camera(
            gallery, model, args.source, candidates=candidates, cfg=cfg, headless=args.headless, out_video=args.out,
            jsonl=args.jsonl, realtime=not args.fast, max_frames=args.max_frames, frames_jsonl=args.frames_jsonl,
        )  # fmt: skip
    except (GalleryError, ModelLoadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(latency_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
