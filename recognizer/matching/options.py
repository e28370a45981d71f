"""Query-side options: how a query photo is framed before the model sees it.

These never change the embedding model (whose fingerprint includes its own resize), only
what part of the photo is embedded: an aspect-preserving centre square instead of
squashing, a zoom into the centre, and multi-crop pooling (the full view, the centre and
a 2x2 grid, combined by the mean embedding or by the max item score over views).
All off by default; ``tools/match.py``, ``tools/report.py`` and the camera take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ASPECTS = ("squash", "crop")
MULTICROPS = ("none", "grid")
POOLS = ("mean", "max")


@dataclass(frozen=True)
class QueryOptions:
    """``zoom``: keep a centred square of ``zoom`` x the short side (1.0 keeps the whole photo)."""

    aspect: str = "squash"
    zoom: float = 1.0
    multicrop: str = "none"
    pool: str = "mean"
    flip: bool = False  # also embed the mirror image of every view (pooled like the other views)
    colour: float = 0.0  # weight of the colour-histogram cue added to the best items' scores (.cues; 0: off)

    def __post_init__(self) -> None:
        if self.aspect not in ASPECTS:
            raise ValueError(f"aspect {self.aspect!r} is not one of {', '.join(ASPECTS)}")
        if self.multicrop not in MULTICROPS:
            raise ValueError(f"multicrop {self.multicrop!r} is not one of {', '.join(MULTICROPS)}")
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r} is not one of {', '.join(POOLS)}")
        if not 0.1 <= self.zoom <= 1.0:
            raise ValueError(f"zoom must be in [0.1, 1.0], got {self.zoom}")
        if not 0.0 <= self.colour <= 1.0:
            raise ValueError(f"colour weight must be in [0, 1], got {self.colour}")

    @property
    def is_default(self) -> bool:
        return self == QueryOptions()

    def views(self, rgb: np.ndarray) -> list[np.ndarray]:
        """The image views to embed for one query."""
        base = self._frame(rgb)
        views = [base]
        if self.multicrop != "none":
            h, w = base.shape[:2]
            views.append(base[h // 6 : h - h // 6, w // 6 : w - w // 6])
            for r in range(2):
                for c in range(2):  # overlapping quarter views
                    y0, x0 = int(r * h * 0.4), int(c * w * 0.4)
                    views.append(base[y0 : y0 + int(h * 0.6), x0 : x0 + int(w * 0.6)])
        if self.flip:
            views += [np.ascontiguousarray(v[:, ::-1]) for v in views]
        return views

    def _frame(self, rgb: np.ndarray) -> np.ndarray:
        """Centre crop: a square of ``zoom`` x the short side ("crop"), or ``zoom`` of each side ("squash")."""
        h, w = rgb.shape[:2]
        if self.aspect == "crop":
            ch = cw = max(1, int(round(min(h, w) * self.zoom)))
        else:
            ch, cw = max(1, int(round(h * self.zoom))), max(1, int(round(w * self.zoom)))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return rgb[y0 : y0 + ch, x0 : x0 + cw]


def parse_view(spec: str) -> QueryOptions:
    """A view by name: ``whole`` (the photo squashed to the model's input), ``crop:Z`` (a centred square
    of Z x the short side) or ``squash:Z`` (the centred Z of each side)."""
    if spec == "whole":
        return QueryOptions()
    aspect, _, zoom = spec.partition(":")
    try:
        return QueryOptions(aspect=aspect, zoom=float(zoom))
    except ValueError as e:
        raise ValueError(f"view {spec!r}: {e}; views are whole, crop:ZOOM or squash:ZOOM (e.g. crop:0.6)") from None


def view_name(opts: QueryOptions) -> str:
    """The name :func:`parse_view` reads back (single-view options only)."""
    if opts.multicrop != "none" or opts.flip:
        raise ValueError("a multi-crop or mirrored query has no single view name")
    return "whole" if opts.zoom == 1.0 and opts.aspect == "squash" else f"{opts.aspect}:{opts.zoom:g}"


def pool_view_scores(scores: np.ndarray, n_views: Sequence[int]) -> np.ndarray:
    """Max item score over each query's views: ``(sum(n_views) x I)`` -> ``(Q x I)``."""
    starts = np.concatenate([[0], np.cumsum(n_views)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(scores, starts, axis=0)



# Defaults for matching photos (tools/match.py, tools/report.py), chosen by measurement with
# ``tools/bench.py --suite query_options`` on four dev sets: the centre crop of 0.6 x the short
# side raised top-1 by 10-15 points on grocery produce, grocery packages and printed covers at no
# cost (and lost one COIL query of 271); multi-crop cost ~6x the embedding time for less gain, so
# it stays off. The camera keeps the whole crop: its boxes already frame the item.

