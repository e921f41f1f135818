"""Datasets: CIFAR-10 (JPEG npz or pickle folder), MNIST (IDX), scikit-learn digits."""

from prunekit.data.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10_datasets,
    cifar10_loaders,
    load_cifar10_arrays,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10_datasets",
    "cifar10_loaders",
    "load_cifar10_arrays",
]
