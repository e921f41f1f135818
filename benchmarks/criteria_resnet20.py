"""Pruning without fine-tuning on the JPEG-adapted ResNet-20: sparsity, granularity and criteria.

Every configuration starts from the same dense weights, prunes with :func:`prunekit.pruning.prune`
(masks applied once, no fine-tuning) and is evaluated on the full 10k JPEG CIFAR-10 test set;
the dense model is evaluated in the same run. Results are rewritten to the markdown file after
every evaluation, so a run cut short still leaves its finished rows.

(a) element-wise L1 magnitude at 50/70/80/90 %, uniform vs global, over every conv + the linear;
(b) 50 % with N:M 2:4, vector rows/columns, kernel, block 4x4, pattern (its minimum 5/9) over the
    18 3x3 convs of the residual blocks (the stem conv has Cin=3: no 2:4, no 4-wide blocks);
(c) output-channel masks at 30/50 % on the 9 block-internal convs (``layer*.conv1``, the channels a
    structural pruner can remove in option-A ResNet-20), uniform per layer, one row per criterion;
    c1: filters masked only, c2: filters and their BN channel (gamma, beta) masked (prune()'s default) =
    the channel removed. Extra random seeds and the ReLU variant of the feature criterion: 30 % only.

Command (2-core CPU, ~15 min idle; longer when the machine is shared):
    python benchmarks/criteria_resnet20.py --data ../shared/data \
        --checkpoint checkpoints/resnet20_cifar10jpeg.pt --calib-batches 16 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import Global, Uniform
from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.granularity import NM, Block, Channel, Element, Granularity, Kernel, Pattern, Vector
from prunekit.importance import (
    OBD,
    APoZ,
    BNScale,
    FeatureReconstruction,
    Magnitude,
    MeanActivation,
    Random,
    Taylor,
)
from prunekit.importance.base import Importance
from prunekit.io import atomic_write_text
from prunekit.models import create, load_pretrained
from prunekit.pruning import prune
from prunekit.targets import Target, select
from prunekit.train import build_from_checkpoint, evaluate

DEFAULT_SECTIONS = "dense,c1,a,b,c2"
DEFAULT_OUT = "benchmarks/results/pruning_core.md"


@dataclass
class Row:
    section: str
    config: str
    target_sparsity: float
    model_sparsity: float
    top1: float
    top5: float
    seconds: float


def all_layers(model: nn.Module) -> list[Target]:
    return select(model)


def block_3x3(model: nn.Module) -> list[Target]:
    return select(model, types=(nn.Conv2d,), include="layer*")


def block_internal(model: nn.Module) -> list[Target]:
    return select(model, types=(nn.Conv2d,), include="layer*.conv1")


def weight_sparsity(model: nn.Module) -> float:
    ws = [t.weight for t in all_layers(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.source = self._load_model()
        self.model.eval()
        self.dense = {k: v.clone() for k, v in self.model.state_dict().items()}
        npz = Path(args.data) / "cifar10-jpeg75.npz"
        calib_loader, _ = cifar10_loaders(npz, 64, IMAGENET_MEAN, IMAGENET_STD, augment=False, limit=args.limit)
        _, self.test_loader = cifar10_loaders(npz, 256, IMAGENET_MEAN, IMAGENET_STD, augment=False, limit=args.limit)
        it = iter(calib_loader)  # the same fixed batches for every criterion
        self.calib = [next(it) for _ in range(args.calib_batches)]
        self.rows: list[Row] = []
        self.calibrated: dict[str, tuple[Importance, float]] = {}
        self.only_30 = {"random (seed 1)", "random (seed 2)", "feature (change of BN+ReLU output)"}
        self.notes: list[str] = []
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    def _load_model(self) -> tuple[nn.Module, str]:
        ckpt = Path(self.args.checkpoint)
        if ckpt.is_file():
            model, meta = build_from_checkpoint(ckpt)
            top1 = meta.get("metadata", {}).get("top1_jpeg_test")
            return model, f"`{ckpt}` (fine-tuned on the JPEG train split; its recorded top-1 {top1})"
        if not self.args.allow_pretrained:
            raise SystemExit(f"{ckpt} not found (pass --allow-pretrained to use the original CIFAR-10 weights)")
        path = Path(self.args.data) / "pretrained" / "resnet20-12fca82f.th"
        return load_pretrained(create("resnet20"), path), f"`{path}` (NOT JPEG-adapted: {ckpt} missing)"

    def reset(self) -> None:
        self.model.load_state_dict(self.dense)  # copies in place: Target objects stay valid

    def evaluate(self, section: str, config: str, target_sparsity: float, t0: float) -> Row:
        r = evaluate(self.model, self.test_loader)
        row = Row(section, config, target_sparsity, weight_sparsity(self.model), r.top1, r.top5, time.perf_counter() - t0)
        self.rows.append(row)
        print(f"[{section}] {config}: top-1 {r.top1:.4f} (sparsity {target_sparsity:.3f}, {row.seconds:.0f}s)", flush=True)
        self.write()
        return row

    def run(
        self,
        section: str,
        config: str,
        targets_fn: Callable[[nn.Module], list[Target]],
        importance: Importance,
        granularity: Granularity,
        allocation: object,
        t0: float | None = None,
    ) -> None:
        t0 = time.perf_counter() if t0 is None else t0
        self.reset()
        masks = prune(self.model, targets_fn(self.model), importance, granularity, allocation, enforce=False)
        self.evaluate(section, config, masks.sparsity(), t0)

    # -- sections ---------------------------------------------------------------------------------
    def dense_baseline(self) -> None:
        self.reset()
        self.evaluate("dense", "dense (no pruning)", 0.0, time.perf_counter())

    def channel_makers(self, removed: bool, extras: bool) -> list[tuple[str, Callable[[], Importance], int]]:
        """(label, factory, calibration batches) per criterion; random gets 3 seeds at 30 %."""
        n = self.args.calib_batches
        if removed:
            features = [
                ("feature (energy of BN output)", lambda: FeatureReconstruction(bn_removed=True), n),
                ("feature (energy of BN+ReLU output)", lambda: FeatureReconstruction(bn_removed=True, relu=True), n),
            ]
        else:
            features = [
                ("feature (change of BN output)", FeatureReconstruction, n),
                ("feature (change of BN+ReLU output)", lambda: FeatureReconstruction(relu=True), n),
            ]
        if extras:
            return [
                ("OBD (Hutchinson, 1 sample/batch)", lambda: OBD("hutchinson", samples=1), max(1, n // 2)),
                ("mean activation", MeanActivation, n),
            ]
        return [
            ("L1 (filter norm)", lambda: Magnitude(p=1), 0),
            ("BN scale |gamma|", BNScale, 0),
            ("Taylor |w*g|", Taylor, n),
            ("OBD (empirical Fisher)", lambda: OBD("fisher"), n),
            ("APoZ (1 - zero fraction)", APoZ, n),
            *features,
            ("random (seed 0)", lambda: Random(seed=0), 0),
            ("random (seed 1)", lambda: Random(seed=1), 0),
            ("random (seed 2)", lambda: Random(seed=2), 0),
        ]

    def channel_criteria(self, removed: bool, extras: bool = False) -> None:
        """Section c1 (masks only) or c2 (masks + the following BN's gamma/beta of pruned channels zeroed)."""
        section = "c2" if removed else "c1"
        targets = block_internal(self.model)
        for label, make, batches in self.channel_makers(removed, extras):
            if label not in self.calibrated:  # calibrate once on the dense model, reuse in c1 and c2
                t0 = time.perf_counter()
                self.reset()
                imp = make()
                if isinstance(imp, BNScale):
                    imp.calibrate(self.model, None, 1, targets)
                elif batches:
                    imp.calibrate(self.model, self.calib, batches, targets)
                self.calibrated[label] = (imp, time.perf_counter() - t0)
            imp, calib_s = self.calibrated[label]
            for s in (0.3, 0.5):
                if s != 0.3 and label in self.only_30:
                    continue  # bound the run time: the extra variants at 30 % only
                t1 = time.perf_counter()
                self.reset()
                # c1 masks the filters only; c2 is prune()'s default: the following BN channel too
                masks = prune(self.model, targets, imp, Channel(0), Uniform(s), enforce=False, couple_norms=removed)
                self.evaluate(section, f"{label} @ {s:.0%}  (calibration {calib_s:.0f}s, {batches} batches)",
                              masks.sparsity(), t1)

    def element_allocation(self, extras: bool = False) -> None:
        for s in (0.5, 0.7, 0.8, 0.9):
            if extras:
                self.run("a", f"L2 element, global+LAMP @ {s:.0%}", all_layers, Magnitude(2), Element(),
                         Global(s, normalize="lamp"))
                continue
            self.run("a", f"L1 element, uniform @ {s:.0%}", all_layers, Magnitude(1), Element(), Uniform(s))
            self.run("a", f"L1 element, global @ {s:.0%}", all_layers, Magnitude(1), Element(), Global(s))

    def granularities(self) -> None:
        grans: list[tuple[str, Granularity, object]] = [
            ("element", Element(), Uniform(0.5)),
            ("N:M 2:4", NM(2, 4), Uniform(None)),
            ("vector rows (Vector(0) = whole filters of the 2-D view)", Vector(0), Uniform(0.5)),
            ("kernel (3x3 slice W[o,i])", Kernel(), Uniform(0.5)),
            ("block 4x4 of the 2-D view", Block(4, 4), Uniform(0.5)),
            ("pattern (8 4-entry 3x3 patterns; minimum 5/9)", Pattern(), Uniform(5 / 9)),
        ]
        for label, gran, alloc in grans:
            self.run("b", f"L1 {label}", block_3x3, Magnitude(1), gran, alloc)

    # -- report -----------------------------------------------------------------------------------
    def write(self) -> None:
        a = self.args
        dense = next((r for r in self.rows if r.section == "dense"), None)
        lines = [
            "# Pruning core: criteria, granularity and allocation on ResNet-20 (no fine-tuning)",
            "",
            f"- Command: `python benchmarks/criteria_resnet20.py --data {a.data} --checkpoint {a.checkpoint} "
            f"--calib-batches {a.calib_batches} --threads {a.threads}{' --extras' if a.extras else ''}"
            f"{f' --sections {a.sections}' if a.sections != DEFAULT_SECTIONS else ''}"
            f"{f' --out {a.out}' if a.out != DEFAULT_OUT else ''}"
            f"{f' --limit {a.limit}' if a.limit else ''}`",
            f"- Started {self.started}; machine: {platform.machine()} CPU ({torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, Python {platform.python_version()}. The 2 cores were shared with other "
            "jobs: the seconds column is wall time and only indicative.",
            f"- Model: {self.source}.",
            f"- Evaluation: {'the full 10k' if not a.limit else f'a {a.limit}-image slice of the'} JPEG CIFAR-10 test "
            "set, `cifar10_loaders(npz, 256, IMAGENET_MEAN, IMAGENET_STD)`; top-1/top-5 of the masked model, "
            "no fine-tuning, no BN recalibration.",
            f"- Calibration (data-driven criteria): the first {a.calib_batches} batches of 64 of the shuffled "
            "(seed 0) train split without augmentation, the same batches for every criterion.",
            f"- Dense top-1 in this run: **{dense.top1:.4f}**" if dense else "- Dense top-1: (pending)",
            "",
            "`target sparsity` = zeros / weights over the pruned layers; `model sparsity` = over every conv and",
            "linear weight. `drop` = dense top-1 - top-1 (percentage points).",
        ]
        titles = {
            "dense": "Dense baseline",
            "a": "(a) Element-wise L1 magnitude over all 20 layers (19 convs + linear, nothing excluded)",
            "b": "(b) Granularity at 50 %: the 18 3x3 convs of the residual blocks, L1 magnitude, uniform",
            "c1": "(c1) Output-channel masks on the 9 block-internal convs (layer*.conv1), uniform per layer: "
            "conv filters masked only (`prune(..., couple_norms=False)`; the BN after a masked filter keeps "
            "emitting its constant beta - gamma*mean/std)",
            "c2": "(c2) Same channels, masked with their BN channel (gamma and beta masked too: `prune()`'s "
            "default, and what physical channel removal computes)",
        }
        for sec in ("dense", "c1", "c2", "a", "b"):
            rows = [r for r in self.rows if r.section == sec]
            if not rows:
                continue
            lines += ["", f"## {titles[sec]}", "", "| config | target sparsity | model sparsity | top-1 | drop (pp) | top-5 | s |",
                      "|---|---|---|---|---|---|---|"]
            for r in rows:
                drop = f"{100 * (dense.top1 - r.top1):.2f}" if dense else "-"
                lines.append(f"| {r.config} | {r.target_sparsity:.3f} | {r.model_sparsity:.3f} | {r.top1:.4f} | "
                             f"{drop} | {r.top5:.4f} | {r.seconds:.0f} |")
        lines += ["", *self.notes]
        atomic_write_text(Path(a.out), "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default="checkpoints/resnet20_cifar10jpeg.pt")
    ap.add_argument("--allow-pretrained", action="store_true", help="fall back to the original weights")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="images per split (development only)")
    ap.add_argument("--sections", default=DEFAULT_SECTIONS)
    ap.add_argument("--extras", action="store_true", help="afterwards: OBD-Hutchinson, mean activation, LAMP")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    for sec in args.sections.split(","):
        if sec == "dense":
            bench.dense_baseline()
        elif sec in ("c1", "c2"):
            bench.channel_criteria(removed=sec == "c2")
        elif sec == "a":
            bench.element_allocation()
        elif sec == "b":
            bench.granularities()
        else:
            raise SystemExit(f"unknown section {sec!r}; use dense,c1,c2,a,b")
    if args.extras:
        bench.channel_criteria(removed=False, extras=True)
        bench.channel_criteria(removed=True, extras=True)
        bench.element_allocation(extras=True)
    bench.write()


if __name__ == "__main__":
    main()
