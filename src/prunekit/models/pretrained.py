"""Loading pretrained checkpoints into prunekit models (safe loader, clear mismatch errors)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import CheckpointError


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` with ``weights_only=True``.

    Accepts a bare state dict or a dict holding one under ``state_dict`` / ``model``;
    strips a ``module.`` (DataParallel) prefix from every key.
    """
    from prunekit.inputs import read_torch_file

    p = Path(path)
    obj = read_torch_file(p, "state-dict file", "pass a state dict saved with torch.save(model.state_dict(), path)")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} holds no state dict (expected a dict of tensors, or one under 'state_dict')")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first missing/unexpected/mis-shaped key."""
    own = model.state_dict()
    # Old checkpoints predate BatchNorm's ``num_batches_tracked`` buffer; it is not a weight.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(
            f"{source} does not match the model: missing key {missing[0]!r} "
            f"({len(missing)} missing in all); is it for another architecture?"
        )
    if unexpected:
        raise CheckpointError(
            f"{source} does not match the model: unexpected key {unexpected[0]!r} "
            f"({len(unexpected)} unexpected in all); is it for another architecture?"
        )
    for k, v in own.items():
        if k not in state:
            continue
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source} does not match the model: key {k!r} has shape {tuple(state[k].shape)} "
                f"in the checkpoint but {tuple(v.shape)} in the model"
            )


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strict, shape-checked) and return it.

    >>> from prunekit.models import create
    >>> import tempfile, pathlib
    >>> m = create("resnet20")
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.th"
    >>> torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, p)
    >>> _ = load_pretrained(create("resnet20"), p)
    """
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path))
    own = model.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    model.load_state_dict(state)
    return model
