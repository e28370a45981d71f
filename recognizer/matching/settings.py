"""How a gallery is queried: the tools' defaults, the gallery's stored settings, explicit overrides.

One resolution for every caller (the tools, the service, calibration): each setting comes
from an explicit override, else the gallery's stored settings for this kind of query
(``Gallery.settings["photo_query"]`` / ``["camera_query"]``, written by calibration or
``tools/enroll.py --set-photo-query``), else the defaults below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .options import QueryOptions
from .rerank import METHODS, RerankConfig

_COMMON = {"multicrop": "none", "pool": "mean", "flip": False, "colour": 0.0, "rerank_top": 10, "rerank_per_item": 3,
           "rerank_min_inliers": 15, "rerank_budget_ms": 1000.0}
PHOTO_DEFAULTS: dict[str, Any] = {"scope": "photo", "aspect": "crop", "zoom": 0.6, "rerank": "auto", **_COMMON}
CAMERA_DEFAULTS: dict[str, Any] = {"scope": "camera", "aspect": "squash", "zoom": 1.0, "rerank": "none", **_COMMON}
SCOPES = {"photo": PHOTO_DEFAULTS, "camera": CAMERA_DEFAULTS}
SETTING_TYPES: dict[str, type] = {"aspect": str, "zoom": float, "multicrop": str, "pool": str, "flip": bool, "colour": float,
                                  "rerank": str, "rerank_top": int, "rerank_per_item": int,
                                  "rerank_min_inliers": int, "rerank_budget_ms": float}  # fmt: skip
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
RERANK_CHOICES = (*METHODS, "auto", "none")


def parse_query_settings(text: str) -> dict[str, Any]:
    """``aspect=crop,zoom=0.6,rerank=sift`` -> a validated settings dict (for ``Gallery.settings``)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in SETTING_TYPES:
            raise ValueError(f"query setting {part!r}: use KEY=VALUE with KEY one of {', '.join(SETTING_TYPES)}")
        try:
            if SETTING_TYPES[key] is bool:
                out[key] = _BOOLS[value.lower()]
            else:
                out[key] = SETTING_TYPES[key](value)
        except (ValueError, KeyError):
            raise ValueError(f"query setting {part!r}: {value!r} is not a {SETTING_TYPES[key].__name__}") from None
    validate_query_settings(out)
    return out


def validate_query_settings(settings: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first bad key or value."""
    unknown = set(settings) - set(SETTING_TYPES)
    if unknown:
        raise ValueError(f"unknown query setting(s) {', '.join(sorted(unknown))}; known: {', '.join(SETTING_TYPES)}")
    QueryOptions(**{k: settings[k] for k in ("aspect", "zoom", "multicrop", "pool", "flip", "colour") if k in settings})
    if settings.get("rerank", "none") not in RERANK_CHOICES:
        raise ValueError(f"rerank {settings['rerank']!r} is not one of {', '.join(RERANK_CHOICES)}")
    if min(settings.get(k, 1) for k in ("rerank_top", "rerank_per_item", "rerank_min_inliers")) < 1:
        raise ValueError("rerank_top, rerank_per_item and rerank_min_inliers must be >= 1")
    if settings.get("rerank_budget_ms", 1.0) <= 0:
        raise ValueError("rerank_budget_ms must be > 0")


def resolve_query(
    gallery=None, scope: str = "photo", overrides: Mapping[str, Any] | None = None
) -> tuple[QueryOptions, RerankConfig | None]:
    """``(QueryOptions, RerankConfig or None)`` for this kind of query (``scope``: photo or camera).

    ``overrides`` entries that are None fall through. ``rerank auto`` picks the method whose
    features ``gallery`` stores (SIFT first), else none.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    d = SCOPES[scope]
    stored = gallery.settings.get(f"{scope}_query", {}) if gallery is not None else {}
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    validate_query_settings(over)
    v = {k: over.get(k, stored.get(k, d[k])) for k in SETTING_TYPES}
    opts = QueryOptions(aspect=v["aspect"], zoom=v["zoom"], multicrop=v["multicrop"], pool=v["pool"],
                        flip=bool(v["flip"]), colour=float(v["colour"]))  # fmt: skip
    method = v["rerank"]
    if method == "auto":
        stored_feats = gallery.features.methods() if gallery is not None else []
        method = next((m for m in METHODS if m in stored_feats), "none")
    if method == "none":
        return opts, None
    return opts, RerankConfig(method=method, top_k=v["rerank_top"], per_item=v["rerank_per_item"],
                              min_inliers=v["rerank_min_inliers"], budget_ms=v["rerank_budget_ms"])
