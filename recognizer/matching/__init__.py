"""Matching: query images in, decided matches out.

``options`` says how a query photo is framed (aspect, zoom, multi-crop); ``rerank`` verifies
the embedding's best items geometrically with local features (SIFT/ORB); ``batch`` matches a
manifest and writes the predictions CSV; ``camera`` tracks items in live video against a
candidate set, with ``unknown`` when nothing matches.
"""

from .batch import PREDICTION_COLUMNS, MatchReport, match_manifest, write_predictions
from .camera import CameraConfig, CameraMatcher, run_camera
from .options import QueryOptions, pool_view_scores
from .pipeline import match_images
from .rerank import METHODS, RerankConfig, extract, verify_items

__all__ = [
    "METHODS", "PREDICTION_COLUMNS", "CameraConfig", "CameraMatcher", "MatchReport", "QueryOptions", "match_images",
    "RerankConfig", "extract", "match_manifest", "pool_view_scores", "run_camera", "verify_items",
    "write_predictions",
]  # fmt: skip
