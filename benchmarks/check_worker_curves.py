"""Do worker processes give the same sensitivity rows as the scan in this process?

Each conv + the classifier of the JPEG-adapted ResNet-20, magnitude masks at two ratios, top-1 on
``--images`` class-balanced training images, scored here and by ``--workers`` spawned workers
(``prunekit.sensitivity._layer_task``, as ``scan(..., workers=N)`` sends them). Prints every row
that differs; exit status 1 if any does.

    python benchmarks/check_worker_curves.py --data ../shared/data --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Subset

from prunekit import Element, Uniform, checkpoint, select
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets
from prunekit.masks import clean_copy
from prunekit.probe import Probe
from prunekit.sensitivity import _layer_row, _layer_task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    train, _ = cifar10_datasets(Path(args.data) / "cifar10-jpeg75.npz", IMAGENET_MEAN, IMAGENET_STD, augment=False)
    labels = np.asarray(train.labels)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), args.images // 10, replace=False)
                          for c in range(10)])
    val = DataLoader(Subset(train, idx.tolist()), batch_size=250)
    model, _ = checkpoint.build("checkpoints/resnet20_cifar10jpeg.pt")
    model.eval()
    targets = select(model)
    keeps = {t.name: [Uniform(r).allocate([t], {t.name: t.weight.detach().abs()}, Element())[t.name]
                      for r in (0.1, 0.5)] for t in targets}
    probe = Probe(model, val)
    here = {t.name: _layer_row(probe, model, t.name, t.param_name, keeps[t.name]) for t in targets}
    copy = clean_copy(model)
    tasks = [(copy, probe.batches, probe.cache_mb, t.name, t.param_name, keeps[t.name]) for t in targets]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx) as ex:
        there = dict(zip([t.name for t in targets], ex.map(_layer_task, tasks)))
    differ = [n for n in here if here[n] != there[n]]
    for n in differ:
        print(f"{n}: here {here[n]}, in workers {there[n]}")
    print(f"{len(targets)} layers x 2 ratios on {args.images} images, {args.workers} workers: "
          + ("identical" if not differ else f"{len(differ)} rows differ"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
