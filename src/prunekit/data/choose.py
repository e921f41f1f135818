"""Choosing a data set: names, input shapes, default files, loaders, class-balanced subsets.

Shared by the CLI and by recipes (``prunekit run``), so both read data the same way.

>>> tuple(example_input_for("lenet5").shape), tuple(example_input_for("cifar10").shape)
((1, 1, 28, 28), (1, 3, 32, 32))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from prunekit.errors import ConfigError

DATASETS = ("cifar10", "mnist", "digits")
NORMALIZATIONS = ("cifar", "imagenet")
INPUT_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "digits": (1, 8, 8)}
DEFAULT_FILES = {"cifar10": "cifar10-jpeg75.npz", "mnist": "mnist"}
SUBSET_SEED = 0  # every test-split subset is drawn with this seed, so runs score the same images


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



def data_root() -> Path:
    """``$PRUNEKIT_DATA`` if set, else ``../shared/data`` relative to the working directory."""
    return Path(os.environ.get("PRUNEKIT_DATA", Path("..") / "shared" / "data"))



def _limited(loader: DataLoader, limit: int, seed: int) -> DataLoader:
    """The same loader over a class-balanced ``limit``-subset of its data set, drawn with ``seed``."""
    subset = balanced_subset(loader.dataset, limit, seed)
    shuffle = isinstance(loader.sampler, torch.utils.data.RandomSampler)
    g = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(subset, loader.batch_size, shuffle=shuffle, generator=g)



def dataset_labels(dataset: Any) -> torch.Tensor | None:
    """The labels of a data set when it exposes them (TensorDataset, ``.labels`` / ``.targets``, Subset).

    >>> from torch.utils.data import Subset, TensorDataset
    >>> dataset_labels(Subset(TensorDataset(torch.zeros(4, 2), torch.tensor([3, 1, 2, 0])), [1, 3])).tolist()
    [1, 0]
    """
    if isinstance(dataset, torch.utils.data.Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    else:
        labels = getattr(dataset, "labels", None)
        labels = getattr(dataset, "targets", None) if labels is None else labels
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    return labels if labels.dim() == 1 and not labels.is_floating_point() else None



def balanced_subset(dataset: Any, n: int, seed: int = SUBSET_SEED) -> torch.utils.data.Subset:
    """``n`` items of ``dataset``, equal counts per class as far as possible, in a seeded random order.

    Items within a class are drawn at random with ``seed``; a data set without readable labels
    gets a seeded shuffle instead.

    >>> from torch.utils.data import TensorDataset
    >>> ordered = TensorDataset(torch.zeros(30, 1), torch.arange(30) // 10)  # sorted by class
    >>> sub = balanced_subset(ordered, 6)
    >>> torch.bincount(dataset_labels(sub)).tolist(), len(sub)
    ([2, 2, 2], 6)
    """
    import numpy as np

    from prunekit.data.cifar10 import _balanced_indices

    n = min(int(n), len(dataset))
    labels = dataset_labels(dataset)
    rng = np.random.default_rng(seed)
    if labels is None:
        chosen = rng.permutation(len(dataset))[:n]
    else:
        chosen = rng.permutation(_balanced_indices(labels.cpu().numpy(), n, seed))
    return torch.utils.data.Subset(dataset, chosen.tolist())



def describe_images(dataset: Any, subset: bool = False) -> str:
    """How many images of how many classes ``dataset`` holds, for an evaluation's report.

    >>> from torch.utils.data import TensorDataset
    >>> ordered = TensorDataset(torch.zeros(30, 1), torch.arange(30) // 10)
    >>> describe_images(balanced_subset(ordered, 6), subset=True)
    '6 images (2 of each of 3 classes, seed 0)'
    >>> describe_images(ordered)
    '30 images (the whole test split: 10 of each of 3 classes)'
    """
    n = len(dataset)
    labels = dataset_labels(dataset)
    if labels is None or labels.numel() == 0:
        return f"{n:,} images" + (f" (a seeded shuffle, seed {SUBSET_SEED})" if subset else "")
    counts = torch.unique(labels, return_counts=True)[1]
    lo, hi = int(counts.min()), int(counts.max())
    each = f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"
    classes = f"{each} of each of {len(counts)} classes"
    parent = getattr(dataset, "dataset", None)
    if subset and parent is not None and (all_labels := dataset_labels(parent)) is not None:
        total = len(torch.unique(all_labels))
        if total > len(counts):
            classes = f"{each} of each of {len(counts)} of the {total} classes"
    if subset:
        return f"{n:,} images ({classes}, seed {SUBSET_SEED})"
    return f"{n:,} images (the whole test split: {classes})"


def default_path(dataset: str) -> Path | None:
    """Where ``dataset``'s files are looked for by default (None for digits, which ships with scikit-learn)."""
    return data_root() / DEFAULT_FILES[dataset] if dataset in DEFAULT_FILES else None


def make_loaders(
    dataset: str,
    path: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 128,
    normalize: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    augment: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with ``seed``) and test loaders of ``dataset``.

    ``path``: the cifar10 ``.npz`` / batches folder or the MNIST IDX folder (default under
    :func:`data_root`); ``normalize`` (cifar10 only): ``"cifar"`` (default) or ``"imagenet"``
    statistics; ``limit``: class-balanced subsets of that many images of each split; ``augment``:
    random crop + flip of cifar10 training images (the other data sets are never augmented).
    """
    from prunekit.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
    from prunekit.data.digits import digits_loaders
    from prunekit.data.mnist import mnist_loaders

    if dataset not in DATASETS:
        raise ConfigError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset != "cifar10" and normalize:
        raise ConfigError(f"normalize applies to cifar10 only; {dataset} uses its own statistics")
    if dataset == "digits":
        if path:
            raise ConfigError("the digits data set ships with scikit-learn; give no data path")
        train, test = digits_loaders(batch_size=batch_size, seed=seed)
        return (_limited(train, limit, seed), _limited(test, limit, SUBSET_SEED)) if limit else (train, test)
    where = Path(path) if path else default_path(dataset)
    if dataset == "mnist":
        return mnist_loaders(where, batch_size=batch_size, limit=limit, seed=seed)
    normalize = normalize or "cifar"
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else (CIFAR10_MEAN, CIFAR10_STD)
    return cifar10_loaders(where, batch_size=batch_size, mean=mean, std=std, augment=augment, limit=limit,
                           seed=seed)
