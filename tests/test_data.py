"""Data loaders: MNIST IDX, scikit-learn digits, CIFAR-10 (JPEG npz and pickle folder), cache."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar10_datasets,
    cifar10_loaders,
    digits_loaders,
    load_cifar10_arrays,
    load_mnist_arrays,
    mnist_loaders,
)
from prunekit.data import cifar10 as cifar_mod
from prunekit.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test gets its own empty decode cache."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        raw = idx_bytes(arr, 0x803 if "images" in name else 0x801)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx(tmp_path, gz) -> None:
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    images, labels = load_mnist_arrays(tmp_path / "mnist", "train")
    assert images.shape == (30, 28, 28) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])


def test_mnist_loaders_shapes_and_normalisation(tmp_path) -> None:
    arrays = write_mnist(tmp_path)
    train, test = mnist_loaders(tmp_path, batch_size=8)
    x, y = next(iter(train))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train.dataset) == 30 and len(test.dataset) == 10
    xt, _ = next(iter(test))  # test loader is not shuffled: item 0 is file image 0
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"][0]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(xt[0, 0], expected)


def test_mnist_limit_and_seed(tmp_path) -> None:
    write_mnist(tmp_path)
    a, _ = mnist_loaders(tmp_path, limit=12, seed=3)
    b, _ = mnist_loaders(tmp_path, limit=12, seed=3)
    c, _ = mnist_loaders(tmp_path, limit=12, seed=4)
    assert len(a.dataset) == 12
    assert torch.equal(a.dataset.tensors[1], b.dataset.tensors[1])
    assert not torch.equal(a.dataset.tensors[0], c.dataset.tensors[0])


def test_mnist_missing_file_names_path_and_layout(tmp_path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found.*train-images-idx3-ubyte"):
        mnist_loaders(tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        mnist_loaders(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "corrupt,pattern",
    [
        (lambda raw: raw[:100], "truncated"),
        (lambda raw: (0x801).to_bytes(4, "big") + raw[4:], "bad IDX magic 0x00000801, expected 0x00000803"),
        (lambda raw: raw[:3], "too short"),
    ],
)
def test_mnist_corrupt_images(tmp_path, corrupt, pattern) -> None:
    write_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(corrupt(f.read_bytes()))
    with pytest.raises(DataError, match=pattern) as exc:
        load_mnist_arrays(tmp_path, "train")
    assert str(f) in str(exc.value)


def test_mnist_bad_gzip_and_count_mismatch(tmp_path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(29), 0x801)))
    with pytest.raises(DataError, match="30 train images but 29 labels"):
        load_mnist_arrays(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot read"):
        load_mnist_arrays(tmp_path, "train")


def test_mnist_real(data_root) -> None:
    folder = data_root / "mnist"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    images, labels = load_mnist_arrays(folder, "test")
    assert images.shape == (10_000, 28, 28) and np.bincount(labels).min() > 800
    train, _ = mnist_loaders(folder, batch_size=16, limit=64)
    assert next(iter(train))[0].shape == (16, 1, 28, 28)


# ----------------------------------------------------------------------------- digits


def test_digits_loaders() -> None:
    train, test = digits_loaders(batch_size=32)
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.int64
    assert len(train.dataset) + len(test.dataset) == 1797 and len(test.dataset) == 359
    all_x = torch.cat([train.dataset.tensors[0], test.dataset.tensors[0]])
    assert abs(float(all_x.mean())) < 0.05 and abs(float(all_x.std()) - 1) < 0.05  # normalised


def test_digits_split_is_seeded() -> None:
    a = digits_loaders(seed=0)[1].dataset.tensors[1]
    b = digits_loaders(seed=0)[1].dataset.tensors[1]
    c = digits_loaders(seed=1)[1].dataset.tensors[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(digits_loaders(test_fraction=0.25)[1].dataset) == 449  # round(1797 / 4)


def test_digits_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        digits_loaders(test_fraction=1.0)


# ----------------------------------------------------------------------------- CIFAR-10


def flat_images(n: int, seed: int) -> np.ndarray:
    """Images made of 8x8 flat colour tiles: JPEG keeps them almost exactly."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return tiles.repeat(8, axis=1).repeat(8, axis=2)  # (n, 32, 32, 3)


