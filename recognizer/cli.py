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


# Tool defaults; a gallery's stored settings (``Gallery.settings["photo_query"]`` / ``["camera_query"]``,
# e.g. chosen by calibration or tools/enroll.py --set-photo-query) win over them, and a flag wins over both.
_COMMON = {"multicrop": "none", "pool": "mean", "rerank_top": 10, "rerank_budget_ms": 1000.0}
PHOTO_DEFAULTS = {"scope": "photo", "aspect": "crop", "zoom": 0.6, "rerank": "auto", **_COMMON}
CAMERA_DEFAULTS = {"scope": "camera", "aspect": "squash", "zoom": 1.0, "rerank": "none", **_COMMON}
_TYPES = {"aspect": str, "zoom": float, "multicrop": str, "pool": str, "rerank": str, "rerank_top": int,
          "rerank_budget_ms": float}  # fmt: skip


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
    g.add_argument(
        "--rerank", choices=(*METHODS, "auto", "none"),
        help="verify the top items geometrically: sift, orb (faster), auto (whichever features the gallery "
        f"stores, else none) or none (default {d['rerank']})",
    )  # fmt: skip
    g.add_argument("--rerank-top", type=int, help="items verified per query (default 10)")
    g.add_argument("--rerank-budget-ms", type=float, help="verification time budget per query (default 1000)")


def parse_query_settings(text: str) -> dict[str, Any]:
    """``aspect=crop,zoom=0.6,rerank=sift`` -> a validated settings dict (for ``Gallery.settings``)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in _TYPES:
            raise ValueError(f"query setting {part!r}: use KEY=VALUE with KEY one of {', '.join(_TYPES)}")
        out[key] = _TYPES[key](value)
    QueryOptions(**{k: out[k] for k in ("aspect", "zoom", "multicrop", "pool") if k in out})  # raises on bad values
    if out.get("rerank", "none") not in (*METHODS, "auto", "none"):
        raise ValueError(f"rerank {out['rerank']!r} is not one of {', '.join((*METHODS, 'auto', 'none'))}")
    return out


def options_from_args(args, gallery=None):
    """``(QueryOptions, RerankConfig or None)``: each setting from its flag, else the gallery's stored
    settings for this kind of query, else the tool's defaults.

    ``rerank auto`` picks the method whose features ``gallery`` stores (SIFT first).
    """
    d = args.query_defaults
    stored = gallery.settings.get(f"{d['scope']}_query", {}) if gallery is not None else {}
    v = {k: getattr(args, k) if getattr(args, k) is not None else stored.get(k, d[k]) for k in _TYPES}
    opts = QueryOptions(aspect=v["aspect"], zoom=v["zoom"], multicrop=v["multicrop"], pool=v["pool"])
    method = v["rerank"]
    if method == "auto":
        stored_feats = gallery.features.methods() if gallery is not None else []
        method = next((m for m in METHODS if m in stored_feats), "none")
    if method == "none":
        return opts, None
    return opts, RerankConfig(method=method, top_k=v["rerank_top"], budget_ms=v["rerank_budget_ms"])
