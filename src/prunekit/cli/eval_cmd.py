"""``prunekit eval``: top-1 / top-5 accuracy and loss of a checkpoint or pretrained file.

Examples::

    prunekit eval --checkpoint digits.pt
    prunekit eval --model resnet20 --pretrained ../shared/data/pretrained/resnet20-12fca82f.th \\
        --normalize imagenet
"""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli.common import (
    add_data_args,
    add_model_args,
    add_threads_arg,
    apply_threads,
    check_model_fits,
    evaluation_set,
    load_model_from_args,
    make_loaders_from_args,
    positive_int,
    resolve_dataset,
)

HELP = "evaluate a model (top-1, top-5, loss) on a test set"


def register(subparsers: Any) -> None:
    """Add the ``eval`` sub-command."""
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ".")
    add_model_args(p)
    add_data_args(p, batch_size=256)
    p.add_argument("--max-batches", type=positive_int, metavar="N",
                   help="evaluate N batches' worth of test images, class-balanced (seed 0)")
    p.add_argument("--progress", action="store_true", help="show a progress bar (needs tqdm)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the metrics of the model on the test split; returns the exit code."""
    from prunekit.train import evaluate

    apply_threads(args)
    model, name, info = load_model_from_args(args)
    dataset = resolve_dataset(args, name, info["metadata"])
    check_model_fits(model, name, dataset)
    _, test_loader = make_loaders_from_args(args, name, info["metadata"])
    loader, used = evaluation_set(args, test_loader)
    print(f"test set: {used}")
    result = evaluate(model, loader, progress=args.progress)
    print(
        f"{name} on {dataset} test ({result.samples} images): top-1 {100 * result.top1:.2f}%  "
        f"top-5 {100 * result.top5:.2f}%  loss {result.loss:.4f}"
    )
    return 0
