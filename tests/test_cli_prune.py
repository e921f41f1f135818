"""``prunekit prune`` on the digits CNN (data ships with scikit-learn): outputs, checkpoint, errors."""

from __future__ import annotations

import pytest
import torch

from prunekit.cli.main import main
from prunekit.train import build_from_checkpoint, load_checkpoint

BASE = ["prune", "--model", "digits_cnn"]




def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*BASE, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_global_element_l1_writes_an_exactly_sparse_checkpoint(tmp_path, capsys) -> None:
    out_path = tmp_path / "p.pt"
    code, out, err = _run(capsys, "--sparsity", "0.6", "--scope", "global", "--out", str(out_path))
    assert code == 0, err
    assert "features.0" in out and "classifier" in out and "60.00%" in out.splitlines()[-2]
    model, ckpt = build_from_checkpoint(out_path)
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.6 * total)
    meta = ckpt["metadata"]
    assert meta["pruning"]["criterion"] == "l1" and meta["dataset"] == "digits"
    masks = ckpt.masks
    assert all(torch.equal(masks[n], model.get_submodule(n).weight != 0) for n in masks)


def test_nm_needs_the_first_conv_excluded(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "--granularity", "nm:2:4", "--out", str(tmp_path / "a.pt"))
    assert code == 1 and "layer 'features.0' to be divisible by 4, but it is 1" in err
    code, out, err = _run(
        capsys, "--granularity", "nm:2:4", "--exclude", "features.0", "--layer", "classifier=0.5",
        "--out", str(tmp_path / "b.pt"),
    )
    assert code == 0, err
    model, _ = build_from_checkpoint(tmp_path / "b.pt")
    w = model.features[3].weight
    assert torch.equal(w.movedim(1, -1).reshape(-1, 4).ne(0).sum(1), torch.full((w.numel() // 4,), 2))
    assert int((model.features[0].weight == 0).sum()) == 0


def test_data_driven_criterion_uses_calibration_batches(tmp_path, capsys) -> None:
    pytest.importorskip("prunekit.criteria")
    code, out, err = _run(
        capsys, "--criterion", "taylor", "--calib-batches", "2", "--granularity", "channel",
        "--sparsity", "0.25", "--scope", "uniform", "--out", str(tmp_path / "t.pt"),
    )
    assert code == 0, err
    model, _ = build_from_checkpoint(tmp_path / "t.pt")
    w = model.features[7].weight  # (32, 16, 3, 3): 8 whole filters removed
    assert int((w.reshape(32, -1).abs().sum(1) == 0).sum()) == 8


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--sparsity", "1.5"], 1, r"sparsity must be in [0, 1)"),
        (["--sparsity", "0.5", "--granularity", "kernel"], 1, "Kernel() applies to conv layers only; 'classifier'"),
        (["--sparsity", "0.5", "--granularity", "blok"], 1, "unknown granularity 'blok'; choose one of: block, channel"),
        (["--sparsity", "0.5", "--granularity", "nm:4:4"], 1, "n must be < m"),
        (["--sparsity", "0.5", "--layer", "features.2=0.5"], 1, "PerLayer names layer 'features.2'"),
        (["--sparsity", "0.5", "--exclude", "fc"], 1, "exclude pattern 'fc' matches no prunable layer"),
        (["--sparsity", "0.5", "--criterion", "l3"], 1, "unknown"),
        (["--granularity", "element"], 2, "--sparsity is required"),
        (["--sparsity", "0.5", "--layer", "oops"], 2, "expected NAME=RATIO"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, argv, code, message) -> None:
    got, _, err = _run(capsys, *argv, "--out", str(tmp_path / "x.pt"))
    assert got == code and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_missing_out_is_a_usage_error(capsys) -> None:
    code, _, err = _run(capsys, "--sparsity", "0.5")
    assert code == 2 and "--out" in err


def test_checkpoint_round_trip_input(tmp_path, capsys) -> None:
    first = tmp_path / "first.pt"
    assert _run(capsys, "--sparsity", "0.3", "--out", str(first))[0] == 0
    code = main(["prune", "--checkpoint", str(first), "--sparsity", "0.5", "--out", str(tmp_path / "second.pt")])
    assert code == 0, capsys.readouterr().err
    meta = load_checkpoint(tmp_path / "second.pt")["metadata"]
    assert abs(meta["pruning"]["sparsity"] - 0.5) < 0.01


def test_structured_flag_delegates(tmp_path, capsys) -> None:
    pytest.importorskip("prunekit.cli.prune_structured")
    code, out, err = _run(
        capsys, "--structured", "--sparsity", "0.25", "--latency-repeats", "2", "--out", str(tmp_path / "s.pt")
    )
    assert code == 0, err
    assert (tmp_path / "s.pt").is_file() and "params" in out


def test_the_default_scope_is_the_measured_best(tmp_path, capsys) -> None:
    """Masks default to one global ranking (RESULTS.md sections 2 and 4); fixed-ratio granularities to uniform."""
    code, out, err = _run(capsys, "--sparsity", "0.6", "--out", str(tmp_path / "g.pt"))
    assert code == 0, err
    assert "Global(0.6" in out
    from prunekit import checkpoint

    assert checkpoint.read(tmp_path / "g.pt").metadata["pruning"]["scope"] == "global"
    code, out, err = _run(capsys, "--granularity", "nm:2:4", "--exclude", "features.0", "--out", str(tmp_path / "n.pt"))
    assert code == 0, err
    assert checkpoint.read(tmp_path / "n.pt").metadata["pruning"]["scope"] == "uniform"


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_structured_default_scope_searches_at_a_budget(tmp_path, capsys, budget) -> None:
    """With --structured at a MACs / params budget the default is a sensitivity search (RESULTS.md 4b): its
    per-group ratios reach the budget and are recorded; --target channels keeps uniform."""
    from prunekit import checkpoint

    code, out, err = _run(capsys, "--structured", "--target", budget, "--sparsity", "0.5", "--search-images", "200",
                          "--latency-repeats", "2", "--out", str(tmp_path / "s.pt"))
    assert code == 0, err
    assert "sensitivity scan" in out and "per-group ratios keeping" in out
    meta = checkpoint.read(tmp_path / "s.pt").metadata["pruning"]
    assert meta["scope"] == "sensitivity" and meta["allocation"].startswith("PerLayer(")
    assert meta["target"] == budget and meta["ratio"] == 0.5
    assert 0.5 <= meta["reached"][budget] < 0.6
    code, out, err = _run(capsys, "--structured", "--sparsity", "0.25", "--latency-repeats", "2",
                          "--out", str(tmp_path / "c.pt"))
    assert code == 0, err
    assert checkpoint.read(tmp_path / "c.pt").metadata["pruning"]["scope"] == "uniform"


@pytest.mark.parametrize("argv, message", [
    (["--structured", "--target", "channels", "--scope", "sensitivity"], "meets a --target macs or params budget"),
    (["--scope", "sensitivity"], "applies to --structured"),
])
def test_sensitivity_scope_refuses_what_it_cannot_do(tmp_path, capsys, argv, message) -> None:
    code, _, err = _run(capsys, *argv, "--sparsity", "0.5", "--out", str(tmp_path / "x.pt"))
    assert code == 2 and message in err and not (tmp_path / "x.pt").exists()


def test_default_search_without_data_names_the_scope_and_the_fix(tmp_path, capsys) -> None:
    code = main(["prune", "--structured", "--model", "resnet20", "--data", str(tmp_path / "missing.npz"), "--target",
                 "macs", "--sparsity", "0.5", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code != 0 and "--scope sensitivity (the default for --target macs)" in err and "--scope uniform" in err
    assert "missing.npz" in err and not (tmp_path / "x.pt").exists()


def _bn_buffers(path) -> dict[str, torch.Tensor]:
    model, _ = build_from_checkpoint(path)
    return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("structured", [False, True])
def test_recalibrate_bn_saves_fresh_statistics_and_nothing_else(tmp_path, capsys, structured) -> None:
    start = tmp_path / "start.pt"  # one set of weights for both runs (a bare --model starts from a random init)
    assert _run(capsys, "--sparsity", "0.1", "--out", str(start))[0] == 0
    extra = ["--checkpoint", str(start), "--sparsity", "0.5"]
    extra += ["--structured", "--latency-repeats", "2"] if structured else []
    plain, recal = tmp_path / "plain.pt", tmp_path / "recal.pt"
    assert main(["prune", *extra, "--out", str(plain)]) == 0
    code = main(["prune", *extra, "--recalibrate-bn", "3", "--out", str(recal)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "BatchNorm recalibration: 4 layers re-estimated from 3 batches" in out
    a, b = _bn_buffers(plain), _bn_buffers(recal)
    assert a.keys() == b.keys() and all(not torch.equal(a[k], b[k]) for k in a)
    wa, wb = (build_from_checkpoint(p)[0].state_dict() for p in (plain, recal))
    assert all(torch.equal(wa[k], wb[k]) for k in wa if not k.endswith(("running_mean", "running_var",
                                                                          "num_batches_tracked")))


def test_recalibrate_bn_without_batchnorm_is_refused_before_any_work(tmp_path, capsys) -> None:
    code = main(["prune", "--model", "lenet300_100", "--sparsity", "0.5", "--recalibrate-bn", "2",
                 "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "--recalibrate-bn: lenet300_100 has no BatchNorm layer" in err
    assert not (tmp_path / "x.pt").exists()
