"""Checks on what users hand to prunekit: example inputs and files written by ``torch.save``.

:func:`check_example_input` runs a model once on an example input and turns a shape mismatch
into a :class:`~prunekit.errors.ConfigError` that names the entry point, the input given and the
input the model's first layer expects, before any long computation starts.

:func:`read_torch_file` reads a ``.pt`` file with ``weights_only=True`` (no code in it runs) and
explains a file that cannot be read (empty, truncated, random bytes, a text file, a file naming
Python objects) without passing on torch's advice to load it unsafely.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(16, 4))
>>> check_example_input(model, torch.zeros(2, 16), "deploy")
>>> check_example_input(model, torch.zeros(2, 10), "deploy")
Traceback (most recent call last):
...
prunekit.errors.ConfigError: deploy: the example input (2, 10) does not fit the model: its first layer '0' (Linear) expects inputs (..., 16) ...
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, PrunekitError
from prunekit.metrics.macs import run_model
from prunekit.moduletools import eval_mode

# words of the errors a wrong example input causes (shape, size, dtype, arguments); others pass through
_INPUT_MISMATCH = ("shape", "size", "channel", "dimension", "dim ", "mat1", "mat2", "multiplied", "unpack",
                   "expected input", "scalar type", "dtype", "positional argument", "keyword argument")
# words of torch's messages that must never reach a user: they advise loading a file unsafely
_UNSAFE_ADVICE = ("weights_only", "allow_pickle", "pytorch issue", "github.com/pytorch", "trusted source")


def describe_input(example_input: Any) -> str:
    """A short description of an example input: its shape, or the shapes of a tuple / mapping of tensors.

    >>> describe_input(torch.zeros(2, 3)), describe_input((torch.zeros(1), 3)), describe_input({"x": torch.zeros(4)})
    ('(2, 3)', '((1,), int)', '{x: (4,)}')
    """
    if isinstance(example_input, torch.Tensor):
        return str(tuple(example_input.shape))
    if isinstance(example_input, Mapping):
        return "{" + ", ".join(f"{k}: {describe_input(v)}" for k, v in example_input.items()) + "}"
    if isinstance(example_input, (tuple, list)):
        inner = ", ".join(describe_input(v) for v in example_input)
        return f"({inner},)" if len(example_input) == 1 and isinstance(example_input, tuple) else f"({inner})"
    return type(example_input).__name__


def expected_input(model: nn.Module) -> tuple[str, str] | None:
    """``(layer name, expected input)`` of the model's first layer with a known input size, or None.

    >>> expected_input(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)))
    ('0', 'inputs (B, 3, H, W)')
    """
    for name, module in model.named_modules():
        channels, features = getattr(module, "in_channels", None), getattr(module, "in_features", None)
        kind = type(module).__name__
        if isinstance(channels, int):
            if isinstance(module, nn.Conv1d):
                return name, f"inputs (B, {channels}, L)"
            if isinstance(module, nn.Conv3d):
                return name, f"inputs (B, {channels}, D, H, W)"
            if "2d" in kind.lower() or isinstance(module, nn.Conv2d):
                return name, f"inputs (B, {channels}, H, W)"
            return name, f"inputs with {channels} channels"
        if isinstance(features, int):
            return name, f"inputs (..., {features})"
        if isinstance(module, nn.Embedding):
            return name, f"integer token ids below {module.num_embeddings}"
    return None


def check_example_input(model: nn.Module, example_input: Any, where: str) -> None:
    """Run ``model`` once on ``example_input`` (no grad, eval mode; every module's mode restored).

    A tensor, a tuple/list (positional arguments) or a mapping (keyword arguments). A failure that
    a wrong input causes (a shape, size, dtype or argument mismatch) raises :class:`ConfigError`
    naming ``where`` (the entry point), the input given and the input the first layer expects;
    any other error (a bug in the model, an error prunekit raised on purpose) passes through unchanged.
    """
    if example_input is None:
        raise ConfigError(f"{where}: example_input is None; pass a tensor shaped like one batch of the model's input")
    try:
        with eval_mode(model), torch.no_grad():  # every module's own train/eval flag comes back
            run_model(model, example_input)
    except PrunekitError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        if not any(word in str(exc).lower() for word in _INPUT_MISMATCH):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        found = expected_input(model)
        wants = f"its first layer {found[0]!r} ({type(model.get_submodule(found[0])).__name__}) expects {found[1]}" \
            if found else "see its first layer"
        raise ConfigError(
            f"{where}: the example input {describe_input(example_input)} does not fit the model: {wants} "
            f"({type(exc).__name__}: {first}); pass an input shaped like one batch of the model's input"
        ) from exc


def _torch_file_problem(path: Path, exc: BaseException, what: str) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words."""
    text = str(exc)
    glob = re.search(r"GLOBAL ([\w.]+)", text)
    if glob:
        return (f"it names the Python object {glob.group(1)}, which a {what} never holds (only tensors and "
                "plain values); prunekit runs no code from files, so the file is refused")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as err:
        return f"it cannot be opened ({err.strerror or err})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return f"the file is truncated or damaged ({size} bytes, its zip archive is incomplete)"
        return "it is a zip archive but not one written by torch.save"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it is a JSON text file, not a file written by torch.save"
    if head.startswith(b"\x80"):  # a bare pickle (torch's legacy format or plain pickle.dump)
        return "it is a damaged or truncated pickle, or not one written by torch.save"
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    if printable > 0.95 * len(head):
        return "it is a text file, not a file written by torch.save"
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    if any(w in first.lower() for w in _UNSAFE_ADVICE):
        first = type(exc).__name__
    return f"it is not a file written by torch.save ({first})" if first != type(exc).__name__ else \
        "it is not a file written by torch.save (random or foreign bytes)"


def read_torch_file(path: str | os.PathLike[str], what: str = "checkpoint", remedy: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with a :class:`CheckpointError` that names the
    file and the problem (missing, a directory, empty, truncated, not a torch file, Python objects).

    ``what`` names the file in messages (``"checkpoint"``, ``"mask file"``); ``remedy`` is appended.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty.pt"
    >>> _ = p.write_bytes(b"")
    >>> read_torch_file(p)
    Traceback (most recent call last):
    ...
    prunekit.errors.CheckpointError: cannot read checkpoint '...empty.pt': the file is empty (0 bytes)
    """
    p = Path(path)
    tail = f"; {remedy}" if remedy else ""
    if p.is_dir():
        raise CheckpointError(f"{what} {str(p)!r} is a directory; pass the path of a .pt file")
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {str(p)!r} does not exist (pass the path of a .pt file)")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any damage or foreign content: explained below, torch's advice dropped
        raise CheckpointError(f"cannot read {what} {str(p)!r}: {_torch_file_problem(p, exc, what)}{tail}") from None


__all__ = ["check_example_input", "describe_input", "expected_input", "read_torch_file"]
