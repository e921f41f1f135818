"""``prunekit prune``: score, allocate and mask a model, then save the pruned checkpoint.

Examples::

    prunekit prune --model resnet20 --pretrained ../shared/data/pretrained/resnet20-12fca82f.th \\
        --normalize imagenet --granularity element --criterion l1 --sparsity 0.8 --scope global \\
        --out pruned.pt
    prunekit prune --checkpoint checkpoints/resnet20_cifar10jpeg.pt --granularity nm:2:4 \\
        --exclude conv1 --criterion taylor --calib-batches 4 --out r20_24.pt

The output is a prunekit checkpoint (every command reads it) whose metadata holds the pruning
settings under ``"pruning"``; the masks travel with it, so ``prunekit train --checkpoint`` keeps them
in force (in Python: ``model, ckpt = prunekit.checkpoint.build(path); ckpt.masks.apply(model)``).
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from prunekit import criteria as registry
from prunekit.cli import prune_structured
from prunekit.cli.common import (
    add_data_args,
    add_force_arg,
    add_model_args,
    add_threads_arg,
    apply_threads,
    check_outputs,
    positive_int,
)
from prunekit.cli.main import UsageError
from prunekit.registry import build as component

HELP = "prune a model (element / vector / kernel / channel / block / N:M / pattern masks)"
TYPES = {"conv": nn.Conv2d, "linear": nn.Linear}


def _layer_ratio(text: str) -> tuple[str, float]:
    name, sep, ratio = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(ratio)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=RATIO (e.g. layer1.0.conv1=0.5), got {text!r}") from None


def register(subparsers: Any) -> None:
    """Add the ``prune`` sub-command."""
    p = subparsers.add_parser("prune", help=HELP, description=HELP + ".")
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--granularity", default="element", metavar="G",
        help="element | vector[:DIM] | kernel | channel[:DIM] | block:HxW | nm:N:M | pattern | lb:NUM_PE "
        "(default element)",
    )
    p.add_argument("--criterion", default="l1", metavar="C",
                   help=f"NAME or NAME:key=value,... with NAME one of {', '.join(registry.CRITERIA)} "
                   "(e.g. magnitude:p=2, obd:method=hutchinson,samples=4; default l1)")
    p.add_argument(
        "--sparsity", type=float, metavar="S",
        help="fraction of weights to remove, in [0, 1) (default: the ratio nm/pattern imply)",
    )
    p.add_argument("--scope", choices=("global", "uniform", "sensitivity"), default=None,
                   help="one ranking over all layers, the same ratio in each, or (--structured) per-group ratios "
                        "from a sensitivity scan (default: global for masks, uniform for N:M / pattern; with "
                        "--structured sensitivity for --target macs or params, else uniform; chosen by "
                        "benchmarks/RESULTS.md sections 2, 4 and 4b)")
    p.add_argument(
        "--score-norm", choices=("lamp", "max", "l2"), help="per-layer score normalisation for --scope global"
    )
    p.add_argument("--min-keep", type=float, default=0.0, metavar="F",
                   help="global scope: keep at least this fraction of every layer (default 0)")
    p.add_argument("--reduction", choices=("sum", "mean", "max", "l2"), default=None,
                   help="how element scores combine into a group score (default: sum for masks, "
                        "mean for --structured, where groups span layers of different sizes)")
    p.add_argument("--layer", action="append", type=_layer_ratio, default=[], metavar="NAME=RATIO",
                   help="pin one layer's sparsity (repeatable)")
    p.add_argument("--include", action="append", default=None, metavar="GLOB", help="prune only these layers")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB", help="never prune these layers")
    p.add_argument("--types", default="conv,linear", help="module types to prune: conv, linear (default both)")
    p.add_argument("--calib-batches", type=positive_int, default=8, metavar="N",
                   help="calibration batches for data-driven criteria (default 8)")
    p.add_argument("--eval", action="store_true", help="report test top-1 before and after pruning")
    p.add_argument("--max-batches", type=positive_int, metavar="N",
                   help="with --eval: N batches' worth of test images, class-balanced (seed 0)")
    p.add_argument("--out", metavar="PATH", help="where to write the pruned checkpoint")
    add_force_arg(p)
    p.add_argument("--recalibrate-bn", type=positive_int, default=None, metavar="N",
                   help="re-estimate the BatchNorm statistics from N training batches right after pruning, before "
                   "--eval's pruned top-1 and any fine-tuning (default off)")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                   help="fine-tune N epochs after pruning (masks in force, or the small model with --structured; "
                   "default 0)")
    p.add_argument("--finetune-lr", type=float, default=0.005, metavar="LR",
                   help="peak fine-tuning learning rate, cosine decay (default 0.005, 1/10 of train's default)")
    p.add_argument("--seed", type=int, default=0, help="seeds fine-tuning and the data order (default 0)")
    add_threads_arg(p)
    p.add_argument("--structured", action="store_true",
                   help="physically remove channels (dependency-aware) instead of masking")
    prune_structured.add_arguments(p)
    p.set_defaults(func=run)


def _types(text: str) -> tuple[type[nn.Module], ...]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in TYPES]
    if not names or unknown:
        raise UsageError(f"--types takes a comma list of {', '.join(TYPES)}; got {text!r}")
    return tuple(TYPES[n] for n in names)


def _importance(name: str, model: nn.Module, targets: list, args: argparse.Namespace, info: dict) -> Any:
    from prunekit.cli.common import calibrated_importance

    return calibrated_importance(name, model, targets, args, info["name"], info["metadata"])


def _allocation(args: argparse.Namespace, granularity: Any) -> Any:
    from prunekit.allocation import Global, Uniform, WithOverrides

    s = args.sparsity
    if s is None:
        implied = getattr(granularity, "fixed_sparsity", getattr(granularity, "min_sparsity", None))
        if implied is None:
            raise UsageError(f"--sparsity is required with --granularity {args.granularity}")
        s = implied
    if args.scope == "sensitivity":
        raise UsageError("--scope sensitivity applies to --structured; for masks run `prunekit sensitivity "
                         "--sparsity S --prune-out FILE`, or use --scope global (the measured default for masks)")
    if args.scope is None:  # measured: global beats uniform for element masks (RESULTS.md sections 2 and 4)
        fixed = getattr(granularity, "fixed_sparsity", getattr(granularity, "min_sparsity", None)) is not None
        args.scope = "uniform" if fixed else "global"
    base = Global(s, min_keep=args.min_keep, normalize=args.score_norm) if args.scope == "global" else Uniform(s)
    if args.scope != "global" and (args.score_norm or args.min_keep):
        raise UsageError("--score-norm and --min-keep apply to --scope global only")
    return WithOverrides(base, dict(args.layer)) if args.layer else base


def _top1(model: nn.Module, args: argparse.Namespace, info: dict) -> tuple[float, str]:
    """Test top-1 on the (``--max-batches``: class-balanced) test set, and what that set holds."""
    from prunekit.cli.common import evaluation_set, make_loaders_from_args
    from prunekit.train import evaluate

    _, test = make_loaders_from_args(args, info["name"], info["metadata"])
    loader, used = evaluation_set(args, test)
    return evaluate(model, loader).top1, used


def check_args_outputs(args: argparse.Namespace) -> None:
    """``--out`` (and ``--plan-out``) writable and not an input unless ``--force``; before any work."""
    check_outputs({"--out": args.out, "--plan-out": getattr(args, "plan_out", None)},
                  [args.checkpoint, args.pretrained, getattr(args, "data", None)], force=args.force)


def run(args: argparse.Namespace) -> int:
    """Prune and print the per-layer sparsity table; returns the exit code."""
    apply_threads(args)
    if args.structured:
        return int(prune_structured.run(args) or 0)
    from prunekit import granularity as gran
    from prunekit.cli.common import load_model_from_args, resolve_dataset, resolved_normalize
    from prunekit.pruning import prune
    from prunekit.targets import select
    from prunekit.train import save_checkpoint

    if args.out is None:
        raise UsageError("--out PATH is required (where the pruned checkpoint goes)")
    if args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.plan_out:
        raise UsageError("--plan-out applies to --structured only (masks keep no plan)")
    check_args_outputs(args)
    model, name, info = load_model_from_args(args)
    info = {**info, "name": name}
    check_recalibration(model, name, args)
    g = component("granularity", args.granularity)
    if hasattr(g, "reduction") and args.reduction not in (None, "sum"):
        g.reduction = args.reduction
    targets = select(model, types=_types(args.types), include=args.include, exclude=args.exclude)
    for t in targets:  # fail on a bad layer before any (slow) calibration
        g.check(t)
    if isinstance(g, gran.Pattern):
        g = gran.Pattern.from_weights([t.weight for t in targets])
    allocation = _allocation(args, g)
    before, _ = _top1(model, args, info) if args.eval else (None, "")
    importance = _importance(args.criterion, model, targets, args, info)
    masks = prune(model, targets, importance, g, allocation, enforce=False)
    print(f"{name}: {importance!r} scores, {g!r}, {allocation!r}")
    print(masks.format_report(model))
    recalibrate(model, name, info, args)
    if args.eval:
        after, used = _top1(model, args, info)
        print(f"test top-1 on {used}: dense {100 * before:.2f}%  pruned {100 * after:.2f}%")
    dataset = resolve_dataset(args, name, info["metadata"])
    metadata = {
        **info["metadata"],
        "dataset": dataset,
        "pruning": {
            "granularity": args.granularity, "criterion": args.criterion, "scope": args.scope,
            "sparsity": float(masks.sparsity()), "layers": {k: float(v) for k, v in args.layer},
        },
    }
    normalize = resolved_normalize(args, dataset, info["metadata"])
    if normalize:
        metadata["normalize"] = normalize
    if args.finetune_epochs:
        finetune(model, name, {**info, "masks": masks}, args, metadata)
    else:
        save_checkpoint(args.out, model, name, info["config"], metadata, masks=masks, plan=info.get("plan"))
    print(f"wrote {args.out}")
    return 0


def check_recalibration(model: nn.Module, name: str, args: argparse.Namespace) -> None:
    """Refuse ``--recalibrate-bn`` for a model without BatchNorm before any work."""
    from prunekit.train.bn import batchnorms

    if args.recalibrate_bn is not None and not batchnorms(model):
        raise UsageError(f"--recalibrate-bn: {name} has no BatchNorm layer to recalibrate; drop the option")


def recalibrate(model: nn.Module, name: str, info: dict, args: argparse.Namespace) -> None:
    """``--recalibrate-bn N``: fresh BatchNorm statistics from N training batches, augmented as in
    training (un-augmented ones describe other statistics than the model was trained under)."""
    if args.recalibrate_bn is None:
        return
    from prunekit.cli.common import make_loaders_from_args
    from prunekit.train.bn import recalibrate_bn

    train, _ = make_loaders_from_args(args, name, info["metadata"])
    done = recalibrate_bn(model, train, max_batches=args.recalibrate_bn)
    print(f"BatchNorm recalibration: {done.layers} layers re-estimated from {done.batches} batches "
          f"({done.samples} images)")


def finetune(model: nn.Module, name: str, info: dict, args: argparse.Namespace, metadata: dict,
             also_write: Any = None) -> None:
    """Fine-tune after pruning (masks from ``info`` in force) and write ``args.out`` every epoch
    (with ``also_write()``, e.g. the plan file, in the same all-or-nothing write)."""
    from prunekit.cli.common import make_loaders_from_args
    from prunekit.cli.train_cmd import train_and_save
    from prunekit.train import TrainConfig

    cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=args.seed, progress=False)
    train, test = make_loaders_from_args(args, name, info["metadata"])
    print(f"fine-tuning {args.finetune_epochs} epoch(s), lr {args.finetune_lr:g} (cosine)")
    metadata = {**metadata, "train": {"epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule, "seed": cfg.seed,
                                      "batch_size": args.batch_size}}
    train_and_save(model, name, info, cfg, train, test, args.out, metadata, also_write=also_write)
