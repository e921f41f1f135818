"""Shared by the benchmark scripts: the mean +- sd cell and writing a result's markdown + JSON twins."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from prunekit.io import atomic_write_text


def mean_sd(values: list[float]) -> str:
    """Top-1 fractions as a percentage cell: ``-`` for none, the value for one, ``mean +- sd`` otherwise."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} +- {100 * statistics.stdev(values):.2f}"


def write_outputs(out: str | Path, lines: list[str], record: dict[str, Any]) -> None:
    """``out``.md (the lines) and ``out``.json (the record), atomically; the table is printed too."""
    out = Path(out)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1))
    print("\n".join(lines))


def machine_line(device: str, threads: int) -> str:
    """``x86_64, torch X, N threads`` and, on a CUDA device, the GPU's name."""
    import platform

    import torch

    where = f"{platform.machine()}, torch {torch.__version__}, {threads} threads"
    if device.startswith("cuda"):
        where += f", {torch.cuda.get_device_name(torch.device(device))}"
    return where
