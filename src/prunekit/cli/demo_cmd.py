"""``prunekit demo``: the offline end-to-end tour, in about 15 s on two idle CPU cores.

It trains ``digits_cnn`` on scikit-learn's 8x8 digits (bundled with scikit-learn: nothing to
download), evaluates it and prints the per-layer table; then prunes it two ways and fine-tunes
each: 80 % global magnitude sparsity kept in force by masks, and physical channel removal to half
the MACs (a smaller dense model); finally it compares accuracy, size, MACs and measured latency.

The demo is a list of small steps, :data:`STEPS`, each a function ``step(state) -> None``
that reads and extends one :class:`DemoState`. Add a stage (pruning, fine-tuning, export) by
writing one more such function and appending it to ``STEPS``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from prunekit.cli.common import positive_int

HELP = "train, evaluate and inspect a small CNN on the bundled digits data (offline, ~15 s)"
MODEL = "digits_cnn"


@dataclass
class DemoState:
    """What the steps share: the options, the data, the model and the numbers measured so far."""

    args: argparse.Namespace
    train_loader: DataLoader | None = None
    test_loader: DataLoader | None = None
    model: nn.Module | None = None
    dense: nn.Module | None = None
    results: dict[str, float] = field(default_factory=dict)
    rows: list[tuple[str, nn.Module, float]] = field(default_factory=list)


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser("demo", help=HELP, description=HELP + ".")
    p.add_argument("--epochs", type=positive_int, default=8, help="training epochs (default 8)")
    p.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (default 0.05)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the data order and the init (default 0)")
    p.add_argument("--out", metavar="PATH", help="also save the trained dense model as a checkpoint")
    p.add_argument("--sparsity", type=float, default=0.8, help="global magnitude sparsity (default 0.8)")
    p.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs removed by channel pruning (default 0.5)")
    p.add_argument("--finetune-epochs", type=positive_int, default=3, help="fine-tuning epochs after pruning (default 3)")
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch CPU threads (default 1: fastest for this tiny model)"
    )
    p.set_defaults(func=run)


def section(title: str) -> None:
    """Print a step heading."""
    print(f"\n== {title} ==")


def load_data(state: DemoState) -> None:
    """Split scikit-learn's digits into train/test loaders."""
    from prunekit.data import digits_loaders

    args = state.args
    state.train_loader, state.test_loader = digits_loaders(batch_size=args.batch_size, seed=args.seed)
    section("data")
    print(
        f"scikit-learn digits: {len(state.train_loader.dataset)} train / {len(state.test_loader.dataset)} "
        "test images of 1x8x8"
    )


def build_model(state: DemoState) -> None:
    """Create the seeded ``digits_cnn``."""
    import torch

    from prunekit.metrics import count_params
    from prunekit.models import create

    torch.manual_seed(state.args.seed)
    state.model = create(MODEL)
    section("model")
    print(f"{MODEL}: {count_params(state.model):,} parameters")


def train_dense(state: DemoState) -> None:
    """Train with SGD + cosine schedule, one line per epoch."""
    from prunekit.cli.train_cmd import print_epoch
    from prunekit.train import TrainConfig, fit

    args = state.args
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, progress=False)
    section(f"training ({args.epochs} epochs)")
    t0 = time.perf_counter()
    fit(state.model, state.train_loader, state.test_loader, cfg, on_epoch=print_epoch)
    state.results["train_seconds"] = time.perf_counter() - t0


def evaluate_dense(state: DemoState) -> None:
    """Measure top-1 / top-5 / loss of the trained model on the test split."""
    from prunekit.train import evaluate

    result = evaluate(state.model, state.test_loader)
    state.results.update(dense_top1=result.top1, dense_top5=result.top5, dense_loss=result.loss)
    section("evaluation")
    print(f"dense top-1 {100 * result.top1:.2f}%  top-5 {100 * result.top5:.2f}%  loss {result.loss:.4f}")


def print_layers(state: DemoState) -> None:
    """Print the per-layer table (params, nonzeros, MACs) from ``prunekit.metrics``."""
    from prunekit.cli.common import example_input_for
    from prunekit.metrics import format_table, layer_table

    section("layers")
    print(format_table(layer_table(state.model, example_input_for(MODEL))))


