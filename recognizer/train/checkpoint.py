"""Checkpoints and logs: a run that is killed at any moment resumes (``--resume``) where it was.

After every epoch one file is written to a temp name, fsynced and renamed, so a crash leaves
the previous checkpoint whole; it holds the weights, the best epoch's weights, the optimiser
and schedule states and the ``RunState``. It is read with ``weights_only=True`` (no pickle
code runs) and only under the config that wrote it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_bytes_atomic, write_csv_atomic, write_text_atomic
from .config import ConfigError, config_hash

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class RunState:
    """What a checkpoint holds besides tensors: where the run is and what it has seen."""

    stage: int = 1
    epoch: int = 0  # epochs completed within ``stage``
    best: dict[str, Any] = field(default_factory=dict)  # {val_recall_at_1, stage, epoch}
    log: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def save_checkpoint(
    path: Path, cfg: dict[str, Any], stage: int, state: RunState, model: torch.nn.Module, loss_fn: torch.nn.Module,
    best_state: dict | None, opt, loss_opt, scheds,
) -> None:  # fmt: skip
    """One file, written to a temp name, fsynced, renamed: a crash leaves the previous checkpoint whole."""
    ck = {
        "config_hash": config_hash(cfg),
        "stage": stage,
        "state": json.dumps(state.__dict__),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "loss": {k: v.detach().cpu() for k, v in loss_fn.state_dict().items()},
        "best_model": best_state,
        "opt": opt.state_dict(),
        "scheds": [s.state_dict() for s in scheds],
    }
    if loss_opt is not None:
        ck["loss_opt"] = loss_opt.state_dict()
    buf = io.BytesIO()
    torch.save(ck, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickle code runs) and check it belongs to ``cfg``."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file
        raise ConfigError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if ck.get("config_hash") != config_hash(cfg):
        raise ConfigError(
            f"{path}: written by another config (hash {ck.get('config_hash')}, this one {config_hash(cfg)}); "
            "resume with the run's own config.yaml and overrides"
        )
    return ck


def restore_optimizers(ck: dict[str, Any], opt, loss_opt, scheds) -> None:
    """Optimiser and schedule states of a run resumed inside the stage it was checkpointed in."""
    opt.load_state_dict(ck["opt"])
    if loss_opt is not None and "loss_opt" in ck:
        loss_opt.load_state_dict(ck["loss_opt"])
    for s, sd in zip(scheds, ck["scheds"], strict=False):
        s.load_state_dict(sd)


def write_log(out: Path, log: list[dict[str, Any]]) -> None:
    """The epoch log as ``log.csv`` and ``log.json`` in ``out`` (both written atomically)."""
    cols = list(dict.fromkeys(k for row in log for k in row))
    write_csv_atomic(out / "log.csv", cols, [[row.get(c, "") for c in cols] for row in log])
    write_text_atomic(out / "log.json", json.dumps(log, indent=1))
