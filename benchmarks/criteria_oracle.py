"""How well does each channel criterion predict the real damage of removing one channel?

For a few block-internal convs of the JPEG-adapted ResNet-20, every output channel is removed alone
and the increase of the cross-entropy loss on held-out train images is measured (the "oracle");
the table gives the Spearman rank correlation between each criterion's channel score (summed over
the filter, as ``Channel(0)`` does) and that oracle, for both removal protocols:
``masks``: filter zeroed only (BN keeps emitting its constant), ``removed``: filter and BN channel
zeroed (= physical removal). Higher = the criterion ranks channels like their true importance.

Command (2-core CPU, a few minutes):
    python benchmarks/criteria_oracle.py --data ../shared/data --checkpoint checkpoints/resnet20_cifar10jpeg.pt
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.granularity import Channel
from prunekit.importance import (
    OBD,
    APoZ,
    BNScale,
    FeatureReconstruction,
    Magnitude,
    Taylor,
    following_batchnorm,
)
from prunekit.io import atomic_write_text
from prunekit.targets import select
from prunekit.train import build_from_checkpoint

LAYERS = ("layer1.1.conv1", "layer2.1.conv1", "layer3.1.conv1")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().float()
    rb = b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def blocks_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"{ln}.{i}", b) for ln in ("layer1", "layer2", "layer3") for i, b in enumerate(getattr(model, ln))]


@torch.no_grad()
def block_input(model: nn.Module, start: int, x: torch.Tensor) -> torch.Tensor:
    """The input that block number ``start`` receives for images ``x`` (one forward with a hook)."""
    cache: dict[str, torch.Tensor] = {}
    handle = blocks_of(model)[start][1].register_forward_pre_hook(lambda m, inp: cache.update(x=inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return cache["x"]


@torch.no_grad()
def loss_from_block(model: nn.Module, start: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross entropy when running the blocks from index ``start`` on cached input ``x``."""
    for _, block in blocks_of(model)[start:]:
        x = block(x)
    logits = model.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))
    return float(F.cross_entropy(logits, y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--oracle-images", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/criteria_oracle.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, _ = build_from_checkpoint(args.checkpoint)
    model.eval()
    npz = Path(args.data) / "cifar10-jpeg75.npz"
    loader, _ = cifar10_loaders(npz, 64, IMAGENET_MEAN, IMAGENET_STD, augment=False)
    it = iter(loader)
    calib = [next(it) for _ in range(args.calib_batches)]  # same batches as criteria_resnet20.py
    held = [next(it) for _ in range(max(1, args.oracle_images // 64))]  # disjoint held-out images
    hx, hy = torch.cat([b[0] for b in held]), torch.cat([b[1] for b in held])
    targets = [t for t in select(model, types=(nn.Conv2d,)) if t.name in LAYERS]
    bns = following_batchnorm(model, targets)

    criteria = {
        "L1": Magnitude(1),
        "BN scale": BNScale().calibrate(model, None, 1, targets),
        "Taylor": Taylor().calibrate(model, calib, args.calib_batches, targets),
        "OBD Fisher": OBD("fisher").calibrate(model, calib, args.calib_batches, targets),
        "APoZ": APoZ().calibrate(model, calib, args.calib_batches, targets),
        "feature (BN out change)": FeatureReconstruction().calibrate(model, calib, args.calib_batches, targets),
        "feature (BN+ReLU change)": FeatureReconstruction(relu=True).calibrate(model, calib, args.calib_batches, targets),
        "feature (BN+ReLU, removed)": FeatureReconstruction(bn_removed=True, relu=True).calibrate(
            model, calib, args.calib_batches, targets
        ),
    }
    channel = Channel(0)
    rows: list[str] = []
    for t in targets:
        block_names = [n for n, _ in blocks_of(model)]
        start = block_names.index(t.name.rsplit(".", 1)[0])
        x_in = block_input(model, start, hx)
        base = loss_from_block(model, start, x_in, hy)
        bn = bns[t.name]
        w0, g0, b0 = t.weight.detach().clone(), bn.weight.detach().clone(), bn.bias.detach().clone()
        oracle = {"masks": [], "removed": []}
        for c in range(w0.shape[0]):
            for proto in ("masks", "removed"):
                with torch.no_grad():
                    t.weight[c] = 0.0
                    if proto == "removed":
                        bn.weight[c] = 0.0
                        bn.bias[c] = 0.0
                oracle[proto].append(loss_from_block(model, start, x_in, hy) - base)
                with torch.no_grad():
                    t.weight.copy_(w0)
                    bn.weight.copy_(g0)
                    bn.bias.copy_(b0)
        for name, imp in criteria.items():
            s = channel.group_scores(imp.scores(t).float())  # (Cout,)
            rows.append(
                f"| {t.name} ({w0.shape[0]} ch) | {name} | {spearman(s, torch.tensor(oracle['masks'])):+.2f} | "
                f"{spearman(s, torch.tensor(oracle['removed'])):+.2f} |"
            )
        om, orr = torch.tensor(oracle["masks"]), torch.tensor(oracle["removed"])
        rows.append(
            f"| {t.name} | *oracle stats* | mean loss increase {om.mean():.3f} (max {om.max():.3f}) | "
            f"mean {orr.mean():.3f} (max {orr.max():.3f}); rank corr masks vs removed {spearman(om, orr):+.2f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        "# Channel criteria vs the measured loss increase of removing one channel (ResNet-20, JPEG CIFAR-10)",
        "",
        f"- Command: `python benchmarks/criteria_oracle.py --data {args.data} --checkpoint {args.checkpoint} "
        f"--calib-batches {args.calib_batches} --oracle-images {args.oracle_images} --threads {args.threads}`",
        f"- Machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s), shared "
        f"with other jobs; total {time.perf_counter() - t_start:.0f} s.",
        f"- Criteria calibrated on the same {args.calib_batches} batches of 64 as `criteria_resnet20.py`; the oracle "
        f"uses the next {len(hy)} train images (no augmentation), disjoint from them. Dense loss on them is the base.",
        "- Oracle: loss increase when only that channel is removed (`masks`: filter zeroed; `removed`: filter, BN "
        "gamma and beta zeroed). Cells: Spearman rank correlation of the criterion's channel score with the oracle.",
        "",
        "| layer | criterion | Spearman vs oracle (masks) | Spearman vs oracle (removed) |",
        "|---|---|---|---|",
        *rows,
    ]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
