"""Training engine: fit / fine-tune / evaluate, checkpoints."""

from prunekit.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from prunekit.train.engine import (
    EpochRecord,
    EvalResult,
    TrainConfig,
    evaluate,
    fit,
    seed_everything,
    train_epoch,
)

__all__ = [
    "EpochRecord",
    "EvalResult",
    "TrainConfig",
    "build_from_checkpoint",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "train_epoch",
]
