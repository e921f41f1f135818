"""The train / eval / demo commands through ``prunekit.cli.main.main`` (exit codes + output)."""

from __future__ import annotations

import re

import pytest
import torch

from prunekit.cli.main import build_parser, main
from prunekit.train import build_from_checkpoint, load_checkpoint


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    """One epoch of digits_cnn on digits, trained once for the module."""
    out = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    code = main(["train", "--model", "digits_cnn", "--dataset", "digits", "--epochs", "1",
                 "--lr", "0.05", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_train_writes_loadable_checkpoint(digits_ckpt) -> None:
    assert sorted(p.name for p in digits_ckpt.parent.iterdir()) == ["digits.pt"]  # no temp files left
    model, ckpt = build_from_checkpoint(digits_ckpt)
    assert ckpt["model_name"] == "digits_cnn"
    meta = ckpt["metadata"]
    assert meta["dataset"] == "digits" and meta["train"]["epochs"] == 1 and len(meta["history"]) == 1
    assert 0.5 < meta["top1"] <= 1.0  # one epoch already beats chance (0.1) by far
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_eval_reproduces_recorded_accuracy(digits_ckpt, capsys) -> None:
    assert main(["eval", "--checkpoint", str(digits_ckpt), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    top1 = load_checkpoint(digits_ckpt)["metadata"]["top1"]
    assert f"top-1 {100 * top1:.2f}%" in out and "digits_cnn on digits test (359 images)" in out


def test_train_from_checkpoint_keeps_weights(digits_ckpt, tmp_path, capsys) -> None:
    """Fine-tuning starts from the checkpoint's weights (the first epoch is already good)."""
    out = tmp_path / "ft.pt"
    args = ["train", "--checkpoint", str(digits_ckpt), "--epochs", "1", "--lr", "0.001",
            "--max-steps-per-epoch", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    before = load_checkpoint(digits_ckpt)["metadata"]["top1"]
    assert load_checkpoint(out)["metadata"]["top1"] > before - 0.05


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["train", "--model", "digits_cnn", "--dataset", "nope", "--out", "x.pt"], "invalid choice: 'nope'"),
        (["train", "--model", "digits_cnn", "--dataset", "digits"], "--out"),
        (["eval", "--dataset", "digits"], "give --model NAME"),
        (["eval", "--model", "digits_cnn", "--normalize", "imagenet"], "--normalize applies to cifar10 only"),
        (["eval", "--model", "digits_cnn", "--checkpoint", "a.pt", "--pretrained", "b.pt"], "not allowed with"),
        (["eval", "--model", "digits_cnn", "--batch-size", "0"], "positive integer"),
        (["demo", "--epochs", "zero"], "positive integer"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, pattern, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), err


def test_missing_checkpoint_exits_1_naming_path(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "model.pt"
    assert main(["eval", "--checkpoint", str(missing)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1


def test_unknown_model_exits_1_with_hint(capsys) -> None:
    assert main(["eval", "--model", "digit_cnn", "--dataset", "digits"]) == 1
    assert "did you mean: 'digits_cnn'" in capsys.readouterr().err


def test_model_dataset_mismatch_exits_1(tmp_path, capsys) -> None:
    assert main(["train", "--model", "digits_cnn", "--dataset", "mnist", "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert "does not accept mnist inputs (1, 28, 28)" in err and "--dataset digits" in err
    assert not list(tmp_path.iterdir())


def test_bad_lr_is_reported_before_loading(tmp_path, capsys) -> None:
    assert main(["train", "--model", "digits_cnn", "--lr", "-1", "--out", str(tmp_path / "x.pt")]) == 1
    assert "lr must be > 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_plain_state_dict_as_checkpoint_hints_pretrained(tmp_path, capsys) -> None:
    from prunekit.models import create

    plain = tmp_path / "plain.pt"
    torch.save(create("digits_cnn").state_dict(), plain)
    assert main(["eval", "--checkpoint", str(plain)]) == 1
    assert "--pretrained" in capsys.readouterr().err
    nested = tmp_path / "nested.pt"  # not a state dict itself: the message names what it holds instead
    torch.save({"w": create("digits_cnn").state_dict()}, nested)
    assert main(["eval", "--checkpoint", str(nested)]) == 1
    assert "a dict without a 'state_dict' entry (keys: 'w')" in capsys.readouterr().err


def test_pretrained_flag_loads_state_dict(tmp_path, digits_ckpt, capsys) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(digits_ckpt)["state_dict"], plain)
    args = ["eval", "--model", "digits_cnn", "--pretrained", str(plain), "--dataset", "digits", "--threads", "1"]
    assert main(args) == 0
    top1 = load_checkpoint(digits_ckpt)["metadata"]["top1"]
    assert f"top-1 {100 * top1:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_help_exits_0(command, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: prunekit " + command in capsys.readouterr().out


def test_help_of_every_registered_command() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name


def test_demo_runs_its_steps_and_prints_table(monkeypatch, tmp_path, capsys) -> None:
    from prunekit.cli import demo_cmd

    seen = []
    monkeypatch.setattr(demo_cmd, "STEPS", [*demo_cmd.STEPS, lambda state: seen.append(dict(state.results))])
    out = tmp_path / "demo.pt"
    assert main(["demo", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dense top-1" in text and "features.0" in text and "classifier" in text and "total" in text
    assert len(seen) == 1 and 0.0 < seen[0]["dense_top1"] <= 1.0
    assert load_checkpoint(out)["model_name"] == "digits_cnn"


def test_mnist_eval_on_real_data(data_root, capsys) -> None:
    mnist = data_root / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"{mnist} not found")
    assert main(["eval", "--model", "lenet300_100", "--data", str(mnist), "--limit", "64", "--threads", "1"]) == 0
    assert "lenet300_100 on mnist test (64 images)" in capsys.readouterr().out


def test_eval_rebuilds_structured_checkpoint(tmp_path, capsys) -> None:
    """A physically pruned checkpoint (plan + state_dict) loads through build_from_checkpoint / eval."""
    from prunekit.checkpoint import save_pruned
    from prunekit.models import create
    from prunekit.structure import prune_channels

    torch.manual_seed(0)
    small, plan, _ = prune_channels(create("digits_cnn"), torch.zeros(1, 1, 8, 8), 0.5, target="macs")
    path = save_pruned(tmp_path / "small.pt", "digits_cnn", {}, plan, small)
    again, _ = build_from_checkpoint(path)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(again.eval()(x), small.eval()(x))
    assert main(["eval", "--checkpoint", str(path), "--dataset", "digits"]) == 0
    assert "top-1" in capsys.readouterr().out
