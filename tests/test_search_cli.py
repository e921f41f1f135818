"""``prunekit sensitivity`` and ``prunekit search`` on the offline digits data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit import checkpoint
from prunekit.cli.main import main

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("d") / "d.pt"
    assert main(["train", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "3", "--out", str(path)]) == 0
    return path


def _stopping_at_second(real, calls: list):
    """``real`` (a scan's per-layer row), but Ctrl-C while the second layer is scanned; ``calls`` counts."""
    def stopping(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    return stopping


def test_sensitivity_masks_writes_curves_and_the_pruned_model(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.json"
    assert main(["sensitivity", "--checkpoint", str(trained), "--val-images", "200", "--ratios", "0.3,0.6,0.9",
                 "--sparsity", "0.7", "--out", str(out), "--prune-out", str(tmp_path / "s.pt")]) == 0
    assert "per-layer ratios for 70% overall" in capsys.readouterr().out
    for suffix in (".json", ".csv", ".png"):
        assert out.with_suffix(suffix).is_file()
    ckpt = checkpoint.read(tmp_path / "s.pt")
    assert ckpt.masks is not None and abs(ckpt.masks.sparsity() - 0.7) < 0.08  # scanned ratios come in steps
    assert not out.with_suffix(".state").exists()  # the state goes once the curves are written
    # reuse the curves: no scan, same ratios
    assert main(["sensitivity", "--checkpoint", str(trained), "--curves", str(out), "--sparsity", "0.7",
                 "--out", str(tmp_path / "again.json")]) == 0


def test_sensitivity_channels_meets_the_macs_target(trained: Path, tmp_path: Path) -> None:
    from prunekit.data.choose import example_input_for
    from prunekit.metrics import count_macs

    assert main(["sensitivity", "--checkpoint", str(trained), "--val-images", "200", "--channels", "--ratios",
                 "0.3,0.6", "--macs-ratio", "0.6", "--out", str(tmp_path / "c.json"),
                 "--prune-out", str(tmp_path / "c.pt")]) == 0
    small, ckpt = checkpoint.build(tmp_path / "c.pt")
    dense, _ = checkpoint.build(trained)
    x = example_input_for("digits")
    assert ckpt.plan is not None and count_macs(small, x) <= 0.6 * count_macs(dense, x)


def test_sensitivity_continues_an_interrupted_scan(trained: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import prunekit.sensitivity as sens

    out = tmp_path / "r.json"
    args = ["sensitivity", "--checkpoint", str(trained), "--val-images", "100", "--ratios", "0.5,0.8",
            "--out", str(out), "--force"]
    assert main(args) == 0
    whole = json.loads(out.read_text())
    real, calls = sens._layer_row, []
    monkeypatch.setattr(sens, "_layer_row", _stopping_at_second(real, calls))
    assert main(args) == 130
    assert f"the last good file {out.with_suffix('.state')} is kept" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(sens, "_layer_row", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming from" in capsys.readouterr().out
    assert len(calls) == len(whole["values"]) - 1  # the finished layer is not scanned again
    assert json.loads(out.read_text())["values"] == whole["values"]
    assert not out.with_suffix(".state").exists()


def test_recalibrated_scan_differs_and_resumes_with_the_same_batches(trained: Path, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    """--recalibrate-bn: fresh statistics per probe; the batches come from --seed, so a scan stopped
    half-way and run again ends with the curves of an uninterrupted one."""
    import prunekit.sensitivity as sens

    base = ["sensitivity", "--checkpoint", str(trained), "--val-images", "100", "--ratios", "0.5,0.8", "--force"]
    assert main(base + ["--out", str(tmp_path / "plain.json")]) == 0
    out = tmp_path / "r.json"
    args = base + ["--out", str(out), "--recalibrate-bn", "3"]
    assert main(args) == 0
    assert "from 3 augmented training batches" in capsys.readouterr().out
    whole = json.loads(out.read_text())
    assert whole["values"] != json.loads((tmp_path / "plain.json").read_text())["values"]
    real = sens._layer_row
    monkeypatch.setattr(sens, "_layer_row", _stopping_at_second(real, []))
    assert main(args) == 130
    monkeypatch.setattr(sens, "_layer_row", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads(out.read_text())["values"] == whole["values"]


def test_netadapt_search_writes_a_plan_checkpoint_and_resumes(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "n.pt"
    args = ["search", "--method", "netadapt", "--checkpoint", str(trained), "--val-images", "100",
            "--latency-ratio", "0.95", "--step", "0.3", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    record = json.loads((tmp_path / "n.pt.json").read_text())
    assert record["iterations"] and "reached" in record
    small, ckpt = checkpoint.build(out)
    assert ckpt.kind == "channel-pruned" and len(ckpt.plan.steps) == len(record["iterations"])
    capsys.readouterr()
    assert main(args + ["--force"]) == 0  # the state is there: it continues, it does not start over
    assert "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--macs-ratio", "0.5"], "--macs-ratio applies with --channels"),
    (["--channels", "--sparsity", "0.5"], "--sparsity applies to weight masks"),
    (["--prune-out", "x.pt"], "--prune-out needs a target"),
    (["--curves", "c.json", "--recalibrate-bn", "2"], "--recalibrate-bn applies to a scan"),
])
def test_sensitivity_usage_errors(trained: Path, tmp_path: Path, capsys, argv, match) -> None:
    assert main(["sensitivity", "--checkpoint", str(trained), "--out", str(tmp_path / "s.json"), *argv]) == 2
    assert match in capsys.readouterr().err


def test_amc_search_writes_a_checkpoint_within_the_budget(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from prunekit.data.choose import example_input_for
    from prunekit.metrics import count_macs

    out = tmp_path / "a.pt"
    assert main(["search", "--method", "amc", "--checkpoint", str(trained), "--val-images", "100", "--macs-ratio",
                 "0.6", "--episodes", "4", "--warmup", "2", "--out", str(out), "--threads", "1"]) == 0
    small, ckpt = checkpoint.build(out)
    dense, _ = checkpoint.build(trained)
    x = example_input_for("digits")
    assert ckpt.plan is not None and count_macs(small, x) <= 0.61 * count_macs(dense, x)
    assert json.loads((tmp_path / "a.pt.json").read_text())["ratios"]
