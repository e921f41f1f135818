"""MNIST from its original IDX files (gzipped or not), as tensors and DataLoaders.

The files are read as raw bytes (a header and uint8 pixels): nothing in them is unpickled or run.

Expected folder layout (the files torchvision keeps under ``MNIST/raw/``)::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

>>> from prunekit.data.mnist import MNIST_MEAN
>>> MNIST_MEAN
(0.1307,)
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import DataError

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension (N,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
LAYOUT = (
    "expected a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder / stem}[.gz] not found; {LAYOUT}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except EOFError:
        raise DataError(f"{path}: the gzip stream ends early (truncated download?); {LAYOUT}") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}); {LAYOUT}") from None


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) whose header must start with ``magic``; uint8 array.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "l-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]))
    >>> read_idx(p, LABELS_MAGIC).tolist()
    [7, 3]
    """
    p = Path(path)
    raw = _read_bytes(p)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        what = "the file is empty (0 bytes)" if not raw else f"file too short ({len(raw)} bytes) for an IDX header"
        raise DataError(f"{p}: {what}; {LAYOUT}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{p}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}; {LAYOUT}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{p}: header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header}; "
            "file truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist_arrays(path: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28) and labels int64 (N,) of one split (``"train"`` or ``"test"``)."""
    if split not in FILES:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found at {folder}; {LAYOUT}")
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(folder, img_stem), IMAGES_MAGIC)
    labels = read_idx(_find(folder, lbl_stem), LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels; files mismatched")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{folder / lbl_stem}: label {int(labels.max())} out of range 0..9; file corrupt?")
    return images, labels.astype(np.int64)


def _to_dataset(
    images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> TensorDataset:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]
    x = (x - float(mean[0])) / float(std[0])
    return TensorDataset(x, torch.from_numpy(labels))


def mnist_datasets(
    path: str | os.PathLike[str],
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[TensorDataset, TensorDataset]:
    """Normalised train/test datasets of (1, 28, 28) images.

    ``limit`` keeps a class-balanced slice of each split (equal counts per class as far as the split
    allows, random within a class): the train slice drawn with ``seed``, the test slice always with
    seed 0, so evaluations of runs with different seeds score the same images.
    """
    from prunekit.data.cifar10 import _balanced_indices

    if len(mean) != 1 or len(std) != 1:
        raise DataError(f"MNIST is greyscale: mean/std need one value each, got {tuple(mean)} / {tuple(std)}")
    out = []
    for split in ("train", "test"):
        images, labels = load_mnist_arrays(path, split)
        if limit is not None:
            idx = _balanced_indices(labels, limit, seed if split == "train" else 0)
            images, labels = images[idx], labels[idx]
        out.append(_to_dataset(images, labels, mean, std))
    return out[0], out[1]


def mnist_loaders(
    path: str | os.PathLike[str],
    batch_size: int = 128,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with ``seed``) and test DataLoaders for the MNIST IDX folder at ``path``.

    Batches are ``(B, 1, 28, 28)`` float images and ``(B,)`` int64 labels.
    """
    train, test = mnist_datasets(path, mean, std, limit, seed)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size, shuffle=True, generator=g)
    test_loader = DataLoader(test, max(batch_size, 256), shuffle=False)
    return train_loader, test_loader
