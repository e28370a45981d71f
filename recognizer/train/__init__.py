"""Metric-learning training of the embedding model, one concern per module.

``trainer`` sequences a run (``run_training``, the entry point of ``tools/train.py``; ``Trainer``)
from the pieces: ``config`` (defaults, YAML ``base:`` chains, overrides), ``data`` (the
class-disjoint split, augmentation, loaders) with ``sampling`` (class-balanced batches, sharded
over ranks) and ``augment`` (background paste), ``freezing`` (which backbone blocks train),
``objective`` (model + loss as one module, optimisers, schedule) with ``losses`` (metric losses,
distillation) and ``distill`` (the teacher), ``feature_cache`` (stage 1's pooled features),
``evaluate`` (validation Recall@1), ``checkpoint`` (resumable, crash-safe runs) and ``parallel``
(DDP under ``torchrun``). The names below are the package's public API.
"""

from .augment import BackgroundPaste, augment_grid, foreground_mask
from .checkpoint import CHECKPOINT_FILE, RunState, load_checkpoint
from .config import DEFAULTS, DISTILL_KEYS, ConfigError, config_hash, load_config
from .data import TrainImages, make_augment, split_classes
from .distill import Teacher, build_teacher
from .evaluate import recall_at_1, validation_recall
from .feature_cache import cache_features
from .freezing import backbone_units, freeze_backbone, set_train_mode
from .losses import EmbeddingDistillation, LossConfigError, build_loss, build_miner
from .objective import Objective, warmup_cosine
from .parallel import Dist, setup_distributed
from .sampling import BalancedBatchSampler
from .trainer import Trainer, run_training

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULTS",
    "DISTILL_KEYS",
    "BackgroundPaste",
    "BalancedBatchSampler",
    "ConfigError",
    "Dist",
    "EmbeddingDistillation",
    "LossConfigError",
    "Objective",
    "RunState",
    "Teacher",
    "TrainImages",
    "Trainer",
    "augment_grid",
    "backbone_units",
    "build_loss",
    "build_miner",
    "build_teacher",
    "cache_features",
    "config_hash",
    "foreground_mask",
    "freeze_backbone",
    "load_checkpoint",
    "load_config",
    "make_augment",
    "recall_at_1",
    "run_training",
    "set_train_mode",
    "setup_distributed",
    "split_classes",
    "validation_recall",
    "warmup_cosine",
]
