"""Models: images in, L2-normalised embeddings out.

``backbones`` is the registry of offline ImageNet-pretrained trunks (EfficientNet-Lite0/1/2
from PyPI wheels) behind one small contract; ``model`` adds pooling and a head and gives the
model its fingerprint (what a gallery checks); ``preprocess`` is the resize and normalisation
that belong to a model; ``embed`` runs files or arrays through any backend in batches, with
decoding in workers; ``onnx`` is the ONNX Runtime backend for exported models, keeping the
same contract.
"""

from .backbones import (
    Backbone,
    BackboneError,
    BackboneUnavailableError,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
)
from .embed import EmbedResult, embed_arrays, embed_manifest, embed_paths, pool_view_embeddings
from .model import EmbeddingModel, ModelLoadError, build_model, load_model
from .onnx import BACKENDS, ExportLoadError, OnnxEmbedder
from .preprocess import Preprocess

__all__ = [
    "BACKENDS", "Backbone", "BackboneError", "BackboneUnavailableError", "EmbedResult", "EmbeddingModel",
    "ExportLoadError", "ModelLoadError", "OnnxEmbedder", "Preprocess", "UnknownBackboneError", "build_model",
    "create_backbone", "embed_arrays", "embed_manifest", "embed_paths", "list_backbones", "load_model",
    "pool_view_embeddings", "register_backbone",
]  # fmt: skip
