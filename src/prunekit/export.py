"""ONNX export of (pruned, physically shrunk or deployed) models, and a check with onnxruntime.

Deployed sparse modules (``SparseLinear`` / ``SparseConv2d``) have no standard ONNX op; export
replaces them by equivalent dense ``nn.Linear`` / ``nn.Conv2d`` (zeros included) in a copy of
the model, so the file runs in any ONNX runtime and computes the same function. Uses torch's
TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx`` package.

Needs ``pip install onnx onnxruntime`` (extra ``onnx``).

>>> import tempfile, pathlib, torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
>>> path = export_onnx(model, torch.randn(2, 4), pathlib.Path(tempfile.mkdtemp()) / "m.onnx")
>>> check_onnx(path, model, torch.randn(2, 4)) < 1e-5
True
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.inputs import check_example_input
from prunekit.io import atomic_write
from prunekit.masks import clean_copy
from prunekit.metrics.macs import eval_mode
from prunekit.sparse.modules import SparseConv2d, SparseLinear


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every SparseLinear/SparseConv2d replaced by its dense equivalent.

    >>> m = nn.Sequential(SparseLinear.from_dense(nn.Linear(4, 2), "torch_csr"))
    >>> type(densify(m)[0]).__name__
    'Linear'
    """
    out = clean_copy(model)
    if isinstance(out, (SparseLinear, SparseConv2d)):
        return out.to_dense()
    for name, module in list(out.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)):
            out.set_submodule(name, module.to_dense())
    return out


def _example_args(example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ConfigError("example_input must be a tensor or a tuple of tensors")
    return args


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` (densified, eval mode) as ONNX to ``path`` atomically; return the path.

    The first dimension of every input and of the output is dynamic when ``dynamic_batch``.
    ``model``'s own train/eval flags are left as they were.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise UnsupportedError("ONNX export needs the onnx package: pip install onnx onnxruntime "
                               "(extra 'onnx')") from exc
    args = _example_args(example_input)
    dense = densify(model).eval()
    check_example_input(dense, args[0] if len(args) == 1 else args, "export_onnx")  # before the trace
    names = [f"input{i}" for i in range(len(args))]
    axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice
            warnings.filterwarnings("ignore", message="Constant folding")  # slicing with steps (option-A shortcut)
            torch.onnx.export(dense, args, str(tmp), input_names=names, output_names=["output"],
                              opset_version=opset, dynamic_axes=axes, dynamo=False)

    return atomic_write(path, write)


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> float:
    """Run the ONNX file with onnxruntime on ``example_input`` and compare with ``model``.

    Returns the largest absolute difference; raises ``PrunekitError`` (``ConfigError``) when
    the outputs differ beyond ``rtol``/``atol``.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UnsupportedError("check_onnx needs onnxruntime: pip install onnxruntime (extra 'onnx')") from exc
    if not Path(path).is_file():
        raise ConfigError(f"ONNX file {str(path)!r} does not exist; write it with export_onnx first")
    args = _example_args(example_input)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(session.get_inputs(), args)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad(), eval_mode(model):
        want = model(*args).detach().cpu()
    if got.shape != want.shape:
        raise ConfigError(f"ONNX output shape {tuple(got.shape)} != model output shape {tuple(want.shape)}")
    diff = float((got - want).abs().max()) if got.numel() else 0.0
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        raise ConfigError(f"ONNX output differs from the model by up to {diff:.3g} "
                          f"(rtol={rtol}, atol={atol}); re-export or check unsupported ops")
    return diff


__all__ = ["check_onnx", "densify", "export_onnx"]