def write_npz(path: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    from PIL import Image

    out: dict[str, np.ndarray] = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images = flat_images(n, seed)
        blobs = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=100, subsampling=0)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        out[f"{split}_jpeg"] = np.concatenate(blobs)
        out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        out[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
        out[f"{split}_images"] = images
    np.savez(path, **{k: v for k, v in out.items() if not k.endswith("_images")})
    return out


@pytest.fixture
def fake_npz(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "cifar.npz"
    return path, write_npz(path)


def write_pickle_folder(folder: Path, per_batch: int = 6) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)  # rows are (C, H, W) flattened
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
        if name != "test_batch":
            train_parts.append(data)
    train = np.concatenate(train_parts).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return {"train": train}


def test_npz_decodes(fake_npz) -> None:
    path, ref = fake_npz
    arrays = load_cifar10_arrays(path, "test")
    assert arrays.images.shape == (20, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert np.abs(arrays.images.astype(int) - ref["test_images"]).mean() < 1  # JPEG q100 4:4:4: near-exact
    np.testing.assert_array_equal(arrays.labels, ref["test_labels"])


def test_npz_limit_decodes_only_a_balanced_slice(fake_npz, _cache_in_tmp, monkeypatch) -> None:
    path, ref = fake_npz
    decoded = []
    real = cifar_mod._decode_jpegs
    monkeypatch.setattr(cifar_mod, "_decode_jpegs", lambda b, o, i=None: decoded.append(i) or real(b, o, i))
    train, test = cifar10_datasets(path, limit=10, augment=False)
    assert len(train) == 10 and len(test) == 10
    assert sorted(int(y) for y in train.labels) == list(range(10))  # one of each class
    assert [len(i) for i in decoded] == [10, 10]  # only the slice was decoded...
    assert not _cache_in_tmp.exists() or not any(_cache_in_tmp.iterdir())  # ...and nothing cached
    # The same slice comes out of a full (cached) decode.
    load_cifar10_arrays(path, "train")
    train2, _ = cifar10_datasets(path, limit=10, augment=False)
    assert torch.equal(train.images, train2.images) and torch.equal(train.labels, train2.labels)


def test_pickle_folder(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    ref = write_pickle_folder(folder)
    arrays = load_cifar10_arrays(folder, "train")
    assert arrays.images.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(arrays.images, ref["train"])
    assert len(load_cifar10_arrays(folder, "test").labels) == 6
    train, test = cifar10_loaders(folder, batch_size=4, limit=5)
    assert len(train.dataset) == 5 and next(iter(train))[0].shape == (4, 3, 32, 32)


def test_pickle_folder_cache_follows_file_changes(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle_folder(folder)
    first = load_cifar10_arrays(folder, "test")
    new = np.full((6, 3072), 7, dtype=np.uint8)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": new, b"labels": [1] * 6}, fh)
    os.utime(folder / "test_batch", ns=(1, 1))  # a different mtime even on coarse clocks
    second = load_cifar10_arrays(folder, "test")
    assert not np.array_equal(first.images, second.images) and (second.images == 7).all()


def test_pickle_folder_missing_batch(tmp_path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle_folder(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match=r"test_batch not found.*data_batch_1\.\.5"):
        load_cifar10_arrays(folder, "test")


def test_augmentation_and_normalisation(fake_npz) -> None:
    path, _ = fake_npz
    train, test = cifar10_loaders(path, batch_size=8, augment=True, limit=20)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)
    ds = train.dataset
    torch.manual_seed(0)
    views = torch.stack([ds[0][0] for _ in range(8)])  # random crops/flips of one image
    assert views.shape == (8, 3, 32, 32) and not all(torch.equal(views[0], v) for v in views[1:])
    raw = test.dataset.images[0].float() / 255  # test split: normalised only, deterministic
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(test.dataset[0][0], (raw - mean) / std)
    assert torch.equal(test.dataset[0][0], test.dataset[0][0])


def test_cache_hit_is_fast(fake_npz, _cache_in_tmp, monkeypatch) -> None:
    path, _ = fake_npz
    first = load_cifar10_arrays(path, "train")
    assert len(list(_cache_in_tmp.glob("cifar10-*-train.npz"))) == 1

    def no_decode(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar_mod, "_decode_jpegs", no_decode)
    t0 = time.perf_counter()
    second = load_cifar10_arrays(path, "train")
    assert time.perf_counter() - t0 < 1.0
    np.testing.assert_array_equal(first.images, second.images)


def test_broken_cache_is_rebuilt(fake_npz, _cache_in_tmp) -> None:
    path, _ = fake_npz
    first = load_cifar10_arrays(path, "test")
    (cached,) = _cache_in_tmp.glob("cifar10-*-test.npz")
    cached.write_bytes(b"junk")
    np.testing.assert_array_equal(load_cifar10_arrays(path, "test").images, first.images)


def test_corrupt_npz_names_path(tmp_path) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match=r"broken\.npz: cannot read.*train_jpeg"):
        load_cifar10_arrays(bad, "train")
    partial = tmp_path / "partial.npz"
    np.savez(partial, train_jpeg=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"partial\.npz: missing array 'train_offsets'"):
        cifar10_datasets(partial, limit=4)


def test_missing_path_names_it(tmp_path) -> None:
    missing = tmp_path / "no" / "cifar.npz"
    for call in (lambda: load_cifar10_arrays(missing), lambda: cifar10_loaders(missing, limit=4)):
        with pytest.raises(DataError, match=str(missing)):
            call()


def test_real_cifar_slice(cifar_npz) -> None:
    train, test = cifar10_loaders(cifar_npz, batch_size=10, limit=20)  # decodes only 40 images
    assert next(iter(train))[0].shape == (10, 3, 32, 32)
    assert next(iter(test))[0].shape == (20, 3, 32, 32)  # test batches are at least 256: one batch
    assert np.bincount(train.dataset.labels.numpy(), minlength=10).tolist() == [2] * 10
