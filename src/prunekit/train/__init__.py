"""Training engine: fit / fine-tune / evaluate for any task, resumable training state, checkpoints."""

from prunekit.train import distributed
from prunekit.train.bn import Recalibrated, recalibrate_bn
from prunekit.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from prunekit.train.engine import (
    Classification,
    EpochRecord,
    EvalResult,
    StepHook,
    StopTraining,
    Task,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    fit,
    forward_batch,
    lr_at,
    make_optimizer,
    model_device,
    seed_everything,
    train_epoch,
)
from prunekit.train.state import TrainState

__all__ = [
    "Classification",
    "EpochRecord",
    "EvalResult",
    "Recalibrated",
    "StepHook",
    "StopTraining",
    "Task",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "build_from_checkpoint",
    "distributed",
    "evaluate",
    "fit",
    "forward_batch",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "model_device",
    "recalibrate_bn",
    "save_checkpoint",
    "seed_everything",
    "train_epoch",
]
