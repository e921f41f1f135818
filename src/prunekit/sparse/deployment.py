"""Measure, per layer, whether a sparse kernel beats the dense op here, and keep the winner.

``deploy(model, example_input)`` copies the model, captures every Linear/Conv2d's real input
on one forward pass, and for each layer times the dense op against every applicable sparse
kernel on that input (each candidate interleaved with dense, medians by default, at the example's batch
size and the current thread count). A sparse kernel replaces the layer only if it is faster than dense by ``margin``
both in that measurement and in a second, separate re-check; otherwise the layer stays dense.
So no layer of the deployed model is slower than dense as measured, and the report says so
layer by layer, next to the measured end-to-end speedup (dense vs deployed, interleaved). If the
whole deployed model measures slower than dense (twice), the dense copy is returned instead.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
>>> deployed, report = deploy(model, torch.randn(1, 16), candidates=["torch_csr"], repeats=3, warmup=1)
>>> [c.name for c in report.layers]
['0', '2']
>>> all(c.chosen_s <= c.dense_s for c in report.layers)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.inputs import check_example_input
from prunekit.masks import clean_copy
from prunekit.metrics.latency import LatencyResult, compare_latency, num_threads
from prunekit.metrics.macs import run_model
from prunekit.sparse.activations import activation_sparsity
from prunekit.sparse.kernels import KERNELS, available_kernels
from prunekit.sparse.modules import SparseConv2d, SparseLinear

SPARSE_KERNELS: tuple[str, ...] = tuple(k for k in KERNELS if k != "dense")
STATISTICS: tuple[str, ...] = ("median", "p10")
WARM_CALLS = 4  # untimed calls of each candidate before timing (covers its thread policy's serial probes)


@dataclass(frozen=True)
class LayerChoice:
    """What deploy measured and chose for one layer (times in seconds: the report's statistic)."""

    name: str
    op: str  # "Linear" or "Conv2d"
    shape: tuple[int, ...]  # weight shape
    density: float  # nonzero weights / all weights
    input_zero_fraction: float  # zeros in the layer's input (dynamic activation sparsity)
    kernel: str  # chosen kernel ("dense" = unchanged)
    times_s: dict[str, float]  # first measurement: every candidate that ran, and "dense" (median over its pairings)
    dense_s: float  # re-check: dense time
    chosen_s: float  # re-check: chosen kernel's time (== dense_s when dense is kept)
    dense_bytes: int  # bytes of the dense weight
    chosen_bytes: int  # bytes the chosen kernel reads (values + indices)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it did not run

    @property
    def speedup(self) -> float:
        """dense time / chosen time (1.0 when dense is kept)."""
        return self.dense_s / self.chosen_s if self.chosen_s > 0 else 1.0


@dataclass(frozen=True)
class DeployReport:
    """Every layer's choice plus the end-to-end timing of dense vs deployed model."""

    layers: list[LayerChoice]
    batch_size: int | None
    threads: int
    repeats: int
    margin: float
    model_dense_s: float
    model_deployed_s: float
    statistic: str = "median"
    reverted: bool = False  # the per-layer winners measured slower end to end, twice: dense returned

    @property
    def speedup(self) -> float:
        """End to end: dense model time / deployed model time."""
        return self.model_dense_s / self.model_deployed_s if self.model_deployed_s > 0 else 1.0

    @property
    def changed(self) -> list[str]:
        """Names of the layers that got a sparse kernel in the returned model."""
        return [] if self.reverted else [c.name for c in self.layers if c.kernel != "dense"]

    def table(self) -> str:
        """A markdown table of the layers and a summary line."""
        rows = ["| layer | op | weight | density | input zeros | kernel | dense ms | chosen ms | speedup "
                "| candidates (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in self.layers:
            cands = ", ".join(f"{k} {t * 1e3:.3f}" for k, t in c.times_s.items() if k != "dense") or "-"
            rows.append(f"| {c.name} | {c.op} | {'x'.join(map(str, c.shape))} | {c.density:.3f} "
                        f"| {c.input_zero_fraction:.3f} | {c.kernel} | {c.dense_s * 1e3:.3f} "
                        f"| {c.chosen_s * 1e3:.3f} | {c.speedup:.2f}x | {cands} |")
        rows.append("")
        rows.append(f"end to end (batch {self.batch_size}, threads {self.threads}, {self.repeats} interleaved "
                    f"repeats, {self.statistic}s): dense {self.model_dense_s * 1e3:.3f} ms, deployed "
                    f"{self.model_deployed_s * 1e3:.3f} ms, speedup {self.speedup:.2f}x; "
                    f"{len(self.changed)} of {len(self.layers)} layers sparse")
        if self.reverted:
            rows.append("(the layers chosen above each won alone, but the model with them measured slower "
                        "than dense end to end twice, so deploy returned the dense model)")
        elif not self.changed:
            rows.append("(no layer changed, so the deployed model computes exactly as the dense one: "
                        "any end-to-end difference above is timing noise)")
        return "\n".join(rows)


def deploy(
    model: nn.Module,
    example_input: Any,
    candidates: Sequence[str] | None = None,
    repeats: int = 20,
    warmup: int = 3,
    margin: float = 0.05,
    max_density: float = 0.8,
    threads: int | None = None,
    calibration: Iterable[Any] | None = None,
    block: tuple[int, int] | None = None,
    statistic: str = "median",
) -> tuple[nn.Module, DeployReport]:
    """Return ``(deployed copy of model, report)``; ``model`` itself is not changed.

    ``candidates``: sparse kernels to try (default: every one available here, see
    ``prunekit.sparse.kernels.available_kernels``). Layers denser than ``max_density`` stay dense
    without timing. ``calibration`` (batches) feeds the activation-sparsity column; by default
    it is measured on ``example_input``. The deployed model is in eval mode, for inference.
    ``statistic`` summarises the repeats: ``"median"`` (default) or ``"p10"`` (the 10th
    percentile: steadier when other processes keep stealing the cores).
    """
    check_example_input(model, example_input, "deploy")  # a wrong shape fails here, before any timing
    if statistic not in STATISTICS:
        raise ConfigError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    kernels = _check_candidates(candidates)
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"margin must be in [0, 1), got {margin}")
    deployed = clean_copy(model).eval()
    inputs = _capture_inputs(deployed, example_input)
    zeros = activation_sparsity(deployed, calibration if calibration is not None else [example_input])
    choices = []
    with num_threads(threads) as used_threads:
        for name, inp in inputs.items():
            layer = deployed.get_submodule(name)
            choice, module = _choose(name, layer, inp, kernels, _Timer(repeats, warmup, statistic), margin,
                                     max_density, block, zeros[name].zero_fraction)
            choices.append(choice)
            if module is not layer:
                deployed.set_submodule(name, module)
        pick = _Timer(repeats, warmup, statistic).pick
        whole = compare_latency({"dense": model, "deployed": deployed}, example_input, warmup, repeats)
        reverted = False
        if any(c.kernel != "dense" for c in choices) and pick(whole["deployed"]) > (1 + margin) * pick(whole["dense"]):
            # Layer timings need not add up (caches, call overhead): re-check, then keep dense.
            whole = compare_latency({"dense": model, "deployed": deployed}, example_input, warmup, repeats)
            if pick(whole["deployed"]) > (1 + margin) * pick(whole["dense"]):
                deployed, reverted = clean_copy(model).eval(), True
    report = DeployReport(layers=choices, batch_size=whole["dense"].batch_size, threads=used_threads,
                          repeats=repeats, margin=margin, model_dense_s=pick(whole["dense"]),
                          model_deployed_s=pick(whole["deployed"]), statistic=statistic, reverted=reverted)
    return deployed, report


def apply_kernels(model: nn.Module, kernels: dict[str, str], block: tuple[int, int] | None = None) -> nn.Module:
    """A copy of ``model`` with the named layers on the given kernels, without timing anything.

    What rebuilds a deployed checkpoint (``ckpt.deploy["kernels"]``) on the machine that measured it.

    >>> from torch import nn
    >>> m = apply_kernels(nn.Sequential(nn.Linear(4, 2)), {"0": "torch_csr"})
    >>> type(m[0]).__name__, m[0].kernel
    ('SparseLinear', 'torch_csr')
    """
    out = clean_copy(model).eval()
    names = dict(out.named_modules())
    for name, kernel in kernels.items():
        layer = names.get(name)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ConfigError(f"deployed kernels name layer {name!r}, which is not a Linear or Conv2d of the model")
        if kernel != "dense":
            out.set_submodule(name, _build(layer, kernel, block))
    return out


@dataclass(frozen=True)
class _Timer:
    """Interleaved timing of modules on one input, summarised by ``statistic``."""

    repeats: int
    warmup: int
    statistic: str

    def pick(self, result: LatencyResult) -> float:
        return result.median_s if self.statistic == "median" else result.p10_s

    def __call__(self, modules: dict[str, nn.Module], inp: torch.Tensor) -> dict[str, float]:
        results = compare_latency(modules, inp, self.warmup, self.repeats)
        return {k: self.pick(r) for k, r in results.items()}


def _check_candidates(candidates: Sequence[str] | None) -> list[str]:
    from prunekit.sparse.kernels.impl import get_kernel, kernel_names

    here = available_kernels()
    sparse = [k for k in kernel_names() if not get_kernel(k).dense_op]  # every registered sparse kernel
    if candidates is None:
        return [k for k in sparse if k in here]
    if isinstance(candidates, str):
        candidates = [c.strip() for c in candidates.split(",") if c.strip()]
    out = []
    for k in candidates:
        if k not in sparse:
            raise ConfigError(f"unknown deploy candidate {k!r}; choose from {', '.join(sparse)}")
        if k not in here:
            raise ConfigError(f"kernel {k!r} is not available on this machine (numba missing? "
                              "pip install numba); available: " + ", ".join(here))
        out.append(k)
    return out


def _capture_inputs(model: nn.Module, example_input: Any) -> dict[str, torch.Tensor]:
    """The first input tensor each Linear/Conv2d sees on one forward pass, by module name."""
    seen: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in seen:
                seen[name] = args[0].detach().clone()

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            run_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ConfigError("deploy found no nn.Linear or nn.Conv2d layer that runs on the example input")
    return seen


def _build(layer: nn.Module, kernel: str, block: tuple[int, int] | None) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_dense(layer, kernel=kernel, block=block)
    return SparseConv2d.from_dense(layer, kernel=kernel, block=block)


def _choose(name: str, layer: nn.Module, inp: torch.Tensor, kernels: list[str], timer: _Timer, margin: float, max_density: float, block: tuple[int, int] | None,
            zero_fraction: float) -> tuple[LayerChoice, nn.Module]:
    """Time dense vs each candidate on ``inp``; keep a sparse kernel only if it wins twice by ``margin``."""
    weight = layer.weight.detach()
    density = float(weight.count_nonzero()) / max(weight.numel(), 1)
    dense_bytes = weight.numel() * weight.element_size()
    skipped: dict[str, str] = {}
    built: dict[str, nn.Module] = {}
    if density > max_density:
        skipped = dict.fromkeys(kernels, f"density {density:.3f} > max_density {max_density}")
    else:
        with torch.no_grad():
            ref = layer(inp)
            for k in kernels:
                try:
                    module = _build(layer, k, block).eval()
                except (ConfigError, UnsupportedError) as exc:
                    skipped[k] = str(exc)
                    continue
                out = module(inp)  # the first call compiles (numba) and plans (direct conv) for this input
                if not torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, float(ref.abs().max()))):
                    skipped[k] = "output differs from dense"
                    continue
                for _ in range(WARM_CALLS):  # warm every path before timing: compiled, cached, serial probes done
                    module(inp)
                built[k] = module
    # Each candidate is timed interleaved with dense alone: a very slow candidate (torch's BSR
    # at batch 1 takes ~100x dense) would otherwise evict the caches the others run in.
    times, ratios, dense_runs = {}, {}, []
    for k, candidate in built.items():
        pair = timer({"dense": layer, k: candidate}, inp)
        times[k], ratios[k] = pair[k], pair[k] / pair["dense"]
        dense_runs.append(pair["dense"])
    if not dense_runs:
        dense_runs.append(timer({"dense": layer}, inp)["dense"])
    times = {"dense": sorted(dense_runs)[len(dense_runs) // 2], **times}
    kernel, module = "dense", layer
    dense_s = chosen_s = times["dense"]
    if built:
        best = min(built, key=lambda k: ratios[k])
        if ratios[best] < 1.0 - margin:
            again = timer({"dense": layer, best: built[best]}, inp)
            if again[best] < (1.0 - margin) * again["dense"]:
                kernel, module = best, built[best]
                dense_s, chosen_s = again["dense"], again[best]
    chosen_bytes = dense_bytes if kernel == "dense" else module.packed_nbytes()
    choice = LayerChoice(name=name, op=type(layer).__name__, shape=tuple(weight.shape), density=density,
                         input_zero_fraction=zero_fraction, kernel=kernel, times_s=times, dense_s=dense_s,
                         chosen_s=chosen_s, dense_bytes=dense_bytes, chosen_bytes=chosen_bytes, skipped=skipped)
    return choice, module


__all__ = ["DeployReport", "LayerChoice", "SPARSE_KERNELS", "deploy"]
