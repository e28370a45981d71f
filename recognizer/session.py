"""Which embedder a gallery accepts: the gallery's own torch model, or an ONNX export verified equivalent.

Every tool opens a gallery and its model through here, so the fingerprint rule (a gallery
never mixes embeddings of two models) is checked in one place.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from .gallery import Gallery, GalleryError, GalleryModelMismatchError
from .models.model import EmbeddingModel, load_model
from .models.onnx import (
    BACKENDS,
    EQUIVALENT_COSINE,
    OnnxEmbedder,
    describe_model,
)


class ExportNotAcceptedError(GalleryModelMismatchError):
    """A gallery refuses an export that is not equivalent to its own model."""


def check_gallery_accepts(gallery: Gallery, emb: OnnxEmbedder) -> None:
    """Raise :class:`ExportNotAcceptedError` unless the gallery may take this export's embeddings."""
    if emb.fingerprint == gallery.fingerprint:
        return
    mine = describe_model(gallery.model_description)
    v = emb.verification
    figures = f"min cosine {v.get('min_cosine', float('nan')):.4f}, mean {v.get('mean_cosine', float('nan')):.4f} on {v.get('images', '?')} images"
    if emb.source_fingerprint == gallery.fingerprint:
        raise ExportNotAcceptedError(
            f"{gallery.root}: refusing {emb.path}: it is a {emb.precision} export of the gallery's model {mine}, "
            f"but not verified equivalent to it ({figures}; equivalence needs every cosine >= {EQUIVALENT_COSINE}). "
            f"Its embeddings (fingerprint {emb.fingerprint}) are not comparable with the enrolled ones: use the "
            "fp32 export or --backend torch, or enroll into a new gallery created with this export"
        )
    if "export" in gallery.model_description:
        raise ExportNotAcceptedError(
            f"{gallery.root}: refusing {emb.path} ({emb.precision}, fingerprint {emb.fingerprint}): the gallery "
            f"was built with the export {mine}, and only that file's embeddings are comparable"
        )
    raise ExportNotAcceptedError(
        f"{gallery.root}: refusing {emb.path}: it is a {emb.precision} export of model "
        f"{emb.source_fingerprint} ({emb.sidecar['model']['config'].get('backbone', '?')}, "
        f"{emb.preprocess.input_size} px), but the gallery was built with model {mine}; "
        "export the gallery's own model or enroll into a new gallery"
    )


def record_export_use(gallery: Gallery, emb: OnnxEmbedder) -> None:
    """List the export in the gallery's ``accepted_exports`` (once); a busy or read-only gallery only warns."""
    if any(e.get("sha256") == emb.sha256 for e in gallery.accepted_exports):
        return
    try:
        gallery.record_export(dict(emb.record(), first_used=time.time()))
    except (GalleryError, OSError, sqlite3.Error) as e:  # recording is best effort
        print(
            f"warning: {gallery.root}: could not record export {emb.path.name} in the gallery ({e})",
            file=sys.stderr,
        )


def open_gallery_export(
    gallery: Gallery, onnx: str | os.PathLike | None, *, threads: int | None = None, record: bool = True
) -> OnnxEmbedder:
    """Load an export for a gallery and check the gallery accepts it (see the module docstring).

    Without ``onnx``, a gallery created with an export uses that file.
    """
    if onnx is None:
        exp = gallery.model_description.get("export")
        if exp is None:
            raise ValueError("--backend onnx needs --onnx FILE (an export from tools/export.py)")
        onnx = exp["file"]
    emb = OnnxEmbedder(onnx, threads=threads)
    check_gallery_accepts(gallery, emb)
    if record:
        record_export_use(gallery, emb)
    return emb


def load_embedder(
    backend: str = "torch",
    *,
    model_spec: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
):
    """An embedder without a gallery: ``load_model(model_spec)`` for torch, :class:`OnnxEmbedder` for onnx."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return load_model(model_spec or "lite0")
    if onnx is None:
        raise ValueError("the onnx backend needs an exported model file (--onnx FILE)")
    return OnnxEmbedder(onnx, threads=threads)


def open_or_create_gallery(
    root: str | os.PathLike,
    model_spec: str | None,
    *,
    backend: str = "torch",
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
) -> tuple[Gallery, EmbeddingModel]:
    """Open the gallery and its model, or create it for ``model_spec`` (default ``lite0``).

    An existing gallery is opened with its own model unless ``model_spec`` is given, in which
    case that model must have the gallery's fingerprint. ``backend="onnx"`` embeds with the
    export ``onnx`` instead (see :func:`load_gallery_embedder`); a new gallery is then
    created for that export's model.
    """
    root = Path(root)
    if Gallery.exists(root):
        gallery = Gallery.open(root)
        model = load_gallery_embedder(gallery, model_spec, backend=backend, onnx=onnx, threads=threads)
        return gallery, model
    if backend != "torch":
        if model_spec:
            raise ValueError("--model is for --backend torch; an export's sidecar names its own model")
        emb = load_embedder(backend, onnx=onnx, threads=threads)
        gallery = Gallery.create(root, emb.describe(), model_spec=emb.gallery_spec)
        record_export_use(gallery, emb)
        return gallery, emb
    if onnx:
        raise ValueError("--onnx runs on --backend onnx, not torch")
    spec = model_spec or "lite0"
    model = load_model(spec)
    spec_str = str(Path(spec).resolve()) if Path(spec).is_dir() else spec
    gallery = Gallery.create(root, model.describe(), model_spec=spec_str)
    return gallery, model


def load_gallery_embedder(
    gallery: Gallery,
    model_spec: str | None = None,
    *,
    backend: str = "torch",
    onnx: str | os.PathLike | None = None,
    threads: int | None = None,
):
    """The gallery's embedder on ``backend``: the torch model (:func:`load_gallery_model`), or the
    ONNX export ``onnx`` when the gallery accepts it (``recognizer.models.onnx.check_gallery_accepts``)."""
    if backend == "torch":
        if onnx:
            raise ValueError("--onnx runs on --backend onnx, not torch")
        return load_gallery_model(gallery, model_spec)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if model_spec:
        raise ValueError("--model is for --backend torch; an export's sidecar names its own model")
    return open_gallery_export(gallery, onnx, threads=threads)


def load_gallery_model(gallery: Gallery, model_spec: str | None = None) -> EmbeddingModel:
    """The gallery's embedding model (or ``model_spec``), checked against the gallery's fingerprint."""
    exp = gallery.model_description.get("export")
    if exp is not None:  # created with a non-equivalent (int8) export: no torch model makes its embeddings
        raise GalleryModelMismatchError(
            f"{gallery.root}: the gallery was built with the {exp['precision']} ONNX export {exp['file']} "
            f"(sha256 {exp['sha256'][:16]}...); only that file makes comparable embeddings: "
            "use --backend onnx [--onnx FILE]"
        )
    spec = model_spec or gallery.model_spec
    if not spec:
        raise GalleryError(f"{gallery.root}: the gallery does not record its model; pass --model")
    if not model_spec and os.path.isabs(spec) and not Path(spec).is_dir():
        raise GalleryError(
            f"{gallery.root}: the gallery's model folder {spec} is gone; pass --model with a copy of it"
        )
    model = load_model(spec)
    gallery.check_model(model.fingerprint, f"model {spec!r}")
    return model
