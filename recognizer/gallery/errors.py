"""Gallery errors: each names the gallery folder and what to do about it."""

from __future__ import annotations


class GalleryError(Exception):
    """Base class for gallery errors."""


class GalleryNotFoundError(GalleryError):
    """No gallery at that folder."""


class GalleryModelMismatchError(GalleryError):
    """Embeddings from a different model than the one the gallery was built with."""


class GalleryLockedError(GalleryError):
    """Another process holds the writer lock."""


class GalleryCorruptError(GalleryError):
    """The files disagree (segments vs. metadata) or cannot be read."""


class EmptyGalleryError(GalleryError):
    """Matching or evaluating against a gallery that holds no items."""


class UnknownItemError(GalleryError, KeyError):
    """An item id (e.g. a candidate) that the gallery does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


class GallerySupersededError(GalleryError):
    """A write to a gallery version that a re-embed has replaced (reopen the gallery, with its new model)."""


class MissingImagesError(GalleryError):
    """Enrolled photos that can no longer be read (a re-embed names them and changes nothing)."""
