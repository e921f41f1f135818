"""scikit-learn's 8x8 handwritten digits (1,797 images, bundled with scikit-learn: no download).

The whole dataset fits in a few hundred KB, so it is the offline demo's data set.

>>> train, test = digits_loaders(batch_size=32)
>>> x, y = next(iter(train))
>>> tuple(x.shape), y.dtype
((32, 1, 8, 8), torch.int64)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError, DataError

DIGITS_MEAN = 0.305  # of the [0, 1]-scaled images (pixel values 0..16 divided by 16)
DIGITS_STD = 0.376


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 8, 8) scaled to [0, 1] and labels int64 (N,)."""
    try:
        from sklearn.datasets import load_digits  # optional dependency: prunekit[data]
    except ImportError as exc:
        raise DataError("the digits data set needs scikit-learn: pip install 'prunekit[data]'") from exc
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # (N, 8, 8), pixel values are 0..16
    return images, bunch.target.astype(np.int64)


def digits_datasets(
    test_fraction: float = 0.2, seed: int = 0, mean: float = DIGITS_MEAN, std: float = DIGITS_STD
) -> tuple[TensorDataset, TensorDataset]:
    """A seeded random train/test split of normalised (1, 8, 8) digit images."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = load_digits_arrays()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = max(1, int(round(len(labels) * test_fraction)))
    test_idx, train_idx = order[:n_test], order[n_test:]
    x = (torch.from_numpy(images).unsqueeze(1) - mean) / std  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])


def digits_loaders(
    batch_size: int = 64, test_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with ``seed``) and test DataLoaders of ``(B, 1, 8, 8)`` digits."""
    train, test = digits_datasets(test_fraction, seed)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(train, batch_size, shuffle=True, generator=g), DataLoader(test, max(batch_size, 256))
