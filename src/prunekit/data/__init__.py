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
from prunekit.data.digits import DIGITS_MEAN, DIGITS_STD, digits_datasets, digits_loaders, load_digits_arrays
from prunekit.data.mnist import (
    MNIST_MEAN,
    MNIST_STD,
    load_mnist_arrays,
    mnist_datasets,
    mnist_loaders,
    read_idx,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "cifar10_datasets",
    "cifar10_loaders",
    "digits_datasets",
    "digits_loaders",
    "load_cifar10_arrays",
    "load_digits_arrays",
    "load_mnist_arrays",
    "mnist_datasets",
    "mnist_loaders",
    "read_idx",
]
