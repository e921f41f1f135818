"""ONNX export: deployed sparse models and physically pruned models round-trip through onnxruntime."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.sparse import SparseConv2d, SparseLinear

pytest.importorskip("onnx", reason="onnx not installed (pip install onnx onnxruntime)")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime)")

from prunekit.export import check_onnx, densify, export_onnx  # noqa: E402


def _small_cnn(width: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(width * 4, 5)).eval()


def test_deployed_sparse_model_round_trips(tmp_path) -> None:
    model = _small_cnn()
    with torch.no_grad():
        model[0].weight[:, :, 1] = 0  # some zeros
        model[5].weight[:, ::2] = 0
    model[0] = SparseConv2d.from_dense(model[0], kernel="torch_csr")
    model[5] = SparseLinear.from_dense(model[5], kernel="auto")
    x = torch.randn(2, 3, 8, 8)
    path = export_onnx(model, x, tmp_path / "sub" / "m.onnx")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # no temp file left
    assert check_onnx(path, model, x) < 1e-4
    assert check_onnx(path, model, torch.randn(5, 3, 8, 8)) < 1e-4  # dynamic batch
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "Gemm"} <= ops


def test_physically_pruned_model_exports(tmp_path) -> None:
    small = _small_cnn(width=3)  # e.g. a channel-pruned network: just a smaller plain nn.Module
    x = torch.randn(1, 3, 8, 8)
    assert check_onnx(export_onnx(small, x, tmp_path / "small.onnx"), small, x) < 1e-4


def test_check_onnx_catches_a_different_model_and_missing_file(tmp_path) -> None:
    a = nn.Linear(4, 3).eval()
    b = nn.Linear(4, 3).eval()
    path = export_onnx(a, torch.randn(1, 4), tmp_path / "a.onnx")
    with pytest.raises(ConfigError, match="differs from the model"):
        check_onnx(path, b, torch.randn(2, 4))
    with pytest.raises(ConfigError, match="does not exist"):
        check_onnx(tmp_path / "nope.onnx", a, torch.randn(1, 4))


def test_failed_export_leaves_nothing(tmp_path) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), torch.randn(1, 2), tmp_path / "b.onnx")
    assert list(tmp_path.iterdir()) == []


def test_densify_replaces_sparse_modules_only() -> None:
    model = nn.Sequential(SparseLinear.from_dense(nn.Linear(4, 4), "torch_csr"), nn.ReLU(), nn.Linear(4, 2))
    dense = densify(model)
    assert [type(m).__name__ for m in dense] == ["Linear", "ReLU", "Linear"]
    assert isinstance(model[0], SparseLinear)  # the input is not changed
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x))
