"""Small helpers every stage shares: a model's device, its train/eval modes, replacing a submodule.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(1, 1), nn.Dropout()); _ = m[1].eval()
>>> with preserved_modes(m):
...     _ = m.train()
>>> [mod.training for mod in m.modules()]
[True, True, False]
>>> replace_submodule(m, "1", nn.Identity()); type(m[1]).__name__
'Identity'
>>> model_device(m)
device(type='cpu')
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["eval_mode", "model_device", "preserved_modes", "replace_submodule"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore the train/eval flag of *every* submodule on exit (a mixed state comes back as it was)."""
    modes = [(mod, mod.training) for mod in model.modules()]
    try:
        yield
    finally:
        for mod, training in modes:
            mod.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's own flag comes back afterwards."""
    with preserved_modes(model):
        model.eval()
        yield model


def replace_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` of ``model`` (``""`` is not allowed: there is no parent)."""
    if not path:
        raise ValueError("replace_submodule needs the path of a submodule, not '' (the model itself)")
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
