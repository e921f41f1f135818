"""The training engine: determinism, evaluate's bookkeeping, atomic checkpoints, step hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import CheckpointError, ConfigError
from prunekit.train import TrainConfig, evaluate, fit, load_checkpoint, save_checkpoint
from prunekit.train.engine import lr_at


def toy_data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)  # (N, 1, 4, 4)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()  # 4 learnable classes
    return TensorDataset(x, y)


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4))


def loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    data = toy_data()
    train = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(data, batch_size=32)


CFG = TrainConfig(epochs=2, lr=0.05, progress=False, seed=123)


def test_seeding_gives_identical_runs() -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = toy_model()
        train, test = loaders()
        torch.manual_seed(999)  # fit must not depend on the RNG state it is called with
        history = fit(model, train, test, CFG)
        runs.append((model.state_dict(), [r.train_loss for r in history]))
    (sd_a, loss_a), (sd_b, loss_b) = runs
    assert loss_a == loss_b
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_different_seed_differs() -> None:
    results = []
    for seed in (1, 2):
        model = toy_model()
        train, test = loaders()
        fit(model, train, test, TrainConfig(epochs=1, lr=0.05, progress=False, seed=seed))
        results.append(model.state_dict())
    assert any(not torch.equal(results[0][k], results[1][k]) for k in results[0] if results[0][k].is_floating_point())


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_restores_mode(training: bool) -> None:
    model = toy_model().train(training)
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    evaluate(model, loaders()[1])
    assert modes and not any(modes)  # evaluated in eval mode
    assert model.training is training and model[1].training is training


def test_evaluate_restores_mode_after_error() -> None:
    model = toy_model().train()
    bad = DataLoader(TensorDataset(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(RuntimeError):
        evaluate(model, bad)  # 3 input channels into a 1-channel conv
    assert model.training


class FixedLogits(nn.Module):
    """Returns the logits stored for each input index (inputs are the indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]


def test_top1_top5_hand_built() -> None:
    # 7 classes; scores 0..6 so class 6 is top-1 and classes 2..6 are the top-5.
    base = torch.arange(7.0)
    logits = torch.stack([base, base, base, base.flip(0)])  # last row: class 0 is top-1
    labels = torch.tensor([6, 3, 1, 0])  # top-1 hit, top-5 hit, miss, top-1 hit
    model = FixedLogits(logits)
    loader = DataLoader(TensorDataset(torch.arange(4), labels), batch_size=3)  # uneven batches
    res = evaluate(model, loader)
    assert res.samples == 4
    assert res.top1 == pytest.approx(2 / 4) and res.top5 == pytest.approx(3 / 4)
    expected_loss = nn.functional.cross_entropy(logits, labels).item()
    assert res.loss == pytest.approx(expected_loss, rel=1e-6)


def test_evaluate_parameterless_model() -> None:
    res = evaluate(nn.Flatten(), DataLoader(TensorDataset(torch.eye(3), torch.arange(3)), batch_size=2))
    assert res.top1 == 1.0 and res.samples == 3


def test_evaluate_max_batches_and_empty() -> None:
    assert evaluate(toy_model(), loaders()[1], max_batches=1).samples == 32
    empty = DataLoader(TensorDataset(torch.randn(0, 1, 4, 4), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ConfigError, match="empty"):
        evaluate(toy_model(), empty)


def test_after_step_called_once_per_step() -> None:
    train, test = loaders()  # 96 samples / 16 = 6 steps per epoch
    calls: list[int] = []
    fit(toy_model(), train, test, CFG, after_step=lambda m, step: calls.append(step))
    assert calls == list(range(1, 13))


def test_after_step_respects_max_steps() -> None:
    train, test = loaders()
    calls: list[int] = []
    cfg = TrainConfig(epochs=3, lr=0.05, progress=False, max_steps_per_epoch=2)
    fit(toy_model(), train, test, cfg, after_step=lambda m, step: calls.append(step))
    assert calls == [1, 2, 3, 4, 5, 6]


def test_after_step_sees_updated_weights_and_can_mask() -> None:
    """A hook that zeroes a weight after each step keeps it zero through training."""
    model = toy_model()
    train, test = loaders()

    def mask(m: nn.Module, step: int) -> None:
        with torch.no_grad():
            m[4].weight[:, :10] = 0

    fit(model, train, test, CFG, after_step=mask)
    assert torch.count_nonzero(model[4].weight[:, :10]) == 0 and torch.count_nonzero(model[4].weight) > 0


def test_training_learns_and_schedules() -> None:
    model = toy_model()
    train, test = loaders()
    before = evaluate(model, test).loss
    history = fit(model, train, test, TrainConfig(epochs=4, lr=0.05, progress=False, optimizer="adamw"))
    assert history[-1].test.loss < before
    cfg = TrainConfig(lr=1.0, schedule="step", step_milestones=(0.5,), step_gamma=0.1)
    assert [lr_at(s, 10, cfg) for s in (0, 4, 5, 9)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    cos = TrainConfig(lr=1.0, schedule="cosine")
    assert lr_at(0, 10, cos) == 1.0 and lr_at(5, 10, cos) == pytest.approx(0.5) and lr_at(10, 10, cos) == 0.0


def test_channels_last_and_label_smoothing_run() -> None:
    model = toy_model()
    train, test = loaders()
    cfg = TrainConfig(epochs=1, lr=0.05, progress=False, channels_last=True, label_smoothing=0.1)
    history = fit(model, train, test, cfg)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(history[0].train_loss)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"optimizer": "adam"}, "unknown optimizer"),
        ({"schedule": "linear"}, "unknown schedule"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"epochs": -1}, "epochs"),
        ({"max_steps_per_epoch": 0}, "max_steps_per_epoch"),
    ],
)
def test_bad_config(kwargs, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_killed_save_leaves_nothing(tmp_path, monkeypatch, exc_type) -> None:
    def half_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise exc_type("killed mid-save")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(exc_type, match="killed"):
        save_checkpoint(tmp_path / "model.pt", toy_model(), "toy")
    assert list(tmp_path.iterdir()) == []


def test_killed_save_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, toy_model(), "toy", metadata={"round": 1})

    def half_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, toy_model(), "toy", metadata={"round": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert load_checkpoint(path)["metadata"] == {"round": 1}


def test_load_checkpoint_errors_name_path(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
