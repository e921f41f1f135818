"""``prunekit info``: table and totals, checkpoints, input shapes, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunekit.cli.info_cmd import default_input_shape
from prunekit.cli.main import main
from prunekit.models import available, create
from prunekit.train import save_checkpoint


def run_info(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["info", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def totals(out: str) -> dict[str, str]:
    """The ``key: value`` lines after the table."""
    lines = [line for line in out.splitlines() if ":" in line and not line.startswith("model:")]
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


def test_resnet56_totals_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_info(capsys, "--model", "resnet56")
    assert code == 0, err
    t = totals(out)
    assert t["params"] == "853,018 (853.02K)"  # ~0.85M
    assert t["MACs"].startswith("125,485,696 (125.49M")  # ~126M
    assert t["nonzero MACs"].startswith("125,485,696 (125.49M")
    assert t["FLOPs"].startswith("252,830,986")
    assert t["size fp32"].startswith(f"{4 * (853_018 + 2 * 2032):,} bytes")  # + BN running stats
    assert "0.00% of conv/linear weights" in t["sparsity"]
    lines = out.splitlines()
    assert lines[0] == "model: resnet56   input: 1x3x32x32"
    assert lines[1].split() == ["name", "type", "weight", "shape", "params", "nonzeros", "sparsity", "MACs"]
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    assert conv1.split() == ["conv1", "Conv2d", "16x3x3x3", "432", "432", "0.00%", "442,368"]
    total = next(line for line in lines if line.startswith("total "))
    assert total.split()[1] == "853,018" and total.split()[-1] == "125,485,696"


def test_checkpoint_with_zeroed_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create("resnet20")
    with torch.no_grad():
        model.conv1.weight.zero_()  # 432 weights
    path = save_checkpoint(tmp_path / "r20.pt", model, "resnet20", {})
    code, out, err = run_info(capsys, "--checkpoint", str(path), "--totals-only")
    assert code == 0, err
    t = totals(out)
    conv_linear = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    assert f"{100 * 432 / conv_linear:.2f}% of conv/linear weights" in t["sparsity"]
    assert t["MACs"].startswith("40,551,040")  # zeros still count: dense MACs of the architecture
    assert t["nonzero MACs"].startswith(f"{40_551_040 - 442_368:,}")  # conv1 contributes none
    assert "conv1 " not in out  # --totals-only


def test_plain_state_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.th"
    model = create("resnet20")
    with torch.no_grad():
        model.linear.weight.zero_()
    torch.save({"state_dict": model.state_dict()}, path)
    code, out, err = run_info(capsys, "--model", "resnet20", "--pretrained", str(path), "--totals-only")
    assert code == 0, err
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_channels == 688
    assert totals(out)["nonzeros"].startswith(f"{269_722 - 640 - bn_channels:,}")  # fresh BN biases are 0
    code, _, err = run_info(capsys, "--checkpoint", str(path))
    assert code == 2 and "pass --model NAME" in err


def test_checkpoint_model_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path / "r20.pt", create("resnet20"), "resnet20", {})
    code, _, err = run_info(capsys, "--model", "resnet56", "--checkpoint", str(path))
    assert code == 2 and "holds a 'resnet20'" in err


def test_unknown_model_suggests_close_matches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_info(capsys, "--model", "resnt56")
    assert code == 1 and out == ""
    assert "unknown model 'resnt56'" in err and "'resnet56'" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_info(capsys, "--model", "resnet20", "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 1 and "not found" in err


def test_bad_and_wrong_input_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_info(capsys, "--model", "resnet20", "--input-shape", "1,3,x")
    assert code == 2 and "bad shape '1,3,x'" in err
    code, _, err = run_info(capsys, "--model", "resnet20", "--input-shape", "1,5,32,32")
    assert code == 1 and "fix --input-shape" in err and "5 channels" in err


def test_input_shape_option_scales_macs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_info(capsys, "--model", "resnet20", "--input-shape", "2,3,32,32", "--totals-only")
    assert code == 0, err
    assert totals(out)["MACs"].startswith(f"{2 * 40_551_040:,}")


def test_no_model_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_info(capsys)
    assert code == 2 and "give --model NAME" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--help"])
    assert exc.value.code == 0
    assert "--input-shape" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet5", (1, 1, 28, 28)), ("lenet300_100", (1, 1, 28, 28)), ("digits_cnn", (1, 1, 8, 8))],
)
def test_default_input_shape_runs(
    name: str, shape: tuple[int, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert default_input_shape(name) == shape
    if name not in available():
        pytest.skip(f"model {name!r} is not registered yet")
    code, out, err = run_info(capsys, "--model", name, "--totals-only")
    assert code == 0, err
    assert out.splitlines()[0] == f"model: {name}   input: {'x'.join(map(str, shape))}"
