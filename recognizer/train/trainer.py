"""Metric-learning training in two stages, judged on classes it never trained on.

* Stage 1, backbone frozen: the head trains, on cached pooled features (``stage1.cached``,
  the CPU fast path; see ``feature_cache``) or on streamed augmented images.
* Stage 2 unfreezes the top ``stage2.unfreeze_blocks`` backbone blocks (``freezing``), with
  their own, smaller learning rate (``objective``), starting from stage 1's best weights.

The best epoch, over both stages and including the untrained start, is kept by Recall@1 on
validation *classes* held out from the training classes (``evaluate``). A checkpoint after
every epoch makes the run resumable and crash-safe (``checkpoint``); under ``torchrun`` it is
data-parallel (``parallel``). This module only sequences the run: ``Trainer`` and
``run_training``, the entry point of ``tools/train.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..data.manifest import Manifest, load_manifest
from ..fileio import write_text_atomic
from ..models.model import build_model
from .checkpoint import (
    CHECKPOINT_FILE,
    RunState,
    load_checkpoint,
    restore_optimizers,
    save_checkpoint,
    write_log,
)
from .config import ConfigError, load_config
from .data import batch_loader, split_rows, stream_loader
from .distill import build_teacher
from .evaluate import Validation
from .feature_cache import CacheNet, cache_features
from .freezing import freeze_backbone, set_train_mode
from .losses import EmbeddingDistillation, LossConfigError, build_loss, build_miner
from .objective import Objective, optimizer_step, stage_optimizers, stage_schedulers
from .parallel import broadcast_buffers, data_parallel, ranks_in_sync, setup_distributed, sum_over_ranks


class Trainer:
    """One training run: ``build`` once, then ``fit`` runs the stages, epoch by epoch (``train_one_epoch``)."""

    def __init__(
        self, cfg: dict[str, Any], manifest: Manifest, out_dir: str | Path, *, progress: bool = True
    ):
        self.cfg, self.manifest, self.out = cfg, manifest, Path(out_dir)
        self.progress = progress
        self.dist = setup_distributed()

    # -- build
    def build(self, resume: bool = False) -> None:
        cfg = self.cfg
        ckpt_path = self.out / CHECKPOINT_FILE
        if ckpt_path.exists() and not resume:
            raise ConfigError(
                f"{self.out} already holds a run ({CHECKPOINT_FILE}); pass --resume or another --out"
            )
        torch.manual_seed(cfg["seed"])
        self.train_items, self.val_items, self.tr_rows, self.va_rows = split_rows(
            self.manifest, cfg["data"]["val_fraction"], cfg["seed"]
        )
        self.classes = {c: i for i, c in enumerate(sorted(self.train_items))}
        self.validation = Validation(
            self.manifest, self.va_rows, cfg["data"]["num_workers"], cfg["channels_last"]
        )
        m, bs = cfg["sampler"]["m"], cfg["sampler"]["batch_size"]
        if bs % m or bs // m > len(self.classes):
            raise ConfigError(
                f"sampler.batch_size {bs} must be a multiple of sampler.m {m} and at most m x classes = "
                f"{m * len(self.classes)}"
            )
        self.model = build_model(dict(cfg["model"])).to(self.dist.device)
        self.teacher = build_teacher(cfg, self.model)
        if self.teacher is not None:
            self.teacher.to(self.dist.device)
        labels = np.array([self.classes[r.item_id] for r in self.tr_rows])
        try:
            self.loss_fn = build_loss(
                cfg, num_classes=len(self.classes), embedding_size=self.model.embedding_dim, labels=labels
            ).to(self.dist.device)
            self.miner = build_miner(cfg.get("miner"))
            d = cfg.get("distill")
            self.distill = EmbeddingDistillation(d.get("mode", "cosine")) if d else None
        except LossConfigError as e:
            raise ConfigError(str(e)) from None
        weight = float((cfg.get("distill") or {}).get("weight", 1.0))
        self.objective = Objective(self.model, self.loss_fn, self.miner, self.distill, weight)
        self.amp = cfg["amp"] is True or (cfg["amp"] == "auto" and self.dist.device.type == "cuda")
        if cfg["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.state = RunState()
        self._ckpt = None
        if resume and ckpt_path.exists():
            self._ckpt = load_checkpoint(ckpt_path, cfg)
            self.model.load_state_dict(self._ckpt["model"])
            self.loss_fn.load_state_dict(self._ckpt["loss"])
            self.state = RunState(**json.loads(self._ckpt["state"]))
            self.best_state = self._ckpt["best_model"]
        else:
            self.best_state = None

    # -- stages
    def fit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = self.cfg
        if not self.state.log:
            r1 = self.validate(use_cache=cfg["stage1"]["cached"] and cfg["stage1"]["epochs"] > 0)
            self._record(0, 0, {"loss": float("nan"), "lr": 0.0, "val_recall_at_1": r1, "images_per_second": 0.0,
                                "seconds": 0.0, "metric_loss": float("nan"), "distill_loss": float("nan")})  # fmt: skip
        for stage in (1, 2):
            epochs = cfg[f"stage{stage}"]["epochs"]
            if (
                stage < self.state.stage
                or epochs == 0
                or (stage == self.state.stage and self.state.epoch >= epochs)
            ):
                continue
            if stage > self.state.stage:
                self.state.stage, self.state.epoch = stage, 0
            self.run_stage(stage)
        return self.finish(time.perf_counter() - t0)

    def run_stage(self, stage: int) -> None:
        cfg, sc = self.cfg, self.cfg[f"stage{stage}"]
        cached = stage == 1 and sc["cached"]
        if stage == 2 and self.state.epoch == 0 and self.best_state is not None:
            self.model.load_state_dict(self.best_state)  # fine-tune from the best head, not the last
        backbone_params = freeze_backbone(self.model, sc["unfreeze_blocks"] if stage == 2 else 0)
        opt, loss_opt = stage_optimizers(cfg, sc, self.model, self.loss_fn, backbone_params)
        if cached:
            x, y, t = self._cached_data()
            ds = torch.utils.data.TensorDataset(*([x, y] + ([t] if t is not None else [])))
            loader = batch_loader(cfg, self.dist, y, ds, 0)
        else:
            self._set_center(None)
            loader = stream_loader(
                cfg, self.dist, self.manifest, self.tr_rows, self.classes, self.model.preprocess
            )
        scheds = stage_schedulers(cfg, len(loader.batch_sampler), sc["epochs"], opt, loss_opt)
        if self._ckpt is not None and self._ckpt.get("stage") == stage:  # resuming inside this stage
            restore_optimizers(self._ckpt, opt, loss_opt, scheds)
        self._ckpt = None
        objective = data_parallel(self.objective, self.dist)
        for epoch in range(self.state.epoch + 1, sc["epochs"] + 1):
            stats = self.train_one_epoch(objective, loader, opt, loss_opt, scheds, cached, stage, epoch)
            broadcast_buffers(self.model, self.dist)
            stats["val_recall_at_1"] = self.validate(use_cache=cached)
            self.state.epoch = epoch
            self._record(stage, epoch, stats)
            self.save_checkpoint(stage, opt, loss_opt, scheds)

    def _cached_data(self):
        cfg = self.cfg
        cache_dir = Path(cfg["data"]["cache_dir"]) if cfg["data"]["cache_dir"] else self.out / "cache"
        # The "pretrained" teacher is the student before training: its embeddings follow from the cached
        # pooled features, so the plain feature cache serves (and is shared with runs without distillation).
        from_features = self.teacher is not None and cfg["distill"]["teacher"] == "pretrained"
        x, y, t, skipped = cache_features(
            self.model, self.manifest, self.tr_rows, cfg["stage1"]["copies"], cfg["augment"], cfg["seed"],
            teacher=None if from_features else self.teacher, cache_dir=cache_dir, dist=self.dist,
            num_workers=cfg["data"]["num_workers"],
        )  # fmt: skip
        self._set_center(torch.from_numpy(x))
        if from_features:
            with torch.no_grad():
                t = torch.cat(
                    [self.teacher.model.embed_features(c) for c in torch.from_numpy(x).split(4096)]
                ).numpy()
        self._note_skipped(skipped)
        y = torch.tensor([self.classes[c] for c in y])
        return torch.from_numpy(x), y, (torch.from_numpy(t) if t is not None else None)

    def _set_center(self, feats: torch.Tensor | None) -> None:
        """A centring head gets the mean pooled feature of the training photos, once, before training."""
        head = self.model.head
        if not getattr(head, "center", False) or self.state.log[1:]:
            return
        if feats is None:  # streaming: the clean training photos, embedded once
            from ..models.embed import embed_paths

            rows = self.tr_rows[:: max(1, len(self.tr_rows) // 2000)]
            res = embed_paths(CacheNet(self.model, None), [self.manifest.resolve(r) for r in rows],
                              bboxes=[r.bbox for r in rows], num_workers=self.cfg["data"]["num_workers"])  # fmt: skip
            feats = torch.from_numpy(res.embeddings)
        with torch.no_grad():
            head.mean.copy_(feats.float().mean(0).to(head.mean.device))
        if self.teacher is not None and self.cfg["distill"]["teacher"] == "pretrained":
            self.teacher.model.head.mean.copy_(head.mean)  # the starting point, centred alike

    def train_one_epoch(
        self, objective, loader, opt, loss_opt, scheds, cached: bool, stage: int, epoch: int
    ) -> dict:
        from tqdm import tqdm

        loader.batch_sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "epoch"):
            loader.dataset.epoch = epoch
        set_train_mode(self.model)
        dev = self.dist.device
        t_ep = time.perf_counter()
        total = metric_sum = distill_sum = 0.0
        n = 0
        show = self.progress and self.dist.main
        bar = tqdm(loader, desc=f"stage {stage} epoch {epoch}", leave=False, disable=not show)
        for batch in bar:
            if cached:
                xb, yb, tb = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
            else:
                xb, yb, bad = batch
                self._note_skipped([(loader.dataset.paths[i], e) for i, e in bad])
                if xb is None:
                    continue
                tb = None
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            if not cached and self.cfg["channels_last"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
                if not cached and self.teacher is not None:
                    tb = self.teacher(xb)
                loss, metric, dl = objective(xb, yb, None if tb is None else tb.to(dev), cached)
            optimizer_step(loss, opt, loss_opt, scheds)
            total += float(loss.detach()) * len(yb)
            metric_sum += float(metric) * len(yb)
            distill_sum += float(dl) * len(yb)
            n += len(yb)
            bar.set_postfix(loss=f"{total / n:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        seconds = time.perf_counter() - t_ep
        total, metric_sum, distill_sum, n = sum_over_ranks([total, metric_sum, distill_sum, n], self.dist)
        return {
            "loss": total / max(1, n),
            "metric_loss": metric_sum / max(1, n),
            "distill_loss": distill_sum / max(1, n) if self.distill is not None else float("nan"),
            "lr": opt.param_groups[0]["lr"],
            "images_per_second": n / max(seconds, 1e-9),
            "seconds": seconds,
        }

    def validate(self, use_cache: bool) -> float:
        """Recall@1 among the validation classes' clean photos (on rank 0; the others return NaN).

        ``use_cache``: through the head only, on cached pooled features (valid while the backbone
        is frozen); otherwise through the whole model.
        """
        if not self.va_rows or not self.dist.main:
            self.dist.barrier()
            return float("nan")
        r1, skipped = self.validation(self.model, use_cache, self.dist.device)
        self._note_skipped(skipped)
        self.dist.barrier()
        return r1

    # -- bookkeeping
    def _note_skipped(self, items) -> None:
        known = {s[0] for s in self.state.skipped}
        for path, msg in items:
            if str(path) not in known:
                self.state.skipped.append((str(path), msg))
                known.add(str(path))
                if self.dist.main:
                    print(f"skipped {path}: {msg}")

    def _record(self, stage: int, epoch: int, stats: dict) -> None:
        row = {"stage": stage, "epoch": epoch, **{k: float(v) for k, v in stats.items()}}
        self.state.log.append(row)
        r1 = row["val_recall_at_1"]
        best = self.state.best.get("val_recall_at_1")
        if best is None or (not math.isnan(r1) and (math.isnan(best) or r1 > best)):
            self.state.best = {"val_recall_at_1": r1, "stage": stage, "epoch": epoch}
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.dist.main and epoch and self.progress:
            print(
                f"stage {stage} epoch {epoch}/{self.cfg[f'stage{stage}']['epochs']}: loss {row['loss']:.4f} "
                f"lr {row['lr']:.2e} val R@1 {r1:.4f} {row['images_per_second']:.1f} img/s ({row['seconds']:.1f} s)",
                flush=True,
            )

    def save_checkpoint(self, stage: int, opt, loss_opt, scheds) -> None:
        """The checkpoint and the logs, from rank 0 (see ``checkpoint.save_checkpoint``)."""
        if not self.dist.main:
            return
        save_checkpoint(self.out / CHECKPOINT_FILE, self.cfg, stage, self.state, self.model, self.loss_fn,
                        self.best_state, opt, loss_opt, scheds)  # fmt: skip
        write_log(self.out, self.state.log)

    def finish(self, seconds: float) -> dict[str, Any]:
        in_sync = ranks_in_sync(self.model, self.dist)
        if not self.dist.main:
            return {}
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        best = self.state.best
        self.model.save(self.out / "model", extra={"best_stage": best["stage"], "best_epoch": best["epoch"],
                                                   "val_recall_at_1": best["val_recall_at_1"]})  # fmt: skip
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
        write_log(self.out, self.state.log)
        summary = {
            "train_items": len(self.train_items),
            "val_items": len(self.val_items),
            "train_images": len(self.tr_rows),
            "world_size": self.dist.world_size,
            "ranks_weights_equal": in_sync,
            "best_stage": best["stage"],
            "best_epoch": best["epoch"],
            "best_val_recall_at_1": best["val_recall_at_1"],
            "untrained_val_recall_at_1": self.state.log[0]["val_recall_at_1"],
            "beats_untrained": bool(best["stage"] > 0),
            "epochs_run": len(self.state.log) - 1,
            "seconds": seconds,
            "skipped": [{"path": p, "reason": r} for p, r in self.state.skipped],
            "model_dir": str(self.out / "model"),
        }
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary


def run_training(
    config: str | None,
    overrides: list[str],
    manifest: str,
    data_root: str | None,
    out_dir: str,
    *,
    resume: bool = False,
    allow_outside_root: bool = False,
) -> dict[str, Any]:
    """Entry point of ``tools/train.py``."""
    cfg = load_config(config, overrides)
    man = load_manifest(manifest, data_root, allow_outside_root=allow_outside_root)
    if man.errors:
        import sys

        print(man.error_report(), file=sys.stderr)
    trainer = Trainer(cfg, man, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer.build(resume=resume)
    trainer._note_skipped((f"{manifest}:{e.line}", e.message) for e in man.errors)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.world_size > 1 and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()