def _finetune(state: DemoState, model: nn.Module, label: str) -> float:
    from prunekit.train import TrainConfig, evaluate, fit

    args = state.args
    cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.lr / 5, seed=args.seed, progress=False)
    before = evaluate(model, state.test_loader).top1
    fit(model, state.train_loader, None, cfg)
    after = evaluate(model, state.test_loader).top1
    print(f"{label}: top-1 {100 * before:.2f}% right after pruning -> {100 * after:.2f}% after {args.finetune_epochs} fine-tune epochs")
    return after


def prune_unstructured(state: DemoState) -> None:
    """Global L1 magnitude pruning of every conv/linear weight, masks enforced while fine-tuning."""
    import copy

    from prunekit.allocation import Global
    from prunekit.granularity import Element
    from prunekit.importance import Magnitude
    from prunekit.pruning import prune
    from prunekit.targets import select

    state.dense = copy.deepcopy(state.model)
    state.rows.append(("dense", state.dense, state.results["dense_top1"]))
    model = copy.deepcopy(state.dense)
    section(f"unstructured: global magnitude, {100 * state.args.sparsity:.0f}% of conv/linear weights")
    masks = prune(model, select(model), Magnitude(p=1), Element(), Global(state.args.sparsity, min_keep=0.02))
    top1 = _finetune(state, model, "masked")
    masks.make_permanent(model)
    print(f"sparsity after fine-tuning: {100 * masks.sparsity():.1f}% (masks held through training)")
    state.rows.append((f"{100 * state.args.sparsity:.0f}% sparse", model, top1))


def prune_structured(state: DemoState) -> None:
    """Remove whole channels (L1 filter norm, global) to cut the MACs, then fine-tune the small model."""
    from prunekit.cli.common import example_input_for
    from prunekit.structure import prune_channels

    ratio = state.args.macs_ratio
    section(f"structured: remove channels until {100 * ratio:.0f}% of MACs are gone")
    small, plan, report = prune_channels(state.dense, example_input_for(MODEL), ratio, target="macs")
    print(
        f"channels removed: {report.units_removed}/{report.units_prunable}, "
        f"MACs {report.macs_before:,} -> {report.macs_after:,}; outputs verified equal to the masked model"
    )
    top1 = _finetune(state, small, "channel-pruned")
    state.rows.append(("channel-pruned", small, top1))


def compare(state: DemoState) -> None:
    """Accuracy, params, nonzeros, MACs and latency (batch 64, interleaved, same run) of every variant."""
    from prunekit.cli.common import example_input_for
    from prunekit.metrics import compare_latency, count_macs, count_nonzeros, count_params

    x = example_input_for(MODEL, batch=64)
    lat = compare_latency({name: m for name, m, _ in state.rows}, x, warmup=5, repeats=30)
    section("summary (latency: batch 64, median of 30 interleaved runs, dense kernels)")
    print(f"{'model':<16}{'top-1':>8}{'params':>9}{'nonzeros':>10}{'MACs':>10}{'latency':>11}{'speedup':>9}")
    base = lat["dense"].median_s
    for name, m, top1 in state.rows:
        t = lat[name].median_s
        print(
            f"{name:<16}{100 * top1:>7.2f}%{count_params(m):>9,}{count_nonzeros(m):>10,}"
            f"{count_macs(m, x[:1]):>10,}{1e3 * t:>9.3f}ms{base / t:>8.2f}x"
        )
    print("(element sparsity shrinks nonzeros, not dense latency: see `prunekit deploy` for sparse kernels)")


def save_model(state: DemoState) -> None:
    """Write the dense model as a checkpoint when ``--out`` is given."""
    from prunekit.train import save_checkpoint

    if not state.args.out:
        return
    meta = {"dataset": "digits", "top1": state.results.get("dense_top1", float("nan"))}
    path = save_checkpoint(state.args.out, state.model, MODEL, {}, meta)
    print(f"\nsaved {path}")


STEPS: list[Callable[[DemoState], None]] = [
    load_data,
    build_model,
    train_dense,
    evaluate_dense,
    print_layers,
    save_model,
    prune_unstructured,
    prune_structured,
    compare,
]


def run(args: argparse.Namespace) -> int:
    """Run every step in :data:`STEPS` in order; returns the exit code."""
    import torch

    from prunekit.cli.common import check_outputs

    check_outputs({"--out": args.out})  # a bad --out fails now, not after the training
    state = DemoState(args)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for step in STEPS:
            step(state)
    finally:
        torch.set_num_threads(threads)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")
    return 0
