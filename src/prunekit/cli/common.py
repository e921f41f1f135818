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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from prunekit.cli.main import UsageError
from prunekit.data.choose import (  # noqa: F401  (re-exported: the CLI's names for them)
    DATASETS,
    DEFAULT_FILES,
    INPUT_SHAPES,
    NORMALIZATIONS,
    SUBSET_SEED,
    balanced_subset,
    data_root,
    dataset_for_model,
    dataset_labels,
    describe_images,
    example_input_for,
    make_loaders,
)
from prunekit.errors import ConfigError
from prunekit.moduletools import model_device


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
    """Add ``--model NAME`` (its help lists the registered names) and the mutually exclusive
    ``--checkpoint PATH`` / ``--pretrained PATH``."""
    from prunekit.models import available

    parser.add_argument("--model", metavar="NAME", help=f"registered model name: {', '.join(available())}")
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

    A model built from its name alone starts from the random initialisation of ``--seed`` (0 when
    the command has no such option), so two runs of one command line start from the same weights.

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
        ckpt = load_checkpoint(checkpoint)  # CheckpointError naming the path and the problem (and, for a
        # plain state dict, --model NAME --pretrained PATH)
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
    import torch

    with torch.random.fork_rng(devices=[]):  # a fresh model's initial weights follow --seed (default 0)
        torch.manual_seed(int(getattr(args, "seed", 0) or 0))
        model = create(name)
    if pretrained:
        model = load_pretrained(model, pretrained)
    return model, name, {"config": {}, "metadata": {}}


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
    args: argparse.Namespace, model_name: str | None = None, metadata: Mapping[str, Any] | None = None,
    augment: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders for the data options in ``args`` (see :func:`add_data_args`).

    ``model_name`` and a checkpoint's ``metadata`` fill in ``--dataset`` / ``--normalize`` when
    they were not given; ``augment=False`` leaves the training images as they are.
    """
    meta = metadata or {}
    dataset = resolve_dataset(args, model_name, meta)
    normalize = getattr(args, "normalize", None)
    if dataset != "cifar10" and normalize:
        raise UsageError(f"--normalize applies to cifar10 only; {dataset} uses its own statistics")
    if dataset == "digits" and getattr(args, "data", None):
        raise UsageError("the digits data set ships with scikit-learn; drop --data")
    if dataset == "cifar10":
        normalize = normalize or meta.get("normalize") or "cifar"
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalisation {normalize!r} in the checkpoint; pass --normalize cifar|imagenet")
    return make_loaders(dataset, getattr(args, "data", None), batch_size=int(getattr(args, "batch_size", 128)),
                        normalize=normalize, limit=getattr(args, "limit", None),
                        seed=int(getattr(args, "seed", 0) or 0), augment=augment)


def validation_loader(args: argparse.Namespace, model_name: str | None, metadata: Mapping[str, Any] | None,
                      images: int) -> DataLoader:
    """``images`` class-balanced *training* images, not augmented: what searches score candidates on
    (the test split stays unseen)."""
    from prunekit.data.choose import balanced_subset

    train, _ = make_loaders_from_args(args, model_name, metadata, augment=False)
    return DataLoader(balanced_subset(train.dataset, images), train.batch_size, shuffle=False)

def resolved_normalize(args: argparse.Namespace, dataset: str, metadata: Mapping[str, Any] | None = None) -> str | None:
    """The normalisation a cifar10 run uses (for recording in checkpoint metadata); None otherwise."""
    if dataset != "cifar10":
        return None
    return getattr(args, "normalize", None) or (metadata or {}).get("normalize") or "cifar"


# --- outputs: checked before any work -------------------------------------------------------------


def add_force_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--force``: let an output replace one of the command's input files."""
    parser.add_argument("--force", action="store_true",
                        help="allow an output to replace an input file (e.g. --out equal to --checkpoint)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_writable(flag: str, path: Path) -> None:
    """UsageError unless ``path`` can be written: not a folder, inside a writable folder."""
    import secrets

    from prunekit.io import temp_prefix

    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file path (e.g. {path / 'model.pt'})")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # a missing folder is created when writing
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is a file, not a folder; choose another {flag}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is read-only; make it writable or choose another {flag}")
    probe = folder / f"{temp_prefix(path)}{os.getpid()}-probe{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc}); "
                         f"choose another {flag}") from None


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Sequence[str | os.PathLike[str] | None] = (),
    force: bool = False,
) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace an input.

    ``outputs`` maps each option to its path (None: not given); ``inputs`` are the files the
    command reads. Raises :class:`~prunekit.cli.main.UsageError` (exit status 2) when an output is
    a directory, lies in a folder that cannot be written (a probe temp file is created and removed
    there), is read-only, is the same file as another output, or is the same file as an input
    (unless ``force``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "in.pt").write_bytes(b"weights")
    >>> check_outputs({"--out": d / "new" / "out.pt", "--plan-out": None}, [d / "in.pt"])
    >>> check_outputs({"--out": d / "in.pt"}, [d / "in.pt"])
    Traceback (most recent call last):
    ...
    prunekit.cli.main.UsageError: --out .../in.pt would replace the input .../in.pt; pass --force to ...
    >>> check_outputs({"--out": d / "in.pt"}, [d / "in.pt"], force=True)
    >>> check_outputs({"--out": d / "a.pt", "--onnx": d / "a.pt"})
    Traceback (most recent call last):
    ...
    prunekit.cli.main.UsageError: --out and --onnx are the same file .../a.pt; give each its own path
    >>> check_outputs({"--out": d})
    Traceback (most recent call last):
    ...
    prunekit.cli.main.UsageError: --out ... is a directory; give a file path (e.g. .../model.pt)
    """
    seen: dict[Path, str] = {}
    for flag, given in outputs.items():
        if given is None or str(given) == "":
            continue
        path = Path(given)
        key = path.resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} are the same file {path}; give each its own path")
        seen[key] = flag
        _check_writable(flag, path)
        for source in inputs:
            if source is not None and str(source) != "" and not force and _same_file(path, Path(source)):
                raise UsageError(f"{flag} {path} would replace the input {source}; pass --force to overwrite "
                                 f"it or choose another {flag}")


# --- subsets: class-balanced, never the first N of a class-ordered split ----------------------------



def evaluation_set(args: argparse.Namespace, test_loader: DataLoader) -> tuple[DataLoader, str]:
    """The loader an evaluation runs on, and what it holds (to print with the result).

    With ``--max-batches N`` that is a class-balanced subset (seed 0) of ``N`` full batches,
    never the first ``N`` batches of a split that may be ordered by class. A request larger than
    the split says so.

    >>> from torch.utils.data import TensorDataset
    >>> ordered = DataLoader(TensorDataset(torch.zeros(100, 1), torch.arange(100) // 25), batch_size=10)
    >>> loader, used = evaluation_set(argparse.Namespace(max_batches=2, limit=None), ordered)
    >>> used, len(loader.dataset)
    ('20 images (5 of each of 4 classes, seed 0)', 20)
    """
    limit = getattr(args, "limit", None)
    max_batches = getattr(args, "max_batches", None)
    dataset, batch = test_loader.dataset, int(test_loader.batch_size or 1)
    notes = []
    if limit and len(dataset) < limit:
        notes.append(f"--limit {limit:,} asks for more: the test split has {len(dataset):,}")
    loader, subset = test_loader, bool(limit)
    if max_batches:
        want = max_batches * batch
        if want < len(dataset):
            loader, subset = DataLoader(balanced_subset(dataset, want), batch, shuffle=False), True
        else:
            notes.append(f"--max-batches {max_batches} x {batch} asks for {want:,}: "
                         f"the {'limited ' if limit else ''}test split has {len(dataset):,}, all used")
    return loader, describe_images(loader.dataset, subset) + "".join(f"; {n}" for n in notes)


def calibrated_importance(spec: str, model: nn.Module, targets: list, args: argparse.Namespace, model_name: str,
                          metadata: Mapping[str, Any]) -> Any:
    """The criterion ``spec`` names, calibrated on ``--calib-batches`` shuffled training batches when it
    needs data (a named error for an unknown criterion before any data is loaded); says what it used."""
    from prunekit import criteria

    criteria.make(spec)
    loader = None
    if criteria.needs_data(spec):
        loader, _ = make_loaders_from_args(args, model_name, metadata)
    imp = criteria.build(spec, model, targets, loader, args.calib_batches)
    seen = getattr(imp, "batches_seen", None)
    if loader is not None and seen:
        print(f"calibration: {seen} batch(es) of up to {loader.batch_size} training images, shuffled with seed "
              f"{int(getattr(args, 'seed', 0) or 0)} (all classes mixed)")
    return imp
