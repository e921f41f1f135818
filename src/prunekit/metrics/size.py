"""Model size in bytes for a dense storage dtype, with per-tensor overrides for compressed formats.

>>> import torch
>>> from torch import nn
>>> model_bytes(nn.Linear(4, 2)), model_bytes(nn.Linear(4, 2), dtype=torch.float16)
(40, 20)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunekit.errors import ConfigError, close_matches


def tensor_sizes(model: nn.Module) -> dict[str, int]:
    """Element count of every floating-point parameter and buffer, by state-dict-style name.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are bookkeeping, not needed for
    inference, and left out. Shared tensors appear once.

    >>> tensor_sizes(nn.BatchNorm1d(3))
    {'weight': 3, 'bias': 3, 'running_mean': 3, 'running_var': 3}
    """
    sizes: dict[str, int] = {}
    seen: set[int] = set()
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in named:
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        sizes[name] = t.numel()
    return sizes


def model_bytes(
    model: nn.Module,
    dtype: torch.dtype = torch.float32,
    overrides: Mapping[str, int] | None = None,
) -> int:
    """Bytes to store ``model``'s floating-point parameters and buffers densely as ``dtype``.

    ``overrides`` maps a tensor name (as in :func:`tensor_sizes`) to its size in bytes in some
    compressed format (CSR, bitmask, int8, ...), replacing its dense size.

    >>> model_bytes(nn.Linear(4, 2), overrides={"weight": 12})  # 12 bytes + 2 fp32 biases
    20
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = tensor_sizes(model)
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in sizes]
    if unknown:
        raise ConfigError(
            f"model_bytes override for unknown tensor {unknown[0]!r}; {close_matches(unknown[0], list(sizes))}"
        )
    bad = [k for k, v in overrides.items() if int(v) < 0]
    if bad:
        raise ConfigError(f"model_bytes override for {bad[0]!r} is negative; give a size in bytes >= 0")
    return sum(int(overrides[n]) if n in overrides else numel * itemsize for n, numel in sizes.items())
