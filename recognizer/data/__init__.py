"""Data: what the recognizer reads before any model runs.

A manifest (CSV: path, item_id, split, role, candidates, bbox) is the one way datasets come
in; ``manifest`` holds its schema and the one validator, ``imageio`` the image loader that
turns every bad file into a clear error. ``datasets`` builds manifests for the real dev data
(grocery, COIL) split by class; ``synthetic`` generates the embedded default catalog on real
background photos (``backgrounds``); ``candidates`` draws the random candidate sets used to
evaluate constrained matching.
"""

from .backgrounds import BACKGROUND_PHOTOS, load_backgrounds, random_background
from .candidates import candidate_sets, random_candidate_sets, with_candidates
from .imageio import (
    MAX_PIXELS,
    CorruptImageError,
    ImageLoadError,
    ImageTooLargeError,
    MissingImageError,
    crop_bbox,
    load_image,
)
from .manifest import (
    ALL_COLUMNS,
    ROLES,
    SPLITS,
    Manifest,
    ManifestError,
    ManifestRow,
    RowError,
    format_skipped,
    load_manifest,
    parse_manifest_text,
    validate_row,
    write_manifest,
)

__all__ = [
    "ALL_COLUMNS", "BACKGROUND_PHOTOS", "MAX_PIXELS", "ROLES", "SPLITS", "CorruptImageError",
    "ImageLoadError", "ImageTooLargeError", "Manifest", "ManifestError", "ManifestRow", "MissingImageError",
    "RowError", "candidate_sets", "crop_bbox", "format_skipped", "load_backgrounds", "load_image",
    "load_manifest", "parse_manifest_text", "random_background", "random_candidate_sets", "validate_row",
    "with_candidates", "write_manifest",
]  # fmt: skip
