"""``prunekit train``: train (or fine-tune) a registered model and write a checkpoint.

Examples::

    prunekit train --model digits_cnn --dataset digits --epochs 10 --out digits.pt
    prunekit train --model lenet5 --data ../shared/data/mnist --epochs 2 --lr 0.05 --out lenet5.pt
    prunekit train --model resnet20 --pretrained ../shared/data/pretrained/resnet20-12fca82f.th \\
        --normalize imagenet --epochs 3 --lr 0.01 --out r20.pt

The checkpoint records the model name and config, plus the data set, normalisation, training
settings and final accuracy as metadata, so ``prunekit eval --checkpoint PATH`` needs no more.
A checkpoint with masks is fine-tuned with the masks in force (it stays exactly as sparse), one
with a channel-pruning plan stays small; both are written back with their masks / plan. The file is
rewritten after every epoch with the resumable training state: ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

from prunekit.cli.common import (
    add_data_args,
    add_force_arg,
    add_model_args,
    add_threads_arg,
    apply_threads,
    check_model_fits,
    check_outputs,
    describe_images,
    load_model_from_args,
    make_loaders_from_args,
    positive_int,
    resolve_dataset,
    resolved_normalize,
)

HELP = "train or fine-tune a model and save a checkpoint"


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser("train", help=HELP, description=HELP + ".")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", metavar="PATH", required=True,
                   help="checkpoint to write (atomically, every epoch); with --resume it may be --checkpoint")
    add_force_arg(p)
    p.add_argument("--epochs", type=int, default=10, help="default 10")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="default sgd (momentum 0.9)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="default 5e-4")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine", help="default cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="in [0, 1) (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the RNGs and the data order (default 0)")
    p.add_argument("--channels-last", action="store_true", help="use the channels_last memory format")
    p.add_argument(
        "--max-steps-per-epoch", type=positive_int, metavar="N", help="cap the optimizer steps per epoch"
    )
    p.add_argument("--progress", action="store_true", help="show progress bars (needs tqdm)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in --checkpoint with its own settings (epochs, lr, "
                   "schedule, batch size, seed), optimizer state, RNG state and step")
    add_threads_arg(p)
    p.set_defaults(func=run)


def make_config(args: argparse.Namespace):
    """The :class:`~prunekit.train.TrainConfig` for the parsed options (ConfigError on bad values)."""
    from prunekit.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        channels_last=args.channels_last,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps_per_epoch,
        progress=args.progress,
    )


def print_epoch(record: Any) -> None:
    """One line per epoch: loss, test top-1/top-5, time."""
    t = record.test
    print(
        f"epoch {record.epoch:3d}  lr {record.lr:.4g}  train loss {record.train_loss:.4f}  "
        f"test loss {t.loss:.4f}  top-1 {100 * t.top1:.2f}%  top-5 {100 * t.top5:.2f}%  ({record.seconds:.1f}s)"
    )
    sys.stdout.flush()


def train_and_save(
    model: Any, name: str, info: dict[str, Any], cfg: Any, train_loader: Any, test_loader: Any, out: str,
    metadata: dict[str, Any], resume: Any = None, also_write: Callable[[], Any] | None = None,
) -> list[Any]:
    """Fit ``model`` with the checkpoint's masks in force, writing ``out`` after every epoch.

    The file always holds the last good epoch: model, masks, plan, metadata and the resumable
    training state (``prunekit train --checkpoint out --resume`` continues it). A diverging run
    stops with :class:`~prunekit.train.TrainingDiverged` and leaves the last good file in place.
    ``also_write()`` (e.g. the plan file) is written together with every checkpoint: both or neither.
    """
    from prunekit.io import write_together
    from prunekit.train import TrainState, fit, save_checkpoint
    from prunekit.train.distributed import is_main, unwrap

    masks, plan = info.get("masks"), info.get("plan")
    if masks is not None:
        masks.apply(unwrap(model))  # enforced through every optimizer step (on the inner model under DDP)
    state = resume if resume is not None else TrainState()

    def save(record: Any, st: Any) -> None:
        if not is_main():  # under DDP only rank 0 writes (every rank holds the same weights and state)
            return
        final = unwrap(model)
        final = final.to(memory_format=torch.contiguous_format) if cfg.channels_last else final
        meta = {**metadata, "history": [{"epoch": r.epoch, "train_loss": r.train_loss, "top1": r.test.top1}
                                         for r in history_so_far],
                "top1": record.test.top1, "top5": record.test.top5, "loss": record.test.loss}
        with write_together():
            save_checkpoint(out, final, name, info["config"], meta, masks=masks, plan=plan,
                            train_state=st.state_dict())
            if also_write is not None:
                also_write()

    history_so_far: list[Any] = []

    def on_epoch(record: Any) -> None:
        history_so_far.append(record)
        print_epoch(record)

    try:
        history = fit(model, train_loader, test_loader, cfg, on_epoch=on_epoch, state=state, on_epoch_state=save)
    finally:
        if masks is not None:
            masks.remove()
    if not history and is_main():  # nothing to train (0 epochs, or a finished state): still write the file
        with write_together():
            save_checkpoint(out, unwrap(model), name, info["config"], metadata, masks=masks, plan=plan,
                            train_state=state.state_dict())
            if also_write is not None:
                also_write()
    return history


def run(args: argparse.Namespace) -> int:
    """Train, evaluate each epoch, save the checkpoint after each epoch; returns the exit code."""
    from prunekit.cli.main import UsageError
    from prunekit.train import TrainState

    cfg = make_config(args)  # validate before any expensive loading
    inputs = [args.pretrained, args.data] + ([] if args.resume else [args.checkpoint])  # --resume: in place
    check_outputs({"--out": args.out}, inputs, force=args.force)
    apply_threads(args)
    model, name, info = load_model_from_args(args)
    resume = None
    if args.resume:
        ckpt = info.get("checkpoint")
        if ckpt is None or ckpt.train_state is None:
            raise UsageError("--resume needs --checkpoint of a prunekit train run (it holds no training state)")
        resume = TrainState.from_state_dict(ckpt.train_state)
        recorded = info["metadata"].get("train", {})
        for key in ("epochs", "lr", "optimizer", "momentum", "weight_decay", "schedule", "label_smoothing",
                    "max_steps_per_epoch", "batch_size", "seed"):
            if key in recorded:
                setattr(args, key, recorded[key])  # the interrupted run's own settings
        cfg = make_config(args)
        if resume.epoch >= cfg.epochs:
            raise UsageError(
                f"the run in {args.checkpoint} finished ({resume.epoch} of {cfg.epochs} epochs); to train further, "
                "drop --resume (a new run starts from its weights)"
            )
    dataset = resolve_dataset(args, name, info["metadata"])
    check_model_fits(model, name, dataset)
    train_loader, test_loader = make_loaders_from_args(args, name, info["metadata"])
    what = ", ".join(x for x in (
        f"masks in force ({100 * info['masks'].sparsity():.1f}% sparse)" if info.get("masks") is not None else "",
        "channel-pruned (plan kept)" if info.get("plan") is not None else "",
        f"resuming at epoch {resume.epoch}, step {resume.step}" if resume is not None else "",
    ) if x)  # fmt: skip
    tested = describe_images(test_loader.dataset, subset=bool(args.limit))
    print(f"training {name} on {dataset}: {len(train_loader.dataset)} train / {len(test_loader.dataset)} test images"
          + (f"; {what}" if what else "") + (f"\ntest set each epoch: {tested}" if args.limit else ""))
    metadata = {
        **info["metadata"],
        "dataset": dataset,
        "normalize": resolved_normalize(args, dataset, info["metadata"]),
        "train": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
    }
    train_and_save(model, name, info, cfg, train_loader, test_loader, args.out, metadata, resume)
    print(f"saved {args.out}")
    return 0
