"""The gallery: enrolled items' vectors on disk and in memory, searched without retraining.

``store`` owns the folder (SQLite metadata, the writer lock, O(batch) crash-safe commits)
and ``segments`` the append-only FAISS files with their merges and compaction; ``state`` is a
reader's copy of one committed state, kept current incrementally; ``vectors`` lays the vectors out
in item blocks in memory; ``scoring`` turns similarities into item scores (the score-mode
table) and decided matches; ``search`` scores a whole gallery (exact, IVF, GPU) or a
candidate set; ``features`` keeps local features for geometric re-ranking; ``images`` keeps a
copy of every enrolled photo and ``versions`` which embedding of the gallery is active (re-embeds); ``adapt`` fits
the probe score mode; ``ann`` builds the tuned IVF index. :class:`Gallery` is the facade
the rest of the recognizer uses: numpy in, numpy out.
"""

from . import versions
from .errors import (
    EmptyGalleryError,
    GalleryCorruptError,
    GalleryError,
    GalleryLockedError,
    GalleryModelMismatchError,
    GalleryNotFoundError,
    GallerySupersededError,
    MissingImagesError,
    UnknownItemError,
)
from .gallery import AddResult, Gallery, ItemInfo
from .images import DEFAULT_STORE_MODE, STORE_MODES, ImageStore, photo_hash
from .scoring import (
    SCORE_MODES,
    Blocks,
    Match,
    ScoreMode,
    block_scores,
    decide,
    get_score_mode,
    normalize_rows,
)
from .segments import SEGMENT_PREFIX, plan_merge
from .store import DB_FILE, FORMAT_VERSION, LOCK_FILE, GalleryStore

__all__ = [
    "DB_FILE", "FORMAT_VERSION", "LOCK_FILE", "SCORE_MODES", "SEGMENT_PREFIX", "AddResult", "Blocks",
    "EmptyGalleryError", "Gallery", "GalleryCorruptError", "GalleryError", "GalleryLockedError",
    "GalleryModelMismatchError", "GalleryNotFoundError", "GalleryStore", "ItemInfo", "Match", "ScoreMode",
    "UnknownItemError", "block_scores", "GallerySupersededError", "MissingImagesError", "ImageStore", "STORE_MODES",
    "DEFAULT_STORE_MODE", "photo_hash", "versions", "decide", "get_score_mode", "normalize_rows", "plan_merge",
]  # fmt: skip
