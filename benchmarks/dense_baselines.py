"""Dense baselines: evaluate the pretrained CIFAR ResNets on the JPEG CIFAR-10 test set, fine-tune
them on the JPEG train split, save the adapted checkpoints under ``checkpoints/``, and write the
before/after numbers to ``benchmarks/results/dense_baselines.json``.

Command (2-core CPU, about 40 min for both on an idle machine):
    python benchmarks/dense_baselines.py --data ../shared/data --models resnet20 resnet56
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
from prunekit.io import atomic_write_text
from prunekit.models import create, load_pretrained
from prunekit.train import EpochRecord, TrainConfig, evaluate, fit, save_checkpoint

PRETRAINED = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
EPOCHS = {"resnet20": 3, "resnet56": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="folder with cifar10-jpeg75.npz and pretrained/")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=sorted(PRETRAINED))
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=None, help="override the per-model default (3 / 2)")
    ap.add_argument("--out", default="benchmarks/results/dense_baselines.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = Path(args.data)
    train_loader, test_loader = cifar10_loaders(data / "cifar10-jpeg75.npz", args.batch_size, IMAGENET_MEAN, IMAGENET_STD)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name in args.models:
        model = load_pretrained(create(name), data / "pretrained" / PRETRAINED[name])
        before = evaluate(model, test_loader)
        print(f"{name}: pretrained top-1 on JPEG test {before.top1:.4f}", flush=True)
        epochs = args.epochs or EPOCHS[name]
        cfg = TrainConfig(epochs=epochs, lr=args.lr, weight_decay=args.weight_decay, schedule="cosine", progress=False, seed=0)
        ckpt = Path("checkpoints") / f"{name}_cifar10jpeg.pt"

        def save(record: EpochRecord, model=model, ckpt=ckpt, epochs=epochs, name=name) -> None:
            # Saved after every epoch (atomically), so an interrupted run still leaves a usable model.
            print(f"  epoch {record.epoch}: {record.test.top1:.4f} ({record.seconds:.0f}s)", flush=True)
            save_checkpoint(ckpt, model, name, {"num_classes": 10}, {
                "data": "cifar10-jpeg75 (train split)", "normalize": "imagenet", "top1_jpeg_test": record.test.top1,
                "finetune": {"epochs_done": record.epoch, "epochs": epochs, "lr": args.lr,
                             "weight_decay": args.weight_decay, "schedule": "cosine"},
            })

        t0 = time.perf_counter()
        history = fit(model, train_loader, test_loader, cfg, on_epoch=save)
        after = history[-1].test
        results[name] = {
            "pretrained_top1": before.top1, "pretrained_top5": before.top5,
            "finetuned_top1": after.top1, "finetuned_top5": after.top5,
            "epochs": epochs, "lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "train_seconds": time.perf_counter() - t0, "checkpoint": str(ckpt),
            "per_epoch_top1": [r.test.top1 for r in history],
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        }
        atomic_write_text(out_path, json.dumps(results, indent=2))
        print(f"{name}: fine-tuned top-1 {after.top1:.4f} -> {ckpt}", flush=True)


if __name__ == "__main__":
    main()
