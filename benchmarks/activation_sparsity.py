"""Exploiting activation sparsity (EIE-style): the zero-skipping ``numba_csc`` kernel vs ``numba_csr``.

Part 1: a 4096x4096 fp32 Linear at 90 % weight sparsity, batch 1, 1 thread, inputs with 0-90 %
zeros at random places (as after a ReLU). Each kernel is timed paired with dense
(``prunekit.sparse.bench.bench_linear``), warm and with the weights evicted before every call;
3 independent rounds, the median ratio reported.

Part 2: ``deploy`` at batch 1 with every kernel as a candidate (``numba_csc`` included) on
LeNet-300-100 and ResNet-20, 90 % magnitude-pruned per layer, on real inputs: MNIST / CIFAR-10
test images when the data folder is there, random ones otherwise (said in the output).

Writes benchmarks/results/activation_sparsity.md.

    python benchmarks/activation_sparsity.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from prunekit.allocation import Uniform
from prunekit.granularity import Element
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.models import create, load_pretrained
from prunekit.pruning import prune
from prunekit.sparse import available_kernels, deploy
from prunekit.sparse.bench import bench_linear
from prunekit.sparse.kernels.evict import evict_available
from prunekit.targets import select

RESULTS = Path(__file__).parent / "results" / "activation_sparsity.md"


def linear_table(rounds: int, repeats: int) -> str:
    """Part 1: ratio to dense per input-zero fraction, kernel and cache regime."""
    regimes = ["warm"] + (["evicted"] if evict_available() else [])
    lines = ["| regime | input zeros | dense ms | numba_csr | numba_csc (skips zero inputs) |",
             "|---|---:|---:|---:|---:|"]
    for regime in regimes:
        for zeros in (0.0, 0.5, 0.75, 0.9):
            med: dict[str, float] = {}
            dense_ms = []
            for kernel in ("numba_csr", "numba_csc"):
                rows = [bench_linear((4096, 4096), [1], [0.9], [kernel], repeats=repeats, warmup=3, threads=1,
                                     regime=regime, input_zeros=zeros)[0] for _ in range(rounds)]
                med[kernel] = statistics.median(r.ratio for r in rows)
                dense_ms += [r.dense_s * 1e3 for r in rows]
            lines.append(f"| {regime} | {zeros:.0%} | {statistics.median(dense_ms):.2f} | {med['numba_csr']:.3f} "
                         f"| {med['numba_csc']:.3f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def example_inputs(data: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """One real test image per model when ``data`` has them, else random inputs."""
    lenet_x, resnet_x, source = torch.randn(1, 1, 28, 28), torch.randn(1, 3, 32, 32), "random inputs"
    if data is not None and data.is_dir():
        try:
            from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders, mnist_loaders

            _, mnist = mnist_loaders(data / "mnist", 1, limit=1)
            _, cifar = cifar10_loaders(data / "cifar10-jpeg75.npz", 1, IMAGENET_MEAN, IMAGENET_STD,
                                       augment=False, limit=1)
            lenet_x, resnet_x = next(iter(mnist))[0], next(iter(cifar))[0]
            source = f"one test image each from {data}"
        except (OSError, ValueError, ImportError, TypeError) as exc:
            source = f"random inputs (could not read {data}: {exc})"
    return {"lenet300_100": lenet_x, "resnet20": resnet_x}, source


def deploy_tables(data: Path | None, repeats: int) -> str:
    """Part 2: deploy with every available kernel on the two small models."""
    inputs, source = example_inputs(data)
    parts = [f"Inputs: {source}. Candidates: {', '.join(k for k in available_kernels() if k != 'dense')}.\n"]
    pretrained = data / "pretrained" / "resnet20-12fca82f.th" if data is not None else None
    for name, x in inputs.items():
        model = create(name)
        if name == "resnet20" and pretrained is not None and pretrained.is_file():
            model = load_pretrained(model, pretrained)  # realistic activations (zeros after ReLU)
            parts.append(f"ResNet-20 starts from the pretrained weights in {pretrained}; LeNet-300-100 is untrained.\n")
        model.eval()
        prune(model, select(model), Magnitude(p=1), Element(), Uniform(0.9), enforce=False)
        _, report = deploy(model, x, repeats=repeats, threads=1)
        parts.append(f"### {name}, 90 % magnitude-pruned per layer, batch 1, 1 thread\n\n{report.table()}\n")
        print(parts[-1], flush=True)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with the MNIST and CIFAR-10 files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if "numba_csc" not in available_kernels():
        print("needs numba (pip install numba)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    parts = [f"# Activation sparsity: the zero-skipping kernel\n\nCommand: `python benchmarks/{Path(__file__).name}"
             f"{' --data ' + str(args.data) if args.data else ''}` (started {started}); torch {torch.__version__}.\n",
             "## 4096x4096 fp32, 90 % weight sparsity, batch 1, 1 thread\n",
             f"Cells: kernel time / dense time, median of {args.rounds} rounds of {args.repeats} repeats paired "
             "with dense. Dense does not depend on the input's zeros.\n",
             linear_table(args.rounds, args.repeats),
             "## deploy with the zero-skipping kernel as a candidate\n",
             deploy_tables(args.data, 15)]
    atomic_write_text(args.out, "\n".join(parts))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
