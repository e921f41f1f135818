"""Check that a pruned model computes what the masked original computes.

The *masked reference* is a copy of the original model in which every removed slice is hidden:
its parameters are zeroed, consumers see zeros on removed input channels (forward pre-hooks) and
producers emit zeros on removed output channels (forward hooks, after BatchNorm too). Removing
those channels must not change any output, so ``small(x) == masked(x)`` up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import UnsupportedError
from prunekit.masks import clean_copy
from prunekit.metrics import run_model
from prunekit.structure.graph import DependencyGraph
from prunekit.structure.groups import AxisRef
from prunekit.structure.surgery import get_tensor, handler_for


class VerificationError(UnsupportedError):
    """The pruned model's outputs differ from the masked reference's."""


@dataclass
class VerifyResult:
    max_abs_diff: float
    max_rel_diff: float
    inputs: int

    def __str__(self) -> str:
        return f"max |small - masked| = {self.max_abs_diff:.3g} (rel {self.max_rel_diff:.3g}) on {self.inputs} inputs"


def _zeroer(idx: torch.Tensor, dim: int):
    def zero(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        t = t.clone()
        t.index_fill_(dim % t.dim(), idx.to(t.device), 0.0)
        return t

    return zero


def masked_reference(graph: DependencyGraph, removed: dict[AxisRef, list[int]]) -> nn.Module:
    """A deep copy of ``graph.model`` with the ``removed`` slices hidden (see module doc)."""
    ref = clean_copy(graph.model)
    for axis_ref, idx_list in removed.items():
        module = ref.get_submodule(axis_ref.module)
        handler = handler_for(module)
        idx = torch.tensor(idx_list, dtype=torch.long)
        with torch.no_grad():
            for sl in handler.slices(module, axis_ref.axis):
                t = get_tensor(module, sl.param)
                if t is not None and sl.kind != "stat":
                    t.index_fill_(sl.dim, sl.indices(idx).to(t.device), 0.0)
        spec = handler.mask(module, axis_ref.axis)
        zero = _zeroer(idx, spec.dim)
        if spec.where == "in":
            module.register_forward_pre_hook(lambda _m, args, z=zero: (z(args[0]), *args[1:]))
        elif spec.where == "out":
            module.register_forward_hook(lambda _m, _a, out, z=zero: _map_first(out, z))
    return ref


def _map_first(out: Any, fn: Any) -> Any:
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return fn(out)


def _tensors(out: Any) -> Iterator[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, Mapping):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _tensors(v)
    elif hasattr(out, "to_tuple"):  # transformers ModelOutput
        yield from _tensors(out.to_tuple())


def random_like(example_input: Any, seed: int = 0) -> Any:
    """An input of the same structure: normal floats, integers within the example's range."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(example_input, torch.Tensor):
        if example_input.is_floating_point():
            out = torch.randn(example_input.shape, generator=gen, dtype=example_input.dtype)
        else:
            hi = int(example_input.max()) + 1 if example_input.numel() else 1
            out = torch.randint(0, max(hi, 2), example_input.shape, generator=gen, dtype=example_input.dtype)
        return out.to(example_input.device)
    if isinstance(example_input, Mapping):
        return {k: random_like(v, seed) if k == "input_ids" else v for k, v in example_input.items()}
    if isinstance(example_input, (tuple, list)):
        return type(example_input)(random_like(v, seed) for v in example_input)
    return example_input


def verify(
    graph: DependencyGraph,
    removed: dict[AxisRef, list[int]],
    small: nn.Module,
    example_input: Any,
    n_random: int = 2,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> VerifyResult:
    """Compare ``small`` with the masked reference in eval mode; raise :class:`VerificationError`."""
    ref = masked_reference(graph, removed).eval()
    flags = [(m, m.training) for m in small.modules()]
    small.eval()
    worst_abs = worst_rel = 0.0
    inputs = [example_input] + [random_like(example_input, seed) for seed in range(n_random)]
    try:
        with torch.no_grad():
            for x in inputs:
                try:
                    got = list(_tensors(run_model(small, x)))
                except RuntimeError as exc:
                    raise VerificationError(f"the pruned model fails to run: {exc}") from exc
                want = list(_tensors(run_model(ref, x)))
                if len(got) != len(want):
                    raise VerificationError("pruned and masked models return different output structures")
                for g, w in zip(got, want):
                    if g.shape != w.shape:
                        raise VerificationError(f"output shape {tuple(g.shape)} != masked {tuple(w.shape)}")
                    if not g.is_floating_point():
                        if not torch.equal(g, w):
                            raise VerificationError("integer outputs differ from the masked model")
                        continue
                    diff = (g - w).abs()
                    scale = w.abs().max().item() if w.numel() else 0.0
                    worst_abs = max(worst_abs, diff.max().item() if diff.numel() else 0.0)
                    worst_rel = max(worst_rel, worst_abs / scale if scale else 0.0)
                    if not torch.allclose(g, w, rtol=rtol, atol=atol * max(1.0, scale)):
                        raise VerificationError(
                            f"pruned model differs from the masked model: max |diff| = {diff.max().item():.3g} "
                            f"(output scale {scale:.3g}); an op in the graph does not commute with "
                            "channel removal"
                        )
    finally:
        for m, flag in flags:
            m.training = flag
    return VerifyResult(worst_abs, worst_rel, len(inputs))
