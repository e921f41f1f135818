"""Checkpoints that carry enough metadata to rebuild their model; always written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError
from prunekit.io import atomic_torch_save

FORMAT_VERSION = 1


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    model_name: str | None = None,
    model_config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Save ``model``'s state dict with its registry name/config and free-form metadata.

    The file is written to a temp file and renamed, so an interrupted save never leaves a
    half-written checkpoint.

    >>> import tempfile, pathlib
    >>> from prunekit.models import create
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r20.pt"
    >>> _ = save_checkpoint(p, create("resnet20"), "resnet20", {"num_classes": 10})
    >>> load_checkpoint(p)["model_name"]
    'resnet20'
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_config": dict(model_config or {}),
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {str(p)!r} does not exist (pass the path of a .pt file)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointError(f"{p} is not a prunekit checkpoint (no 'state_dict' entry)")
    obj.setdefault("model_name", None)
    obj.setdefault("model_config", {})
    obj.setdefault("metadata", {})
    return obj


def build_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registered model named in the checkpoint and load its weights.

    Checkpoints of physically pruned models (written by :func:`prunekit.structure.save_pruned`)
    are rebuilt by replaying their plan on the original architecture.
    """
    from prunekit.models import check_state_dict, create

    ckpt = load_checkpoint(path)
    if ckpt.get("structured_plan"):  # a physically pruned model: architecture + plan + state_dict
        from prunekit.structure import load_pruned

        return load_pruned(path)
    if not ckpt["model_name"]:
        raise CheckpointError(f"{path} does not name its model; build it yourself and use load_state_dict")
    model = create(ckpt["model_name"], **ckpt["model_config"])
    check_state_dict(model, ckpt["state_dict"], source=str(path))
    model.load_state_dict(ckpt["state_dict"], strict=False)
    return model, ckpt
