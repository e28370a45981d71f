"""What each candidate item looks like, read once from its enrolled photos: its width and its colours.

The camera knows its candidates before it sees them. Their photos with a plain background
(catalog and turntable shots) show the object alone:

* :func:`item_aspects`: how narrow and how wide it is (width / height): a window of the wrong
  shape is not that item, and a blob no wider than the item it names is that one item;
* :func:`item_colours`: HSV histograms of the object's own pixels: the camera's colour cue
  (``CameraConfig.colour``), which tells apart items the embedding confuses, such as a green and
  an orange bottle of one brand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .cues import BINS, colour_histogram

__all__ = ["item_aspects", "item_colours", "item_photos", "object_aspect", "object_mask"]


def object_mask(rgb: np.ndarray, width: int = 4, share: float = 0.75) -> np.ndarray | None:
    """The object's pixels (bool ``H x W``) in a photo with a plain (catalog or turntable) background; else None.

    The background is plain when ``share`` of the border's pixels are near black (< 40) or near
    white (> 215): a turntable shot's dark border is noisy, and its object may touch an edge (a
    bottle seen from the front fills COIL's frame top to bottom: 84% of its border is dark; in-store
    photos: 1 of 3,441 reaches 75%). At 0.85 such views were skipped, and obj13 was taken to be no wider
    than its side view (0.31 of its height against 0.62), so its front-view windows were refused.
    An object under 1% of the photo is none.
    """
    from ..data.synthetic import border_pixels, rgba_from_plain_background

    b = border_pixels(rgb, width)
    dark, white = (b < 40).mean() >= share, (b > 215).mean() >= share
    if not (dark or white):
        return None
    mask = rgba_from_plain_background(rgb, dark=dark)[:, :, 3] > 40
    return mask if mask.sum() >= 0.01 * rgb.shape[0] * rgb.shape[1] else None


def object_aspect(rgb: np.ndarray, width: int = 4, share: float = 0.75) -> float | None:
    """Width / height of the object in a photo with a plain background (:func:`object_mask`); else None."""
    mask = object_mask(rgb, width, share)
    if mask is None:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.max() - xs.min() + 1) / float(ys.max() - ys.min() + 1)


def item_photos(gallery, item: str, per_item: int = 4) -> Iterator[np.ndarray]:
    """Up to ``per_item`` of the item's enrolled photos that can be read (RGB), each photo once
    (not once per enrolled view of it); unreadable ones are passed over."""
    from ..data.imageio import ImageLoadError, load_image

    seen = 0
    for r in gallery.records(item):
        if "#" in str(r["sha256"]) or not r["path"]:  # another view of a photo already read
            continue
        try:
            rgb = load_image(r["path"])
        except (ImageLoadError, ValueError, OSError):
            continue
        yield rgb
        seen += 1
        if seen >= per_item:
            return


def item_aspects(gallery, items: Sequence[str], per_item: int = 4) -> np.ndarray:
    """Per item, the narrowest and the widest object aspect (width / height) among up to
    ``per_item`` of its enrolled photos that have a plain background (``len(items) x 2``); NaN
    when none has (shelf photos) or none can be read. An item turning shows widths in between."""
    out = np.full((len(items), 2), np.nan, np.float32)
    for j, it in enumerate(items):
        for rgb in item_photos(gallery, it, per_item):
            a = object_aspect(rgb)
            if a is not None:
                out[j] = (a, a) if np.isnan(out[j, 0]) else (min(out[j, 0], a), max(out[j, 1], a))
    return out


def item_colours(gallery, items: Sequence[str], per_item: int = 4) -> list[np.ndarray]:
    """Per item, the colour histograms (``n x bins``, :func:`~.cues.colour_histogram`) of the object's
    own pixels in up to ``per_item`` of its enrolled photos that have a plain background; ``0 x bins``
    when none has (shelf photos, whose clutter is not the item's colour) or none can be read: its
    colour is unknown, and the colour cue leaves it alone."""
    out = []
    for it in items:
        hists = []
        for rgb in item_photos(gallery, it, per_item):
            mask = object_mask(rgb)
            if mask is not None:
                hists.append(colour_histogram(rgb, mask))
        out.append(np.stack(hists) if hists else np.zeros((0, int(np.prod(BINS))), np.float32))
    return out
