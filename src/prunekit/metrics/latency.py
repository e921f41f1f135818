"""Wall-clock inference latency: one model, or several interleaved for fair ratios.

Measurements run under ``torch.no_grad()``, with the garbage collector paused, in eval mode (each submodule's train/eval flag is
restored afterwards) with ``torch.set_num_threads(threads)`` in force (restored afterwards).
On CUDA the device is synchronized around every timed call.

>>> import torch
>>> from torch import nn
>>> r = measure_latency(nn.Linear(8, 8), torch.zeros(1, 8), warmup=1, repeats=3, threads=1)
>>> r.repeats, r.threads, r.batch_size, r.median_s > 0
(3, 1, 1, True)
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.metrics.macs import eval_mode, run_model


@dataclass(frozen=True)
class LatencyResult:
    """Summary of ``repeats`` timed forward passes, in seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    mean_s: float
    repeats: int
    threads: int
    batch_size: int | None

    @classmethod
    def from_times(cls, times: list[float], threads: int, batch_size: int | None) -> LatencyResult:
        """Summarize raw per-call times (seconds)."""
        ordered = sorted(times)
        return cls(
            median_s=statistics.median(ordered),
            p10_s=_percentile(ordered, 10),
            p90_s=_percentile(ordered, 90),
            mean_s=statistics.fmean(ordered),
            repeats=len(ordered),
            threads=threads,
            batch_size=batch_size,
        )


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def batch_size_of(example_input: Any) -> int | None:
    """Leading dimension of the first tensor in ``example_input`` (None if it holds no tensor)."""
    if isinstance(example_input, torch.Tensor):
        return int(example_input.shape[0]) if example_input.dim() else None
    if isinstance(example_input, Mapping):
        items: Any = example_input.values()
    elif isinstance(example_input, (tuple, list)):
        items = example_input
    else:
        return None
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Set ``torch.set_num_threads(threads)`` for the block (None keeps the current count)."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1 (or None for the current setting), got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Keep Python's garbage collector from running inside timed calls (as ``timeit`` does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_counts(warmup: int, repeats: int) -> None:
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed_call(model: nn.Module, example_input: Any) -> float:
    _sync()
    start = time.perf_counter()
    run_model(model, example_input)
    _sync()
    return time.perf_counter() - start


def measure_latency(
    model: nn.Module,
    example_input: Any,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
) -> LatencyResult:
    """Time ``repeats`` forward passes of ``model`` on ``example_input`` after ``warmup`` untimed ones.

    >>> r = measure_latency(nn.ReLU(), torch.zeros(4, 3), warmup=0, repeats=5)
    >>> r.p10_s <= r.median_s <= r.p90_s
    True
    """
    return compare_latency({"model": model}, example_input, warmup, repeats, threads)["model"]


def last_level_cache_bytes(default: int = 64 * 2**20) -> int:
    """Size of CPU 0's largest cache level as Linux reports it (``default`` if it cannot be read).

    >>> last_level_cache_bytes() > 0
    True
    """
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=default)


class CacheFlusher:
    """A callable that evicts the CPU caches by writing a buffer twice the last-level cache.

    Pass it as ``compare_latency(..., before_each=CacheFlusher())`` to time every call with cold
    caches: the weights then come from DRAM, as they do in a network too large for the cache.

    >>> flush = CacheFlusher(nbytes=1 << 20)
    >>> flush()
    >>> flush.nbytes
    1048576
    """

    def __init__(self, nbytes: int | None = None) -> None:
        self.nbytes = int(nbytes if nbytes is not None else 2 * last_level_cache_bytes())
        self._buffer = np.zeros(self.nbytes // 4, dtype=np.float32)

    def __call__(self) -> None:
        self._buffer[::16] += 1.0  # one write per 64-byte line


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input: Any,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
    before_each: Callable[[], None] | None = None,
) -> dict[str, LatencyResult]:
    """Time several models on the same input, interleaving their repeats round-robin.

    Each round times every model once (the order rotates each round), so slow phases of a noisy,
    shared machine hit all models alike and their latency ratios are fair. ``before_each`` (not
    timed) runs before every timed call, e.g. a :class:`CacheFlusher`.

    >>> res = compare_latency({"a": nn.Linear(4, 4), "b": nn.Identity()}, torch.zeros(1, 4), 1, 4, 1)
    >>> sorted(res), res["a"].repeats
    (['a', 'b'], 4)
    """
    _check_counts(warmup, repeats)
    if not models:
        raise ConfigError("compare_latency needs at least one model")
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with ExitStack() as stack:
        used_threads = stack.enter_context(num_threads(threads))
        stack.enter_context(torch.no_grad())
        for m in models.values():
            stack.enter_context(eval_mode(m))
        for _ in range(warmup):
            for n in names:
                run_model(models[n], example_input)
        stack.enter_context(_gc_paused())
        for r in range(repeats):
            for i in range(len(names)):
                n = names[(r + i) % len(names)]
                if before_each is not None:
                    before_each()
                times[n].append(_timed_call(models[n], example_input))
    batch = batch_size_of(example_input)
    return {n: LatencyResult.from_times(times[n], used_threads, batch) for n in names}
