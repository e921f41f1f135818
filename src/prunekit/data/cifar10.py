"""CIFAR-10 from the JPEG ``.npz`` copy or a standard ``cifar-10-batches-py`` folder.

Decoded images are cached as uint8 ``.npy`` under :func:`prunekit.data.cache.cache_dir`, so a
second load takes well under a second.

Both sources are untrusted input and no code in them runs: the ``.npz`` is read with
``allow_pickle=False``, and the pickled batches of a ``cifar-10-batches-py`` folder go through
:class:`BatchUnpickler`, which admits only the numpy array types the format holds.

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
import zipfile
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


def _npz_problem(path: Path, exc: BaseException) -> str:
    """Why ``path`` did not open as a ``.npz`` of plain arrays, in words (no advice to load unsafely)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return f"cannot be opened ({err.strerror or err})"
    if not head:
        return "the file is empty (0 bytes)"
    if not head.startswith(b"PK"):
        return "it is not a .npz file (no zip signature at its start)"
    if isinstance(exc, ValueError) and "pickle" in str(exc):
        return "it holds Python objects (pickled object arrays), and prunekit loads only numeric arrays from data files"
    if isinstance(exc, (zipfile.BadZipFile, EOFError)) or "zip" in str(exc).lower():
        return f"the zip archive is truncated or damaged ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _load_npz_split(path: Path, split: str, limit: int | None = None) -> ArraySplit:
    """Decode a split of the JPEG npz; with ``limit``, only the balanced slice is decoded."""
    try:
        with np.load(path, allow_pickle=False) as z:
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
        raise DataError(f"{path}: cannot read this CIFAR-10 file: {_npz_problem(path, exc)}; {NPZ_LAYOUT}") from None
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels; file corrupt?")
    return ArraySplit(images, labels.astype(np.int64))


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array needs, under both numpy 1 (``numpy.core``) and 2 (``numpy._core``)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # how protocol 2 spells bytes under Python 3
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer  # protocol-5 arrays
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch (dicts, lists, bytes, str, numbers, numpy arrays) and nothing else.

    Any other global a file names (``os.system``, ``builtins.eval``, a class with a ``__reduce__``)
    raises :class:`~prunekit.errors.DataError` before it is looked up, so no code in the file runs.

    >>> import io, os, pickle
    >>> class Evil:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo pwned",))
    >>> BatchUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2)), "data_batch_1").load()
    Traceback (most recent call last):
    ...
    prunekit.errors.DataError: data_batch_1: refuses to load ...system: a CIFAR-10 batch holds only ...
    """

    def __init__(self, file: io.BufferedIOBase, source: str | os.PathLike[str]) -> None:
        super().__init__(file, encoding="bytes")
        self.source = os.fspath(source)
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        found = self._allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self.source}: refuses to load {module}.{name}: a CIFAR-10 batch holds only arrays, lists, "
                "dicts, bytes and numbers; the file is not a CIFAR-10 batch (prunekit runs no code from data "
                "files); download cifar-10-python.tar.gz again"
            )
        return found


def read_batch(path: str | os.PathLike[str]) -> dict[object, object]:
    """Read one pickled file of a ``cifar-10-batches-py`` folder (``data_batch_N``, ``test_batch``,
    ``batches.meta``) through :class:`BatchUnpickler`; a :class:`DataError` naming the file otherwise."""
    f = Path(path)
    try:
        with open(f, "rb") as fh:
            obj = BatchUnpickler(fh, f).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{f}: cannot be opened ({exc.strerror or exc}); {PICKLE_LAYOUT}") from None
    except EOFError:
        what = "the file is empty (0 bytes)" if f.stat().st_size == 0 else "the file ends early (truncated?)"
        raise DataError(f"{f}: {what}; {PICKLE_LAYOUT}") from None
    except Exception as exc:  # not a pickle at all, or a damaged one
        raise DataError(
            f"{f}: not a CIFAR-10 batch pickle ({type(exc).__name__}: {exc}); {PICKLE_LAYOUT}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{f}: holds a {type(obj).__name__}, not the dict of a CIFAR-10 batch; {PICKLE_LAYOUT}")
    return obj


def _load_pickle_split(folder: Path, split: str) -> ArraySplit:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        f = folder / name
        if not f.is_file():
            raise DataError(f"{f} not found; {PICKLE_LAYOUT}")
        d = read_batch(f)
        missing = [k for k in (b"data", b"labels") if k not in d]
        if missing:
            raise DataError(f"{f}: the batch has no {missing[0]!r} entry; {PICKLE_LAYOUT}")
        try:
            data = np.asarray(d[b"data"])
            if data.dtype == object or data.size % 3072:
                raise ValueError(f"'data' is {data.dtype} of shape {data.shape}, expected uint8 rows of 3072")
            images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(d[b"labels"], dtype=np.int64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{f}: not a CIFAR-10 batch ({exc}); {PICKLE_LAYOUT}") from None
        if len(labels[-1]) != len(images[-1]):
            raise DataError(f"{f}: {len(images[-1])} images but {len(labels[-1])} labels; file corrupt?")
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
            with np.load(cached, allow_pickle=False) as z:
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
