"""Argument helpers shared by the CLI commands: choosing a model and a data set.

A command adds the options it needs, then turns the parsed ``args`` into objects::

    add_model_args(parser)                  # --model, --checkpoint, --pretrained
    add_data_args(parser)                   # --dataset, --data, --batch-size, --normalize, --limit
    model, name, config = load_model_from_args(args)
    train, test = make_loaders_from_args(args, name, metadata)

Checkpoints written by ``prunekit train`` record their data set and normalisation in their
metadata (keys ``dataset`` / ``normalize``), so later commands pick them up by default.

>>> tuple(example_input_for("lenet5").shape), tuple(example_input_for("cifar10").shape)
((1, 1, 28, 28), (1, 3, 32, 32))
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from prunekit.cli.main import UsageError
from prunekit.errors import CheckpointError, ConfigError
from prunekit.moduletools import model_device

DATASETS = ("cifar10", "mnist", "digits")
NORMALIZATIONS = ("cifar", "imagenet")
INPUT_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "digits": (1, 8, 8)}
DEFAULT_FILES = {"cifar10": "cifar10-jpeg75.npz", "mnist": "mnist"}


def positive_int(text: str) -> int:
    """argparse type: an int >= 1.

    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--model NAME`` and the mutually exclusive ``--checkpoint PATH`` / ``--pretrained PATH``."""
    parser.add_argument("--model", metavar="NAME", help="registered model name (see 'prunekit info --help')")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", metavar="PATH", help="prunekit checkpoint (it names its model; --model is optional)"
    )
    source.add_argument(
        "--pretrained", metavar="PATH", help="plain state-dict file (.pt/.th) to load into --model"
    )


def add_data_args(parser: argparse.ArgumentParser, batch_size: int = 128) -> None:
    """Add ``--dataset``, ``--data``, ``--batch-size``, ``--normalize`` and ``--limit``."""
    parser.add_argument(
        "--dataset", choices=DATASETS, help="data set (default: from the checkpoint, else from the model name)"
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="cifar10: the .npz or a cifar-10-batches-py folder; mnist: the IDX folder "
        "(default: $PRUNEKIT_DATA or ../shared/data); digits needs none",
    )
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"default {batch_size}")
    parser.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        help="cifar10 input normalisation: 'cifar' (CIFAR-10 statistics) or 'imagenet' (the pretrained "
        "ResNets); default: from the checkpoint, else 'cifar'",
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="use only N images of each split (quick runs)"
    )


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (torch CPU threads; default: torch's own choice)."""
    parser.add_argument("--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads`` when it was given."""
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


def dataset_for_model(model_name: str | None) -> str:
    """The data set a registered model's input fits: LeNets -> mnist, digits_cnn -> digits, else cifar10.

    >>> dataset_for_model("lenet300_100"), dataset_for_model("digits_cnn"), dataset_for_model("vgg16_bn")
    ('mnist', 'digits', 'cifar10')
    """
    name = model_name or ""
    if name.startswith("lenet"):
        return "mnist"
    if name.startswith("digits"):
        return "digits"
    return "cifar10"


def example_input_for(model_name_or_dataset: str, batch: int = 1) -> torch.Tensor:
    """A zero input of the right shape for a data set name or a registered model name."""
    dataset = model_name_or_dataset if model_name_or_dataset in DATASETS else dataset_for_model(model_name_or_dataset)
    return torch.zeros(batch, *INPUT_SHAPES[dataset])


def check_model_fits(model: nn.Module, model_name: str, dataset: str) -> None:
    """Raise :class:`ConfigError` when ``model`` cannot take ``dataset``'s input shape.

    One batch-of-2 forward in eval mode (train/eval mode restored), before any long run.

    >>> from prunekit.models import create
    >>> check_model_fits(create("lenet5"), "lenet5", "digits")
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: model 'lenet5' does not accept digits inputs (1, 8, 8) ...
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input_for(dataset, batch=2).to(model_device(model)))
    except RuntimeError as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"model {model_name!r} does not accept {dataset} inputs {INPUT_SHAPES[dataset]} ({first}); "
            f"use --dataset {dataset_for_model(model_name)} or another model"
        ) from exc
    finally:
        model.train(was_training)


def load_model_from_args(args: argparse.Namespace) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the model named by ``--model`` / ``--checkpoint`` / ``--pretrained``.

    Returns ``(model, model_name, info)`` where ``info`` has the model ``config`` and the
    checkpoint ``metadata`` (empty unless a prunekit checkpoint was loaded), and for a prunekit
    checkpoint its ``masks`` and ``plan`` (None when absent) and the whole ``checkpoint``.
    """
    from prunekit.models import create, load_pretrained
    from prunekit.train import build_from_checkpoint, load_checkpoint

    name: str | None = getattr(args, "model", None)
    checkpoint: str | None = getattr(args, "checkpoint", None)
    pretrained: str | None = getattr(args, "pretrained", None)
    if checkpoint:
        try:
            ckpt = load_checkpoint(checkpoint)  # CheckpointError naming the path when missing/corrupt
        except CheckpointError as exc:
            if not Path(checkpoint).is_file():
                raise
            raise CheckpointError(f"{exc}; for a plain state dict use --model NAME --pretrained PATH") from exc
        named = ckpt["model_name"]
        if named:
            if name and name != named:
                raise UsageError(f"--model {name!r} but {checkpoint} holds a {named!r}; drop --model")
            model, ckpt = build_from_checkpoint(checkpoint)
            info = {"config": dict(ckpt.model_config), "metadata": dict(ckpt.metadata)}
            return model, named, {**info, "masks": ckpt.masks, "plan": ckpt.plan, "checkpoint": ckpt}
        if not name:
            raise UsageError(f"{checkpoint} does not name its model; pass --model NAME as well")
        return load_pretrained(create(name), checkpoint), name, {"config": {}, "metadata": dict(ckpt["metadata"])}
    if not name:
        raise UsageError("give --model NAME (with --pretrained PATH to load weights) or --checkpoint PATH")
    model = create(name)
    if pretrained:
        model = load_pretrained(model, pretrained)
    return model, name, {"config": {}, "metadata": {}}


def data_root() -> Path:
    """``$PRUNEKIT_DATA`` if set, else ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("PRUNEKIT_DATA", Path("..") / "shared" / "data"))


def resolve_dataset(
    args: argparse.Namespace, model_name: str | None = None, metadata: Mapping[str, Any] | None = None
) -> str:
    """``--dataset``, else the checkpoint's recorded data set, else the one the model name implies."""
    meta = metadata or {}
    if getattr(args, "dataset", None):
        return str(args.dataset)
    if meta.get("dataset") in DATASETS:
        return str(meta["dataset"])
    return dataset_for_model(model_name)


def make_loaders_from_args(
    args: argparse.Namespace, model_name: str | None = None, metadata: Mapping[str, Any] | None = None
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for the data options in ``args`` (see :func:`add_data_args`).

    ``model_name`` and a checkpoint's ``metadata`` fill in ``--dataset`` / ``--normalize`` when
    they were not given.
    """
    from prunekit.data import (
        CIFAR10_MEAN,
        CIFAR10_STD,
        IMAGENET_MEAN,
        IMAGENET_STD,
        cifar10_loaders,
        digits_loaders,
        mnist_loaders,
    )

    meta = metadata or {}
    dataset = resolve_dataset(args, model_name, meta)
    batch_size = int(getattr(args, "batch_size", 128))
    limit = getattr(args, "limit", None)
    seed = int(getattr(args, "seed", 0) or 0)
    normalize = getattr(args, "normalize", None)
    if dataset != "cifar10" and normalize:
        raise UsageError(f"--normalize applies to cifar10 only; {dataset} uses its own statistics")
    if dataset == "digits":
        if getattr(args, "data", None):
            raise UsageError("the digits data set ships with scikit-learn; drop --data")
        train, test = digits_loaders(batch_size=batch_size, seed=seed)
        return (_limited(train, limit, seed), _limited(test, limit, seed)) if limit else (train, test)
    path = Path(getattr(args, "data", None) or data_root() / DEFAULT_FILES[dataset])
    if dataset == "mnist":
        return mnist_loaders(path, batch_size=batch_size, limit=limit, seed=seed)
    normalize = normalize or meta.get("normalize") or "cifar"
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {normalize!r} in the checkpoint; pass --normalize cifar|imagenet")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else (CIFAR10_MEAN, CIFAR10_STD)
    return cifar10_loaders(path, batch_size=batch_size, mean=mean, std=std, limit=limit, seed=seed)


def _limited(loader: DataLoader, limit: int, seed: int) -> DataLoader:
    """The same loader over the first ``limit`` items of its (already shuffled-split) data set."""
    subset = torch.utils.data.Subset(loader.dataset, range(min(limit, len(loader.dataset))))
    shuffle = isinstance(loader.sampler, torch.utils.data.RandomSampler)
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(subset, loader.batch_size, shuffle=shuffle, generator=g)


def resolved_normalize(args: argparse.Namespace, dataset: str, metadata: Mapping[str, Any] | None = None) -> str | None:
    """The normalisation a cifar10 run uses (for recording in checkpoint metadata); None otherwise."""
    if dataset != "cifar10":
        return None
    return getattr(args, "normalize", None) or (metadata or {}).get("normalize") or "cifar"
