"""deploy: keeps the model's function, never picks a kernel slower than dense, reports per layer."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from prunekit.cli.main import main
from prunekit.errors import ConfigError
from prunekit.metrics import LatencyResult
from prunekit.sparse import SparseConv2d, SparseLinear, deploy, numba_available

deploy_module = importlib.import_module("prunekit.sparse.deployment")


def _pruned(model: nn.Module, sparsity: float = 0.9) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) >= sparsity).float())
    return model


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return _pruned(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    ))


def test_deploy_keeps_outputs_and_never_slower_than_dense() -> None:
    model = _cnn().train()
    x = torch.randn(2, 3, 8, 8)
    deployed, report = deploy(model, x, repeats=3, warmup=1, threads=1)
    assert [c.name for c in report.layers] == ["0", "3", "6", "8"]
    assert model.training and isinstance(model[0], nn.Conv2d)  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    for c in report.layers:
        assert c.chosen_s <= c.dense_s, c
        assert "dense" in c.times_s and c.speedup >= 1.0
        assert 0.85 < 1 - c.density < 0.95  # the pruned weights, measured
    assert report.layers[0].input_zero_fraction == 0.0
    assert report.layers[2].input_zero_fraction > 0.2  # after ReLU
    assert report.batch_size == 2 and report.threads == 1 and report.speedup > 0
    table = report.table()
    assert "| 6 | Linear | 32x256 |" in table and "end to end (batch 2, threads 1" in table


def _fake_latency(times: dict[str, list[float]]):
    """A compare_latency stand-in: each call pops the next time of each name."""

    def fake(models, example_input, warmup=0, repeats=1, threads=None):
        return {n: LatencyResult.from_times([times[n].pop(0) if n in times and times[n] else 1.0], 1, 1)
                for n in models}

    return fake


def test_deploy_replaces_a_layer_only_when_it_wins_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)))
    # layer "0": torch_csr wins in both rounds; layer "2": wins once, loses the re-check.
    fake = _fake_latency({"dense": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "torch_csr": [0.5, 0.6, 0.5, 1.2]})
    monkeypatch.setattr(deploy_module, "compare_latency", fake)
    x = torch.randn(1, 16)
    deployed, report = deploy(model, x, candidates=["torch_csr"], repeats=1)
    first, second = report.layers
    assert first.kernel == "torch_csr" and isinstance(deployed[0], SparseLinear)
    assert report.changed == ["0"]
    assert (first.dense_s, first.chosen_s) == (1.0, 0.6)
    assert second.kernel == "dense" and isinstance(deployed[2], nn.Linear)
    assert second.chosen_s == second.dense_s
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)


def test_deploy_returns_dense_when_the_winners_lose_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned(nn.Sequential(nn.Linear(16, 8)))
    # the layer wins twice (0.5, 0.5 vs 1.0), the whole model then loses twice (2.0 vs 1.0)
    fake = _fake_latency({"dense": [1.0] * 4, "torch_csr": [0.5, 0.5], "deployed": [2.0, 2.0]})
    monkeypatch.setattr(deploy_module, "compare_latency", fake)
    deployed, report = deploy(model, torch.randn(1, 16), candidates=["torch_csr"], repeats=1)
    assert report.layers[0].kernel == "torch_csr" and report.reverted
    assert isinstance(deployed[0], nn.Linear) and deployed[0] is not model[0]
    assert report.changed == [] and "returned the dense model" in report.table()
    fake = _fake_latency({"dense": [1.0] * 4, "torch_csr": [0.5, 0.5], "deployed": [2.0, 0.9]})
    monkeypatch.setattr(deploy_module, "compare_latency", fake)
    deployed, report = deploy(model, torch.randn(1, 16), candidates=["torch_csr"], repeats=1)
    assert not report.reverted and isinstance(deployed[0], SparseLinear)  # the re-check won


def test_deploy_margin_keeps_dense_on_a_near_tie(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned(nn.Sequential(nn.Conv2d(2, 4, 3)))
    monkeypatch.setattr(deploy_module, "compare_latency",
                        _fake_latency({"dense": [1.0, 1.0], "torch_csr": [0.97]}))
    deployed, report = deploy(model, torch.randn(1, 2, 5, 5), candidates="torch_csr", margin=0.05)
    assert report.layers[0].kernel == "dense" and isinstance(deployed[0], nn.Conv2d)
    monkeypatch.setattr(deploy_module, "compare_latency",
                        _fake_latency({"dense": [1.0, 1.0, 1.0], "torch_csr": [0.5, 0.5]}))
    deployed, report = deploy(model, torch.randn(1, 2, 5, 5), candidates="torch_csr")
    assert report.layers[0].kernel == "torch_csr" and isinstance(deployed[0], SparseConv2d)
    assert report.layers[0].chosen_bytes < report.layers[0].dense_bytes


def test_dense_layers_are_not_tried_and_bad_candidates_fail() -> None:
    model = nn.Sequential(nn.Linear(8, 8))  # fully dense weight
    _, report = deploy(model, torch.randn(1, 8), repeats=1, warmup=0)
    assert report.layers[0].kernel == "dense"
    assert all("max_density" in why for why in report.layers[0].skipped.values())
    assert report.changed == [] and "no layer changed" in report.table()
    _, report = deploy(model, torch.randn(1, 8), repeats=2, warmup=0, statistic="p10")
    assert "p10s)" in report.table()
    with pytest.raises(ConfigError, match="statistic must be one of median, p10"):
        deploy(model, torch.randn(1, 8), statistic="mean")
    with pytest.raises(ConfigError, match="unknown deploy candidate 'mkl'"):
        deploy(model, torch.randn(1, 8), candidates=["mkl"])
    with pytest.raises(ConfigError, match="no nn.Linear or nn.Conv2d"):
        deploy(nn.Sequential(nn.ReLU()), torch.randn(1, 8))


def test_cli_deploy_and_bench(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    out = tmp_path / "deployed.pt"
    code = main(["deploy", "--model", "lenet300_100", "--repeats", "2", "--threads", "1",
                 "--candidates", "torch_csr", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "| fc1 | Linear | 300x784 |" in text and "end to end (batch 1" in text
    from prunekit.checkpoint import build

    model, ckpt = build(out)  # a prunekit checkpoint like any other: weights dense, kernels recorded
    assert ckpt.kind == "deployed" and set(ckpt.deploy["kernels"]) == {"fc1", "fc2", "fc3"}
    assert main(["info", "--checkpoint", str(out)]) == 0
    capsys.readouterr()
    code = main(["bench", "--shape", "16x32", "--batch-sizes", "1,4", "--sparsities", "0.5,0.9",
                 "--kernels", "torch_csr", "--repeats", "2", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "| 90% |" in text and "crossover sparsity" in text
    assert main(["bench", "--sparsities", "1.5"]) == 2


def test_deploy_module_is_not_shadowed_by_the_function() -> None:
    import prunekit.sparse.deployment as deployment

    assert deployment.deploy is deploy and callable(deployment.DeployReport)


def test_bench_regimes_flush_or_evict_before_every_timed_call(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from prunekit.metrics import latency
    from prunekit.sparse import bench

    calls: list[str] = []

    class CountingFlusher:
        def __call__(self) -> None:
            calls.append("flush")

    class CountingEvictor:
        def __init__(self, tensors) -> None:
            self.n = len(list(tensors))

        def __call__(self) -> None:
            calls.append(f"evict {self.n}")

    monkeypatch.setattr(bench, "CacheFlusher", CountingFlusher)
    monkeypatch.setattr(bench, "TensorEvictor", CountingEvictor)
    monkeypatch.setattr(bench, "evict_available", lambda: True)
    rows = bench.bench_linear((8, 16), [1, 2], [0.5], ["torch_csr"], repeats=3, warmup=1, threads=1, regime="flushed")
    assert calls == ["flush"] * (2 * 3 * 2)  # batches x repeats x (dense, kernel); warm-ups are not flushed
    assert all(r.regime == "flushed" for r in rows) and "flushed caches" in bench.format_bench(rows)
    calls.clear()
    rows = bench.bench_linear((8, 16), [1], [0.5], ["torch_csr"], repeats=3, warmup=1, threads=1, regime="evicted")
    # the dense weight (no bias), the kernel's values, col_indices and row_ptr, and the input
    assert calls == ["evict 5"] * 6 and "evicted caches" in bench.format_bench(rows)
    calls.clear()
    rows = bench.bench_linear((8, 16), [1], [0.5], ["torch_csr"], repeats=3, warmup=1, threads=1)
    assert calls == [] and "warm caches" in bench.format_bench(rows)
    with pytest.raises(ConfigError, match="unknown cache regime 'cold'; choose one of warm, evicted, flushed"):
        bench.bench_linear((8, 16), [1], [0.5], ["torch_csr"], regime="cold")
    assert main(["bench", "--shape", "8x16", "--batch-sizes", "1", "--sparsities", "0.5", "--kernels",
                 "torch_csr", "--repeats", "2", "--threads", "1", "--regime", "flushed"]) == 0
    assert "flushed caches" in capsys.readouterr().out and calls == ["flush"] * 4
    flusher = latency.CacheFlusher(nbytes=1 << 16)
    before = flusher._buffer.sum()
    flusher()
    assert flusher._buffer.sum() == before + (1 << 16) // 64  # one write per cache line


def test_tensor_evictor_checks_its_input_and_keeps_values() -> None:
    from prunekit.sparse.kernels.evict import TensorEvictor, evict_available

    if not evict_available():
        with pytest.raises(ImportError, match="x86-64"):
            TensorEvictor([torch.zeros(4)])
        return
    t = torch.randn(100, 33)
    before = t.clone()
    TensorEvictor([t, torch.arange(5, dtype=torch.int16), torch.zeros(0)])()
    assert torch.equal(t, before)  # clflush writes dirty lines back, never changes data
    with pytest.raises(ConfigError, match="contiguous CPU tensors"):
        TensorEvictor([t.t()])


@pytest.mark.skipif(not numba_available(), reason="numba not installed (pip install numba)")
def test_deploy_tries_the_packet_kernel_on_linears_only(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _pruned(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(36, 8)))
    fake = _fake_latency({"dense": [1.0] * 6, "numba_packet": [0.5, 0.5]})
    monkeypatch.setattr(deploy_module, "compare_latency", fake)
    deployed, report = deploy(model, torch.randn(1, 2, 5, 5), candidates=["numba_packet"], repeats=1)
    conv, linear = report.layers
    assert conv.kernel == "dense" and "Linear layers only" in conv.skipped["numba_packet"]
    assert linear.kernel == "numba_packet" and deployed[2].kernel == "numba_packet"
    with torch.no_grad():
        x = torch.randn(1, 2, 5, 5)
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-6)
