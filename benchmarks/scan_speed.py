"""How long a sensitivity scan takes, and what prefix reuse and worker processes save.

The JPEG-adapted ResNet-20 (or -56), every conv and the classifier pruned alone (L1, element-wise)
at 10 % ... 90 %, top-1 on N class-balanced training images; and the channel-group scan. Modes,
run one after the other in one process (the same curves are asserted for every mode):

- ``loader``: ``evaluate(model, DataLoader)`` per probe, the images decoded from JPEG every time
  (how the scans ran before the probe existed);
- ``full``: :class:`prunekit.probe.Probe` called as a plain function: the images decoded once,
  a full forward pass per probe;
- ``probe``: the probe's sweep, the unchanged prefix run once per batch for all ratios;
- ``probe-workers``: the same in ``--workers`` spawned processes, threads shared out.

    python benchmarks/scan_speed.py --data ../shared/data --model resnet20 --images 2000
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from _report import write_outputs
from prunekit import Element, Magnitude, select
from prunekit.checkpoint import build
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_datasets
from prunekit.probe import Probe
from prunekit.search.channels import scan_channels
from prunekit.sensitivity import scan
from prunekit.train import evaluate

OUT = Path(__file__).parent / "results" / "scan_speed"
MODES = ("loader", "full", "probe", "probe-workers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default="resnet20", choices=("resnet20", "resnet56"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["masks", "channels"], choices=("masks", "channels"))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    train_set, _ = cifar10_datasets(Path(args.data) / "cifar10-jpeg75.npz", IMAGENET_MEAN, IMAGENET_STD,
                                    augment=False)
    labels = np.asarray(train_set.labels)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), args.images // 10, replace=False)
                          for c in range(10)])
    loader = DataLoader(Subset(train_set, idx.tolist()), batch_size=args.batch)
    model, _ = build(f"checkpoints/{args.model}_cifar10jpeg.pt")
    model.eval()
    x = torch.zeros(1, 3, 32, 32)
    rows = []
    for kind in args.kinds:
        ref = None
        for mode in args.modes:
            t0 = time.perf_counter()
            workers = args.workers if mode == "probe-workers" else 1
            if mode == "loader":
                ev = lambda m: evaluate(m, loader).top1  # noqa: E731
            else:
                probe = Probe(model, loader)
                ev = probe if mode.startswith("probe") else probe.__call__
            if kind == "masks":
                curves = scan(model, select(model), Magnitude(), Element(), ev, workers=workers)
            else:
                curves = scan_channels(model, x, ev, workers=workers)
            seconds = time.perf_counter() - t0
            ref = curves.values if ref is None else ref
            same = curves.values == ref
            rows.append({"kind": kind, "mode": mode, "workers": workers, "seconds": seconds, "same_curves": same,
                         "probes": len(curves.values) * len(curves.ratios)})
            print(rows[-1], flush=True)
    out = Path(args.out) if args.out else OUT.with_name(f"scan_speed_{args.model}")
    cmd = (f"python benchmarks/scan_speed.py --model {args.model} --images {args.images} --batch {args.batch} "
           f"--threads {args.threads} --workers {args.workers}")
    lines = [f"# Sensitivity scan time, {args.model}, {args.images} training images", "",
             f"`{cmd}` ({started}, {platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
             "one process, modes one after the other)", "",
             "| scan | mode | probes | minutes | same curves as the first mode |", "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        mode = r["mode"] + (f" ({r['workers']})" if r["workers"] > 1 else "")
        lines.append(f"| {r['kind']} | {mode} | {r['probes']} | {r['seconds'] / 60:.2f} | {r['same_curves']} |")
    write_outputs(out, lines, {"command": cmd, "started": started, "rows": rows})


if __name__ == "__main__":
    main()
