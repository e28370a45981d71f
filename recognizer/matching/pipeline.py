"""Matching images in Python: image files or arrays in, decided matches out.

The gallery itself holds no model (numpy in, numpy out); this is where images meet it: load,
embed with the gallery's model (checked by fingerprint), then search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.imageio import load_image
from ..gallery import Gallery, Match
from ..gallery.search import Candidates
from ..models.embed import embed_arrays


def match_images(
    gallery: Gallery, model: Any, images: Sequence[str | os.PathLike | np.ndarray], *,
    candidates: Candidates = None, k: int = 5,
) -> list[Match]:  # fmt: skip
    """Match image files or RGB arrays; ``model`` must have the gallery's fingerprint.

    An image that cannot be read raises its :class:`~recognizer.data.imageio.ImageLoadError`.
    ``candidates`` as in :meth:`Gallery.search`.
    """
    gallery.check_model(model.fingerprint, "the given model")
    arrays = [load_image(im) if isinstance(im, (str, os.PathLike)) else im for im in images]
    return gallery.search(embed_arrays(model, arrays), k=k, candidates=candidates)
