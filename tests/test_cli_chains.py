"""Every file a command writes is read by every command that takes a checkpoint, and the
stages hand off: prune -> train -> eval, prune --structured -> train -> eval, deploy -> eval,
prune -> prune --structured, an interrupted train resumed (offline digits data, a few seconds each)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.checkpoint import build, read
from prunekit.cli.main import main
from prunekit.metrics import count_params

BASE = ["--dataset", "digits", "--threads", "1"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain") / "dense.pt"
    assert main(["train", "--model", "digits_cnn", "--epochs", "2", "--lr", "0.05", *BASE, "--out", str(out)]) == 0
    return out


def _zeros(model: nn.Module) -> tuple[int, int]:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


def test_prune_train_eval_keeps_exact_sparsity(dense, tmp_path, capsys) -> None:
    p, t = tmp_path / "p.pt", tmp_path / "t.pt"
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.9", "--scope", "global", *BASE,
                 "--out", str(p)]) == 0
    assert main(["train", "--checkpoint", str(p), "--epochs", "1", "--lr", "0.05", *BASE, "--out", str(t)]) == 0
    out = capsys.readouterr().out
    assert "masks in force (90.0% sparse)" in out
    model, ckpt = build(t)
    zeros, total = _zeros(model)
    assert zeros == round(0.9 * total)  # exact after fine-tuning with momentum and weight decay
    assert ckpt.kind == "masked" and ckpt.masks.sparsity() == pytest.approx(0.9, abs=1e-4)
    assert all(torch.equal(m, model.get_submodule(n).weight != 0) for n, m in ckpt.masks.items() if "::" not in n)
    dense_w = build(dense)[0].state_dict()
    assert any(not torch.equal(v, dense_w[k]) for k, v in model.state_dict().items())  # it did train
    assert main(["eval", "--checkpoint", str(t), *BASE]) == 0
    assert main(["info", "--checkpoint", str(t)]) == 0


def test_prune_structured_train_eval_stays_small(dense, tmp_path, capsys) -> None:
    s, t = tmp_path / "s.pt", tmp_path / "t.pt"
    assert main(["prune", "--structured", "--checkpoint", str(dense), "--sparsity", "0.5", "--target", "macs",
                 *BASE, "--latency-repeats", "2", "--out", str(s)]) == 0
    assert main(["train", "--checkpoint", str(s), "--epochs", "1", "--lr", "0.01", *BASE, "--out", str(t)]) == 0
    assert "channel-pruned (plan kept)" in capsys.readouterr().out
    small, ckpt = build(t)
    assert ckpt.plan is not None and count_params(small) < count_params(build(dense)[0])
    assert main(["eval", "--checkpoint", str(t), *BASE]) == 0
    assert "top-1" in capsys.readouterr().out


def test_prune_with_finetune_is_one_command(dense, tmp_path) -> None:
    out = tmp_path / "ft.pt"
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.8", *BASE, "--finetune-epochs", "1",
                 "--out", str(out)]) == 0
    model, ckpt = build(out)
    zeros, total = _zeros(model)
    assert ckpt.masks is not None and zeros >= round(0.8 * total) - 4  # uniform: exact per layer
    assert len(ckpt.metadata["history"]) == 1 and ckpt.train_state is not None


def test_masks_then_structure_compose(dense, tmp_path) -> None:
    p, s = tmp_path / "p.pt", tmp_path / "s.pt"
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.5", *BASE, "--out", str(p)]) == 0
    assert main(["prune", "--structured", "--checkpoint", str(p), "--sparsity", "0.3", *BASE,
                 "--latency-repeats", "2", "--out", str(s)]) == 0
    small, ckpt = build(s)
    assert ckpt.plan is not None and ckpt.masks is not None and ckpt.kind == "channel-pruned + masked"
    for n, m in ckpt.masks.items():
        assert tuple(m.shape) == tuple(small.get_submodule(n).weight.shape)


def test_structure_twice_is_one_plan_history(dense, tmp_path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    common = ["--structured", "--sparsity", "0.3", *BASE, "--latency-repeats", "2"]
    assert main(["prune", "--checkpoint", str(dense), *common, "--out", str(a)]) == 0
    assert main(["prune", "--checkpoint", str(a), *common, "--out", str(b)]) == 0
    small, ckpt = build(b)
    assert len(ckpt.plan.steps) == 2 and count_params(small) < count_params(build(a)[0])


def test_deploy_out_is_read_by_every_command(dense, tmp_path, capsys) -> None:
    p, d = tmp_path / "p.pt", tmp_path / "d.pt"
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.9", *BASE, "--out", str(p)]) == 0
    assert main(["deploy", "--checkpoint", str(p), "--repeats", "2", "--candidates", "torch_csr", "--threads", "1",
                 "--out", str(d)]) == 0
    ckpt = read(d)
    assert ckpt.kind == "deployed" and ckpt.masks is not None
    for argv in (["eval", "--checkpoint", str(d), *BASE], ["info", "--checkpoint", str(d)],
                 ["train", "--checkpoint", str(d), "--epochs", "1", "--max-steps-per-epoch", "2", *BASE,
                  "--out", str(tmp_path / "t.pt")],
                 ["prune", "--checkpoint", str(d), "--sparsity", "0.95", *BASE, "--out", str(tmp_path / "q.pt")]):
        assert main(argv) == 0, argv
    capsys.readouterr()


def test_interrupted_train_resumes_to_the_same_weights(dense, tmp_path, monkeypatch) -> None:
    import prunekit.cli.train_cmd as train_cmd

    args = ["train", "--checkpoint", str(dense), "--epochs", "3", "--lr", "0.02", *BASE]
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    assert main([*args, "--out", str(full)]) == 0

    real = train_cmd.print_epoch

    def crash_after_two(record):
        real(record)
        if record.epoch == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2 was written

    monkeypatch.setattr(train_cmd, "print_epoch", crash_after_two)
    assert main([*args, "--out", str(cut)]) == 130  # Ctrl-C: one line, the last good epoch kept
    monkeypatch.undo()
    ckpt = read(cut)
    assert ckpt.train_state["epoch"] == 1  # epoch 2's file is written after its on_epoch: 1 done
    assert main(["train", "--checkpoint", str(cut), "--resume", *BASE, "--out", str(cut)]) == 0
    a, b = build(full)[0].state_dict(), build(cut)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["train", "--checkpoint", str(dense), "--resume", *BASE, "--out", str(cut)]) == 2  # finished run
