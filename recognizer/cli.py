"""Argument helpers shared by the ``tools/`` scripts: backend flags and query-option flags."""

from __future__ import annotations

import argparse
from typing import Any

from .matching.options import ASPECTS, MULTICROPS, POOLS
from .matching.rerank import METHODS
from .matching.settings import (  # noqa: F401  (re-exported for the tools)
    CAMERA_DEFAULTS,
    PHOTO_DEFAULTS,
    SETTING_TYPES,
    parse_query_settings,
    resolve_query,
)
from .models.onnx import BACKENDS


def add_backend_arguments(parser, auto: bool = False) -> None:
    """``--backend``, ``--onnx`` and ``--threads`` for the tools (``auto``: the camera's default choice)."""
    g = parser.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=(*BACKENDS, "auto") if auto else BACKENDS,
        help="auto (default): ONNX Runtime when installed (a verified export made once), else torch; "
        "torch; or onnx: ONNX Runtime with an exported model (--onnx)"
        if auto
        else "torch (default) or onnx: ONNX Runtime with an exported model (--onnx)",
    )
    g.add_argument(
        "--onnx",
        metavar="FILE",
        help="model exported by tools/export.py (its .json sidecar next to it); implies --backend onnx. "
        "A gallery accepts only an export verified equivalent to its model, or the one it was created with",
    )
    g.add_argument(
        "--threads", type=int, help="ONNX Runtime intra-op threads (default: torch's thread count)"
    )


def backend_kwargs(args) -> dict[str, Any]:
    """``{backend, onnx, threads}`` from :func:`add_backend_arguments` flags."""
    backend = args.backend or ("onnx" if args.onnx else "torch")
    if backend in ("torch", "auto") and args.onnx:
        raise ValueError("--onnx runs on --backend onnx, not torch")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return {"backend": backend, "onnx": args.onnx, "threads": args.threads}


def add_query_arguments(parser, defaults: dict | None = None) -> None:
    """The query-option flags shared by match, report and camera (``defaults``: PHOTO_ or CAMERA_DEFAULTS).

    Unset flags fall back to the gallery's stored settings for this kind of query, then to ``defaults``.
    """
    d = defaults or CAMERA_DEFAULTS
    parser.set_defaults(query_defaults=d)
    g = parser.add_argument_group("query options (unset: the gallery's stored settings, else the tool's defaults)")
    g.add_argument("--aspect", choices=ASPECTS, help=f"crop: aspect-preserving centre square (default {d['aspect']})")
    g.add_argument("--zoom", type=float, help=f"keep the centre ZOOM x the short side (default {d['zoom']}; 1 = whole)")
    g.add_argument("--multicrop", choices=MULTICROPS, help="grid: full + centre + 2x2 views (default none)")
    g.add_argument("--crop-pool", dest="pool", choices=POOLS, help="combine views by mean embedding or max score")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also embed the mirror image and average (default: the gallery's setting, else off)")
    g.add_argument("--colour", type=float, metavar="W",
                   help="add W x the colour-histogram affinity to the best items' scores (default: the gallery's, else 0)")
    g.add_argument(
        "--rerank", choices=(*METHODS, "auto", "none"),
        help="verify the top items geometrically: sift, orb (faster), auto (whichever features the gallery "
        f"stores, else none) or none (default {d['rerank']})",
    )  # fmt: skip
    g.add_argument("--rerank-top", type=int, help="items verified per query (default 10)")
    g.add_argument("--rerank-per-item", type=int, help="enrolled photos verified per item (default 3)")
    g.add_argument("--rerank-min-inliers", type=int, help="inliers from which verification counts (default 15)")
    g.add_argument("--rerank-budget-ms", type=float, help="verification time budget per query (default 1000)")


def options_from_args(args, gallery=None):
    """``(QueryOptions, RerankConfig or None)``: each setting from its flag, else the gallery's stored
    settings for this kind of query, else the tool's defaults (:func:`~.matching.settings.resolve_query`)."""
    d = args.query_defaults
    return resolve_query(gallery, d["scope"], {k: getattr(args, k) for k in SETTING_TYPES})
