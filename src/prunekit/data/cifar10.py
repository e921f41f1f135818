"""CIFAR-10 from the JPEG ``.npz`` copy or a standard ``cifar-10-batches-py`` folder.

Decoded images are cached as uint8 ``.npy`` under :func:`prunekit.data.cache.cache_dir`, so a
second load takes well under a second.

>>> from prunekit.data.cifar10 import CIFAR10_MEAN
>>> CIFAR10_MEAN
(0.4914, 0.4822, 0.4465)
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from prunekit.data.cache import cache_dir, source_key
from prunekit.data.transforms import Normalize, RandomCropFlip
from prunekit.errors import DataError
from prunekit.io import atomic_write

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NPZ_LAYOUT = (
    "expected a .npz with arrays train_jpeg, train_offsets, train_labels, test_jpeg, test_offsets, "
    "test_labels (see ../shared/data/README.md)"
)
PICKLE_LAYOUT = "expected a cifar-10-batches-py folder with data_batch_1..5 and test_batch"


@dataclass(frozen=True)
class ArraySplit:
    """A decoded split: ``images`` uint8 (N, 32, 32, 3) and ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    from PIL import Image  # optional dependency: prunekit[data]

    order = np.arange(len(offsets) - 1) if indices is None else indices
    out = np.empty((len(order), 32, 32, 3), dtype=np.uint8)
    for j, i in enumerate(order):
        raw = blob[offsets[i] : offsets[i + 1]].tobytes()
        out[j] = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    return out


def _load_npz_split(path: Path, split: str, limit: int | None = None) -> ArraySplit:
    """Decode a split of the JPEG npz; with ``limit``, only the balanced slice is decoded."""
    try:
        with np.load(path) as z:
            names = (f"{split}_jpeg", f"{split}_offsets", f"{split}_labels")
            missing = [n for n in names if n not in z.files]
            if missing:
                raise DataError(f"{path}: missing array {missing[0]!r}; {NPZ_LAYOUT}")
            blob, offsets, labels = (z[n] for n in names)
            if len(offsets) != len(labels) + 1:
                raise DataError(f"{path}: {len(offsets) - 1} {split} images but {len(labels)} labels; file corrupt?")
            indices = None if limit is None else _balanced_indices(labels, limit)
            images = _decode_jpegs(blob, offsets, indices)
            if indices is not None:
                labels = labels[indices]
    except DataError:
        raise
    except ImportError as exc:
        raise DataError("decoding the JPEG CIFAR-10 needs Pillow: pip install 'prunekit[data]'") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc}); {NPZ_LAYOUT}") from exc
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels; file corrupt?")
    return ArraySplit(images, labels.astype(np.int64))


def _load_pickle_split(folder: Path, split: str) -> ArraySplit:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        f = folder / name
        if not f.is_file():
            raise DataError(f"{f} not found; {PICKLE_LAYOUT}")
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(d[b"labels"], dtype=np.int64))
        except Exception as exc:
            raise DataError(f"{f}: cannot read ({type(exc).__name__}: {exc}); {PICKLE_LAYOUT}") from exc
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def load_cifar10_arrays(path: str | os.PathLike[str], split: str = "train", cache: bool = True) -> ArraySplit:
    """Decode one split (``"train"`` or ``"test"``) of CIFAR-10 at ``path`` into uint8 arrays.

    ``path`` is the JPEG ``.npz`` file or a ``cifar-10-batches-py`` folder.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    src = Path(path)
    if not src.exists():
        raise DataError(f"CIFAR-10 not found at {src}; pass the .npz file or a cifar-10-batches-py folder")
    cached = _cache_file(src, split)
    if cache and cached.is_file():
        try:
            with np.load(cached) as z:
                return ArraySplit(z["images"], z["labels"])
        except Exception:
            cached.unlink(missing_ok=True)  # stale or broken cache: rebuild below
    split_arrays = _load_pickle_split(src, split) if src.is_dir() else _load_npz_split(src, split)
    if cache:
        try:
            atomic_write(cached, lambda tmp: _save_npz(tmp, split_arrays))
        except OSError as exc:  # read-only or full cache folder: work uncached
            warnings.warn(f"cannot write the CIFAR-10 cache {cached} ({exc}); set PRUNEKIT_CACHE", stacklevel=2)
    return split_arrays


def _cache_file(src: Path, split: str) -> Path:
    """Cache path keyed on the source's version (each batch file's, for a pickle folder)."""
    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.is_file())
        key = hashlib.sha1("|".join(source_key(f) for f in files).encode()).hexdigest()[:16]
    else:
        key = source_key(src)
    return cache_dir() / f"cifar10-{key}-{split}.npz"


def _load_slice(src: Path, split: str, limit: int) -> ArraySplit:
    """The balanced ``limit``-slice of a split: from the cache when present, else decoding only it."""
    if not src.exists():
        raise DataError(f"CIFAR-10 not found at {src}; pass the .npz file or a cifar-10-batches-py folder")
    if src.is_dir() or _cache_file(src, split).is_file():
        full = load_cifar10_arrays(src, split)
        idx = _balanced_indices(full.labels, limit)
        return ArraySplit(full.images[idx], full.labels[idx])
    return _load_npz_split(src, split, limit)


def _save_npz(tmp: Path, arrays: ArraySplit) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, images=arrays.images, labels=arrays.labels)


class ImageArrayDataset(Dataset):
    """Images held as one uint8 tensor; transforms run per item on float (C, H, W) in [0, 1]."""

    def __init__(self, arrays: ArraySplit, transforms: Sequence[object] = ()) -> None:
        self.images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
        self.labels = torch.from_numpy(arrays.labels)
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255.0)
        for t in self.transforms:
            x = t(x)
        return x, int(self.labels[i])


def cifar10_datasets(
    path: str | os.PathLike[str],
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    augment: bool = True,
    limit: int | None = None,
) -> tuple[ImageArrayDataset, ImageArrayDataset]:
    """Train and test datasets; ``limit`` keeps a class-balanced slice of each split (for tests).

    Without a cached decode of the npz, only the slice is decoded, so small slices load fast.
    """
    norm = Normalize(mean, std)
    if limit is None:
        train, test = load_cifar10_arrays(path, "train"), load_cifar10_arrays(path, "test")
    else:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        train, test = _load_slice(Path(path), "train", limit), _load_slice(Path(path), "test", limit)
    train_tf = (RandomCropFlip(32, 4), norm) if augment else (norm,)
    return ImageArrayDataset(train, train_tf), ImageArrayDataset(test, (norm,))


def _balanced_indices(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """``limit`` indices taking classes in turn (random order within each class), sorted.

    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> np.bincount(labels[_balanced_indices(labels, 4)]).tolist()
    [2, 2]
    """
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # position of each index within its class
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    chosen = perm[np.argsort(rank[perm], kind="stable")[:limit]]
    return np.sort(chosen)


def cifar10_loaders(
    path: str | os.PathLike[str],
    batch_size: int = 128,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    augment: bool = True,
    limit: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled, augmented) and test DataLoaders for CIFAR-10 at ``path``.

    Pass ``mean=IMAGENET_MEAN, std=IMAGENET_STD`` for the pretrained CIFAR ResNets.
    """
    train, test = cifar10_datasets(path, mean, std, augment, limit)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size, shuffle=True, num_workers=num_workers, generator=g, drop_last=False)
    test_loader = DataLoader(test, max(batch_size, 256), shuffle=False, num_workers=num_workers)
    return train_loader, test_loader
