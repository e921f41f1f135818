"""Parameters, nonzeros and sparsity, per layer and in total.

Counts use each module's *effective* tensors: a weight pruned with ``torch.nn.utils.prune``
(``weight_orig`` + ``weight_mask``) or with ``torch.nn.utils.parametrize`` is counted through the
masked value the module actually uses, so nonzeros reflect the mask. Shared parameters are counted
once.

>>> import torch
>>> from torch import nn
>>> m = nn.Linear(4, 2)
>>> with torch.no_grad():
...     _ = m.weight.zero_()
>>> count_params(m), count_nonzeros(m)
(10, 2)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class LayerSparsity:
    """Parameter count and nonzeros of one module's own (non-recursive) parameters."""

    name: str
    type: str
    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        """Fraction of zero entries (0.0 for a module without parameters)."""
        return 0.0 if self.params == 0 else 1.0 - self.nonzeros / self.params


def _is_parametrization_container(name: str) -> bool:
    """True for ``parametrize``'s bookkeeping modules (``<layer>.parametrizations.<tensor>...``)."""
    return "parametrizations" in name.split(".")


def effective_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """Yield ``(module_name, module, tensor_name, tensor)`` for every parameter as the module uses it.

    ``weight_orig`` (``torch.nn.utils.prune``) yields the masked ``weight``; a parametrized tensor
    yields the parametrized value. Each underlying parameter is yielded once.

    >>> [(m, t, tuple(x.shape)) for m, _, t, x in effective_tensors(nn.Linear(3, 2))]
    [('', 'weight', (2, 3)), ('', 'bias', (2,))]
    """
    seen: set[int] = set()
    for mod_name, module in model.named_modules(remove_duplicate=True):
        if _is_parametrization_container(mod_name):
            continue  # the originals are reached through the parametrized module below
        if parametrize.is_parametrized(module):
            for tname in module.parametrizations:  # type: ignore[union-attr]
                originals = list(module.parametrizations[tname].parameters())  # type: ignore[index]
                if originals and all(id(p) in seen for p in originals):
                    continue
                seen.update(id(p) for p in originals)
                with torch.no_grad():
                    yield mod_name, module, tname, getattr(module, tname).detach()
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if pname.endswith("_orig") and isinstance(
                getattr(module, pname[: -len("_orig")], None), torch.Tensor
            ):
                pname = pname[: -len("_orig")]
                param = getattr(module, pname)
            yield mod_name, module, pname, param.detach()


def count_params(model: nn.Module) -> int:
    """Total number of parameter entries (shared parameters once).

    >>> count_params(nn.Conv2d(3, 8, 3, bias=False))
    216
    """
    return sum(t.numel() for _, _, _, t in effective_tensors(model))


def count_nonzeros(model: nn.Module) -> int:
    """Total number of nonzero parameter entries, after any pruning mask.

    >>> lin = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    >>> count_nonzeros(lin)
    1
    """
    return sum(int(torch.count_nonzero(t)) for _, _, _, t in effective_tensors(model))


def sparsity_report(model: nn.Module) -> list[LayerSparsity]:
    """One :class:`LayerSparsity` per module that owns parameters, in module order.

    >>> rows = sparsity_report(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
    >>> [(r.name, r.type, r.params) for r in rows]
    [('0', 'Linear', 6), ('2', 'Linear', 3)]
    """
    params: dict[str, int] = {}
    nonzeros: dict[str, int] = {}
    types: dict[str, str] = {}
    for mod_name, module, _, t in effective_tensors(model):
        params[mod_name] = params.get(mod_name, 0) + t.numel()
        nonzeros[mod_name] = nonzeros.get(mod_name, 0) + int(torch.count_nonzero(t))
        types[mod_name] = type(module).__name__
    return [LayerSparsity(n, types[n], params[n], nonzeros[n]) for n in params]


def total_sparsity(rows: list[LayerSparsity], name: str = "total") -> LayerSparsity:
    """Sum ``rows`` into one :class:`LayerSparsity` (its ``.sparsity`` is the overall sparsity).

    >>> total_sparsity([LayerSparsity("a", "Linear", 10, 5), LayerSparsity("b", "Linear", 30, 5)]).sparsity
    0.75
    """
    return LayerSparsity(name, "", sum(r.params for r in rows), sum(r.nonzeros for r in rows))
