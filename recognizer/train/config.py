"""The run config: defaults, YAML files (``base:`` chains), ``key.sub=value`` overrides.

Every key must exist in ``DEFAULTS``: a misspelt key fails at once, naming the valid keys at
that level, instead of silently training with the default. Components given whole
(``{name, args}``: loss, optimizer, ...) replace the default rather than merge into it. The
config's hash ties a checkpoint to the config that wrote it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from .losses import EmbeddingDistillation

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"val_fraction": 0.2, "num_workers": None, "cache_dir": None},
    "model": {
        "backbone": "lite0",
        "pooling": {"name": "avg"},
        "head": {"name": "residual", "args": {}},
        "input_size": 224,
    },
    "loss": {"name": "ArcFaceLoss", "args": {"margin": 28.6, "scale": 64}},
    "miner": None,  # e.g. {name: TripletMarginMiner, args: {type_of_triplets: semihard}}
    "class_weights": None,  # e.g. {power: 0.5}: rare classes weigh more in the loss
    "sampler": {"m": 4, "batch_size": 64, "per_class": None},
    "optimizer": {"name": "AdamW", "args": {"lr": 1.0e-3, "weight_decay": 1.0e-4}},
    "loss_optimizer": {"name": "SGD", "args": {"lr": 1.0e-2}},  # the loss's own class weights
    "schedule": {"warmup_epochs": 0, "min_lr_scale": 0.0},
    "stage1": {"epochs": 10, "cached": True, "copies": 2},
    "stage2": {"epochs": 0, "unfreeze_blocks": 1, "backbone_lr_scale": 0.1, "lr_scale": 1.0},
    "distill": None,  # {teacher: lite2 | pretrained | MODEL_DIR, weight: 1.0, mode: cosine | relational}
    "amp": "auto",  # bfloat16 autocast on CUDA; off on CPU
    "channels_last": True,
    "augment": {
        "crop_scale": [0.5, 1.0],
        "flip": 0.5,
        "color": 0.3,
        "background": 0.5,  # probability of pasting a cut-out item on a real photo
        "mask": "auto",  # auto: only clean white/black backgrounds; grabcut: any photo (slow)
        "background_folder": None,  # default: scikit-image's real photos
    },
}
# Components given whole ({name, args}) rather than merged key by key.
_WHOLE = ("loss", "miner", "optimizer", "loss_optimizer", "distill", "class_weights", "head", "pooling")
DISTILL_KEYS = {"teacher", "weight", "mode"}


class ConfigError(ValueError):
    """A config key or value that does not exist or does not fit."""


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        where = f"{path}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {', '.join(base)}")
        if isinstance(base[k], dict) and isinstance(v, dict) and k not in _WHOLE:
            out[k] = _merge(base[k], v, where + ".")
        else:
            out[k] = v
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    for layer in _config_chain(path) if path else []:
        cfg = _merge(cfg, layer)
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value")
        key, value = ov.split("=", 1)
        node: dict = {}
        cur = node
        parts = key.split(".")
        for p in parts[:-1]:
            cur[p] = {}
            cur = cur[p]
        cur[parts[-1]] = yaml.safe_load(value)
        cfg = _merge(cfg, node)
    _check(cfg)
    return cfg


def _config_chain(path: str | Path, seen: tuple = ()) -> list[dict]:
    """The file's layers, base first: a config may start from another with ``base: other.yaml`` (relative path)."""
    p = Path(path).resolve()
    if p in seen:
        raise ConfigError(f"{path}: base configs form a loop ({' -> '.join(str(s) for s in (*seen, p))})")
    with open(p, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    return (_config_chain(p.parent / base, (*seen, p)) if base else []) + [data]


def _check(cfg: dict[str, Any]) -> None:
    d = cfg.get("distill")
    if d is not None:
        if not isinstance(d, dict) or "teacher" not in d or set(d) - DISTILL_KEYS:
            raise ConfigError(f"distill must be {{teacher, weight, mode}}, got {d!r}")
        if d.get("mode", "cosine") not in EmbeddingDistillation.MODES:
            raise ConfigError(f"distill.mode {d['mode']!r}; valid: {', '.join(EmbeddingDistillation.MODES)}")
    cw = cfg.get("class_weights")
    if cw is not None and (not isinstance(cw, dict) or set(cw) != {"power"}):
        raise ConfigError(f"class_weights must be {{power: P}}, got {cw!r}")
    if cfg["amp"] not in ("auto", True, False):
        raise ConfigError(f"amp {cfg['amp']!r}; valid: auto, true, false")
    for st in ("stage1", "stage2"):
        if not isinstance(cfg[st]["epochs"], int) or cfg[st]["epochs"] < 0:
            raise ConfigError(f"{st}.epochs must be a non-negative integer, got {cfg[st]['epochs']!r}")


def config_hash(cfg: dict[str, Any]) -> str:
    """A short hash of the whole config: a checkpoint resumes only under the config that wrote it."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
