"""The embedding model: backbone -> pooling -> optional projection head -> L2-normalised embedding.

A model is described by a small JSON-able config (each component ``{name, args}``) and
saved as ``model.safetensors`` plus ``model.json``; loading never unpickles anything. The
JSON carries a fingerprint of config and weights, so a gallery can refuse embeddings
from a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fileio import fsync_replace
from .backbones import Backbone, create_backbone
from .preprocess import Preprocess

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


class ModelLoadError(Exception):
    """A saved model is missing, corrupt, or does not match its JSON description."""


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): p=1 is average, p->inf is max; p is learned."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class LinearHead(nn.Module):
    """Projection to the embedding dimension, with optional BatchNorm (common in re-identification)."""

    def __init__(self, in_dim: int, dim: int = 256, bn: bool = False, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, dim, bias=not bn)
        self.bn = nn.BatchNorm1d(dim) if bn else nn.Identity()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.drop(x)))


class ResidualHead(nn.Module):
    """Identity-preserving head ``x + W x`` with ``W`` starting at zero: training starts from the
    pretrained embedding and moves away from it only as far as the loss pays for."""

    def __init__(self, in_dim: int, center: bool = False):
        super().__init__()
        self.fc = nn.Linear(in_dim, in_dim, bias=False)
        nn.init.zeros_(self.fc.weight)
        self.out_dim = in_dim
        # center: subtract the training photos' mean pooled feature first (set by training), which
        # removes the direction every photo shares and spreads items apart on the sphere
        self.center = bool(center)
        if self.center:
            self.register_buffer("mean", torch.zeros(in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center:
            x = x - self.mean
        return x + self.fc(x)


POOLINGS: dict[str, type[nn.Module]] = {"avg": AvgPool, "gem": GeM}
HEADS: dict[str, type[nn.Module]] = {"linear": LinearHead, "residual": ResidualHead}
_MODEL_KEYS = {"backbone", "pooling", "head", "input_size"}


def _component(cfg: Any, registry: dict[str, type], kind: str) -> tuple[str, dict]:
    """Validate a ``{name, args}`` component (a bare string means no args)."""
    if isinstance(cfg, str):
        cfg = {"name": cfg, "args": {}}
    if not isinstance(cfg, dict) or set(cfg) - {"name", "args"} or "name" not in cfg:
        raise ValueError(f"{kind} must be {{name, args}}, got {cfg!r}")
    name, args = cfg["name"], dict(cfg.get("args") or {})
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")
    return name, args


class EmbeddingModel(nn.Module):
    """Maps normalised image batches to L2-normalised embeddings (``B x embedding_dim``)."""

    def __init__(self, backbone: Backbone, config: dict[str, Any]):
        super().__init__()
        unknown = set(config) - _MODEL_KEYS
        if unknown:
            raise ValueError(f"unknown model config key(s) {sorted(unknown)}; valid: {sorted(_MODEL_KEYS)}")
        self.backbone = backbone
        pool_name, pool_args = _component(config.get("pooling", "avg"), POOLINGS, "pooling")
        self.pool = POOLINGS[pool_name](**pool_args)
        head_cfg = config.get("head")
        if head_cfg is None:
            self.head: nn.Module = nn.Identity()
            self.embedding_dim = backbone.feat_dim
        else:
            head_name, head_args = _component(head_cfg, HEADS, "head")
            self.head = HEADS[head_name](backbone.feat_dim, **head_args)
            self.embedding_dim = self.head.out_dim
        self.preprocess: Preprocess = backbone.preprocess.with_size(config.get("input_size"))
        self.config = {
            "backbone": backbone.name,
            "pooling": {"name": pool_name, "args": pool_args},
            "head": None if head_cfg is None else {"name": head_name, "args": head_args},
            "input_size": self.preprocess.input_size,
        }

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map pooled to ``B x feat_dim`` (the cacheable part for head-only training)."""
        return self.pool(self.backbone.forward_features(x))

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features -> normalised embeddings."""
        return F.normalize(self.head(feats), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.pooled_features(x))

    # ------------------------------------------------------------------ identity and storage

    def weights_sha256(self) -> str:
        """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild the model and to tell it apart from any other."""
        weights = self.weights_sha256()
        desc = {
            "format_version": FORMAT_VERSION,
            "config": dict(self.config, input_size=self.preprocess.input_size),
            "preprocess": self.preprocess.to_dict(),
            "embedding_dim": self.embedding_dim,
            "weights_sha256": weights,
        }
        desc["fingerprint"] = _fingerprint(desc)
        return desc

    @property
    def fingerprint(self) -> str:
        """Short id of config + preprocessing + weights; changes whenever embeddings would."""
        if getattr(self, "_fp_cache", None) is None:
            self._fp_cache = self.describe()["fingerprint"]
        return self._fp_cache

    def train(self, mode: bool = True) -> EmbeddingModel:
        self._fp_cache = None  # weights may change while training
        return super().train(mode)

    def save(self, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``model.json`` atomically (temp file, fsync, rename)."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        desc = self.describe()
        if extra:
            desc["extra"] = extra
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # Weights go to a file named by their hash, then the JSON naming it replaces the old JSON:
        # a crash at any point leaves a folder that loads (old or new), never a mismatched pair.
        weights_name = f"model.{desc['weights_sha256'][:16]}.safetensors"
        desc["weights_file"] = weights_name
        tmp = out / (weights_name + ".tmp")
        save_file(state, str(tmp), metadata={"fingerprint": desc["fingerprint"]})
        fsync_replace(tmp, out / weights_name)
        tmp = out / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(desc, indent=2, sort_keys=True))
        fsync_replace(tmp, out / CONFIG_FILE)
        for old in out.glob("model*.safetensors"):
            if old.name != weights_name:
                old.unlink(missing_ok=True)
        self._fp_cache = desc["fingerprint"]
        return out


def _fingerprint(desc: dict[str, Any]) -> str:
    core = {k: desc[k] for k in ("config", "preprocess", "embedding_dim", "weights_sha256")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def build_model(
    config: dict[str, Any] | None = None, *, backbone: str = "lite0", pretrained: bool = True
) -> EmbeddingModel:
    """Build a model from a config ``{backbone, pooling, head, input_size}`` (backbone pretrained by default)."""
    config = dict(config or {})
    name = config.pop("backbone", backbone)
    return EmbeddingModel(create_backbone(name, pretrained=pretrained), config)


def load_model(spec: str | os.PathLike) -> EmbeddingModel:
    """A saved model folder (``model.json`` inside) or a backbone name such as ``lite0``.

    A backbone name gives the off-the-shelf model: pretrained backbone, average pooling,
    no head; ``name@SIZE`` (e.g. ``lite0@160``) sets its input size.
    """
    p = Path(spec)
    if (p / CONFIG_FILE).is_file() or p.is_dir():
        return load_model_dir(p)
    name, _, size = str(spec).partition("@")
    if size and not size.isdigit():
        raise ValueError(f"model spec {spec!r}: the part after '@' must be an input size in pixels")
    return build_model({"backbone": name, **({"input_size": int(size)} if size else {})}).eval()


def load_model_dir(folder: str | os.PathLike) -> EmbeddingModel:
    """Load a folder written by :meth:`EmbeddingModel.save`; verifies the weights' hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise ModelLoadError(f"{cfg_path}: missing (a model folder holds {CONFIG_FILE} and its weights file)")
    try:
        desc = json.loads(cfg_path.read_text())
        config = desc["config"]
        version = desc["format_version"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{cfg_path}: not a valid model description ({e})") from None
    weights_name = str(desc.get("weights_file", WEIGHTS_FILE))
    if Path(weights_name).name != weights_name or not weights_name.endswith(".safetensors"):
        raise ModelLoadError(
            f"{cfg_path}: weights_file {weights_name!r} must be a .safetensors file in the folder"
        )
    w_path = folder / weights_name
    if not w_path.is_file():
        raise ModelLoadError(f"{w_path}: missing (named by {cfg_path})")
    if version != FORMAT_VERSION:
        raise ModelLoadError(f"{cfg_path}: format_version {version}, this code reads {FORMAT_VERSION}")
    model = build_model(config, pretrained=False)
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{w_path}: cannot read weights ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{w_path}: weights do not fit {config}: {str(e)[:300]}") from None
    if model.weights_sha256() != desc.get("weights_sha256"):
        raise ModelLoadError(f"{w_path}: weights hash does not match {CONFIG_FILE} (corrupt or mixed files)")
    model.preprocess = Preprocess.from_dict(desc["preprocess"])
    model.eval()
    return model
