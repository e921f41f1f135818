"""``prunekit deploy``: per layer, keep a sparse kernel only where it measurably beats dense.

Examples::

    prunekit deploy --checkpoint pruned.pt --batch-size 1 --out deployed.pt --onnx deployed.onnx
    prunekit deploy --model lenet300_100 --pretrained w.pt --candidates numba_csr,torch_csr
    prunekit deploy --checkpoint pruned.pt --calibration-batches 4 --data ../shared/data/cifar10-jpeg75.npz

Without ``--calibration-batches`` the example input is random (seed 0); with it, N batches of a
class-balanced subset of the test split (seed 0) are used: the first is the example input, and the
activation-sparsity column is measured on all N. ``--out`` and ``--onnx`` are written together:
both files appear (the ONNX export checked first), or neither.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from prunekit.cli.common import (
    add_data_args,
    add_force_arg,
    add_model_args,
    add_threads_arg,
    apply_threads,
    balanced_subset,
    check_outputs,
    describe_images,
    example_input_for,
    load_model_from_args,
    make_loaders_from_args,
    positive_int,
)
from prunekit.cli.main import UsageError

HELP = "time dense vs sparse kernels per layer and keep the faster one"


def register(subparsers: Any) -> None:
    """Add the ``deploy`` sub-command."""
    p = subparsers.add_parser("deploy", help=HELP, description=HELP + ".")
    add_model_args(p)
    add_data_args(p, batch_size=1)
    p.add_argument("--calibration-batches", type=int, default=0, metavar="N",
                   help="use N real test batches (see --dataset/--data) for the example input and the "
                   "activation-sparsity column (default 0: one random input)")
    p.add_argument("--candidates", metavar="K,...",
                   help="sparse kernels to try (default: all available: torch_csr, torch_bsr, numba_csr, numba_packet, numba_csc)")
    p.add_argument("--repeats", type=positive_int, default=20, help="interleaved timed repeats (default 20)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="a sparse kernel must be this much faster than dense, twice (default 0.05)")
    p.add_argument("--statistic", choices=("median", "p10"), default="median",
                   help="summary of the timed repeats (p10 is steadier on a busy machine; default median)")
    add_threads_arg(p)
    p.add_argument("--out", metavar="PATH", help="save the deployed model as a prunekit checkpoint (weights "
                   "dense, chosen kernels recorded; every command reads it; "
                   "prunekit.sparse.deployment.apply_kernels rebuilds the sparse modules)")
    p.add_argument("--onnx", metavar="PATH", help="also export the (densified) deployed model to ONNX and check it")
    add_force_arg(p)
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace, name: str, metadata: dict[str, Any]) -> tuple[torch.Tensor, list[Any] | None]:
    if args.calibration_batches < 0:
        raise UsageError(f"--calibration-batches must be >= 0, got {args.calibration_batches}")
    if args.calibration_batches == 0:
        shape = example_input_for(name, args.batch_size).shape
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)), None
    _, test = make_loaders_from_args(args, name, metadata)
    subset = balanced_subset(test.dataset, args.calibration_batches * int(test.batch_size or 1))
    loader = torch.utils.data.DataLoader(subset, test.batch_size, shuffle=False)
    batches = [images for images, _ in itertools.islice(loader, args.calibration_batches)]
    if not batches:
        raise UsageError("the test split gave no batches for --calibration-batches; check --data / --limit")
    print(f"calibration: {len(batches)} batch(es) of {describe_images(subset, subset=True)}"
          + (f"; {args.calibration_batches} asked, the test split has {len(test.dataset):,} images"
             if len(batches) < args.calibration_batches else ""))
    return batches[0][: args.batch_size], batches  # a loader may batch its test split differently


def run(args: argparse.Namespace) -> int:
    """Deploy, print the per-layer report, optionally save and export."""
    from prunekit.export import check_onnx, export_onnx
    from prunekit.io import atomic_write, write_together
    from prunekit.sparse.deployment import deploy

    check_outputs({"--out": args.out, "--onnx": args.onnx}, [args.checkpoint, args.pretrained, args.data],
                  force=args.force)
    apply_threads(args)
    model, name, info = load_model_from_args(args)
    example, calibration = _inputs(args, name, info.get("metadata", {}))
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
    deployed, report = deploy(model.eval(), example, candidates=candidates, repeats=args.repeats,
                              margin=args.margin, calibration=calibration,
                              statistic=args.statistic)
    print(f"model: {name}   batch: {report.batch_size}   threads: {report.threads}   torch {torch.__version__}")
    print(report.table())
    with torch.no_grad():
        diff = float((deployed(example) - model(example)).abs().max())
    print(f"max |deployed - dense| on the example input: {diff:.3g}")
    with tempfile.TemporaryDirectory(prefix="prunekit-onnx-") as scratch:
        err = None
        if args.onnx:  # export and check before anything is written, so a failed check writes nothing
            scratch_onnx = export_onnx(deployed, example, Path(scratch) / "model.onnx")
            err = check_onnx(scratch_onnx, model, example)
        with write_together():  # --out and --onnx: both files or neither
            if args.out:
                from prunekit.checkpoint import save

                choices = {c.name: c.kernel for c in report.layers}
                meta = {**info.get("metadata", {}), "deploy_report": {
                    "batch_size": report.batch_size, "threads": report.threads, "speedup": report.speedup}}
                save(args.out, deployed, name, info["config"], metadata=meta, masks=info.get("masks"),
                     plan=info.get("plan"), deploy={"kernels": choices})
            if args.onnx:
                atomic_write(args.onnx, lambda tmp: shutil.copyfile(scratch_onnx, tmp))
    if args.out:
        print(f"saved deployed model to {args.out} (a prunekit checkpoint: weights stored dense, kernels recorded)")
    if args.onnx:
        print(f"exported ONNX to {args.onnx} (onnxruntime matches the model within {err:.3g})")
    return 0
