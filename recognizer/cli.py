"""Argument helpers shared by the ``tools/`` scripts: backend flags and query-option flags."""

from __future__ import annotations

from typing import Any

from .matching.options import ASPECTS, MULTICROPS, POOLS, QueryOptions
from .matching.rerank import METHODS, RerankConfig
from .models.onnx import BACKENDS


def add_backend_arguments(parser) -> None:
    """``--backend``, ``--onnx`` and ``--threads`` for the tools."""
    g = parser.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        help="torch (default) or onnx: ONNX Runtime with an exported model (--onnx)",
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
    if backend == "torch" and args.onnx:
        raise ValueError("--onnx runs on --backend onnx, not torch")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return {"backend": backend, "onnx": args.onnx, "threads": args.threads}


PHOTO_DEFAULTS = {"aspect": "crop", "zoom": 0.6, "rerank": "auto"}
CAMERA_DEFAULTS = {"aspect": "squash", "zoom": 1.0, "rerank": "none"}


def add_query_arguments(parser, defaults: dict | None = None) -> None:
    """The query-option flags shared by match, report and camera (``defaults``: PHOTO_ or CAMERA_DEFAULTS)."""
    d = defaults or CAMERA_DEFAULTS
    g = parser.add_argument_group("query options")
    g.add_argument(
        "--aspect",
        choices=ASPECTS,
        default=d["aspect"],
        help=f"crop: aspect-preserving centre square (default {d['aspect']})",
    )
    g.add_argument(
        "--zoom",
        type=float,
        default=d["zoom"],
        help=f"keep the centre ZOOM x the short side (default {d['zoom']}; 1 = whole)",
    )
    g.add_argument(
        "--multicrop",
        choices=MULTICROPS,
        default="none",
        help="grid: full + centre + 2x2 views (default none)",
    )
    g.add_argument(
        "--crop-pool", choices=POOLS, default="mean", help="combine views by mean embedding or max score"
    )
    g.add_argument(
        "--rerank",
        choices=(*METHODS, "auto", "none"),
        default=d["rerank"],
        help="verify the top items geometrically: sift, orb (faster), auto (whichever features the gallery "
        f"stores, else none) or none (default {d['rerank']})",
    )
    g.add_argument("--rerank-top", type=int, default=10, help="items verified per query")
    g.add_argument(
        "--rerank-budget-ms", type=float, default=1000.0, help="verification time budget per query"
    )


def options_from_args(args, gallery=None):
    """``(QueryOptions, RerankConfig or None)`` from :func:`add_query_arguments` flags.

    ``--rerank auto`` picks the method whose features ``gallery`` stores (SIFT first).
    """
    opts = QueryOptions(aspect=args.aspect, zoom=args.zoom, multicrop=args.multicrop, pool=args.crop_pool)
    method = args.rerank
    if method == "auto":
        stored = gallery.features.methods() if gallery is not None else []
        method = next((m for m in METHODS if m in stored), "none")
    if method == "none":
        return opts, None
    return opts, RerankConfig(method=method, top_k=args.rerank_top, budget_ms=args.rerank_budget_ms)


