"""Subset evaluations cannot mislead: ``--limit``, ``--max-batches`` and calibration subsets are
class-balanced (seed 0), never the first N of a class-ordered split, and say what they used."""

from __future__ import annotations

import argparse
import gzip

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.cli.common import balanced_subset, dataset_labels, describe_images, evaluation_set
from prunekit.cli.main import main
from prunekit.data.cifar10 import _balanced_indices
from prunekit.data.digits import load_digits_arrays
from prunekit.data.mnist import mnist_datasets
from prunekit.train import evaluate

BASE = ["--dataset", "digits", "--threads", "1"]


def _class_ordered(per_class: int = 100, classes: int = 10) -> TensorDataset:
    """Like the CIFAR-10 test split: all of class 0, then all of class 1, ..."""
    labels = torch.arange(classes).repeat_interleave(per_class)
    return TensorDataset(torch.randn(len(labels), 3), labels)


def _sorted_digits() -> TensorDataset:
    images, labels = load_digits_arrays()
    order = np.argsort(labels, kind="stable")
    return TensorDataset(torch.from_numpy(images[order]).unsqueeze(1), torch.from_numpy(labels[order]))


class Always(nn.Module):
    """Predicts class ``c`` for every input: 100% on a slice of class c, 10% on a balanced one."""

    def __init__(self, c: int = 0, classes: int = 10) -> None:
        super().__init__()
        self.c, self.classes = c, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.c), self.classes).float()


def test_balanced_subset_of_a_class_ordered_split_has_every_class_equally() -> None:
    data = _class_ordered()
    sub = balanced_subset(data, 250)
    counts = torch.bincount(dataset_labels(sub), minlength=10)
    assert counts.tolist() == [25] * 10
    assert len(set(sub.indices)) == 250  # no repeats
    assert sub.indices == balanced_subset(data, 250).indices  # seed 0: the same images every run
    first_batch = dataset_labels(sub)[:32]
    assert len(first_batch.unique()) >= 5  # shuffled order: the first batches mix the classes
    assert describe_images(sub, subset=True) == "250 images (25 of each of 10 classes, seed 0)"
    uneven = torch.bincount(dataset_labels(balanced_subset(data, 255)), minlength=10)
    assert uneven.max() - uneven.min() == 1 and int(uneven.sum()) == 255


def test_max_batches_evaluates_a_balanced_subset_not_the_first_batches() -> None:
    loader = DataLoader(_class_ordered(128), batch_size=64)  # 1,280 images, unshuffled, ordered by class
    first_batches = evaluate(Always(0), loader, max_batches=2).top1  # the misleading old way: all class 0
    assert first_batches == 1.0
    args = argparse.Namespace(max_batches=2, limit=None)
    sub, used = evaluation_set(args, loader)
    assert used == "128 images (12-13 of each of 10 classes, seed 0)"
    result = evaluate(Always(0), sub)
    zeros = int((dataset_labels(sub.dataset) == 0).sum())
    assert result.samples == 128 and zeros in (12, 13) and result.top1 == pytest.approx(zeros / 128)


def test_max_batches_larger_than_the_split_says_so() -> None:
    loader = DataLoader(_class_ordered(5), batch_size=16)
    sub, used = evaluation_set(argparse.Namespace(max_batches=10, limit=None), loader)
    assert sub is loader
    assert used == ("50 images (the whole test split: 5 of each of 10 classes); "
                    "--max-batches 10 x 16 asks for 160: the test split has 50, all used")


def test_sorted_digits_subset_is_balanced() -> None:
    data = _sorted_digits()
    counts = torch.bincount(dataset_labels(balanced_subset(data, 200)), minlength=10)
    assert counts.tolist() == [20] * 10


def test_cifar_and_mnist_limit_are_balanced(tmp_path) -> None:
    labels = np.repeat(np.arange(10), 1000)  # the CIFAR-10 test split's order
    assert np.bincount(labels[_balanced_indices(labels, 1280)]).tolist() == [128] * 10

    def idx(array: np.ndarray, magic: int) -> bytes:
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        return gzip.compress(header + array.astype(np.uint8).tobytes())

    ordered = np.repeat(np.arange(10), 8)  # 80 images per split, sorted by class
    images = np.zeros((80, 28, 28))
    for stem in ("train", "t10k"):
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(idx(images, 0x803))
        (tmp_path / f"{stem}-labels-idx1-ubyte.gz").write_bytes(idx(ordered, 0x801))
    train, test = mnist_datasets(tmp_path, limit=20, seed=5)
    assert torch.bincount(test.tensors[1]).tolist() == [2] * 10
    assert torch.bincount(train.tensors[1]).tolist() == [2] * 10
    _, again = mnist_datasets(tmp_path, limit=20, seed=6)
    assert torch.equal(test.tensors[1], again.tensors[1])  # the test slice does not depend on --seed


def test_digits_limit_is_balanced(capsys) -> None:
    from prunekit.cli.common import make_loaders_from_args

    args = argparse.Namespace(dataset="digits", data=None, batch_size=32, limit=50, seed=3, normalize=None)
    train, test = make_loaders_from_args(args, "digits_cnn")
    for loader in (train, test):
        counts = torch.bincount(dataset_labels(loader.dataset), minlength=10)
        assert counts.tolist() == [5] * 10


def test_prune_eval_max_batches_prints_images_and_classes(tmp_path, capsys) -> None:
    argv = ["prune", "--model", "digits_cnn", *BASE, "--sparsity", "0.5", "--eval", "--out", str(tmp_path / "p.pt")]
    assert main([*argv, "--max-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "test top-1 on 256 images (25-26 of each of 10 classes, seed 0): dense " in out
    assert main([*argv, "--max-batches", "2"]) == 0  # 512 asked, the split has 359
    out = capsys.readouterr().out
    assert "test top-1 on 359 images (the whole test split: " in out and "of each of 10 classes)" in out
    assert "--max-batches 2 x 256 asks for 512: the test split has 359, all used" in out


def test_eval_limit_and_max_batches_print_the_subset(tmp_path, capsys) -> None:
    ckpt = tmp_path / "d.pt"
    assert main(["train", "--model", "digits_cnn", *BASE, "--epochs", "1", "--limit", "100", "--out", str(ckpt)]) == 0
    assert "test set each epoch: 100 images (10 of each of 10 classes, seed 0)" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(ckpt), *BASE, "--max-batches", "1", "--limit", "300"]) == 0
    out = capsys.readouterr().out
    assert "test set: 256 images (25-26 of each of 10 classes, seed 0)" in out
    assert "digits_cnn on digits test (256 images)" in out
