"""Resumable training (bit-identical resume), divergence detection, pluggable tasks, no hidden reseeding."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import math
import random
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunekit.errors import CheckpointError, ConfigError, PrunekitError
from prunekit.train import (
    Classification,
    EvalResult,
    StopTraining,
    TrainConfig,
    TrainingDiverged,
    TrainState,
    evaluate,
    fit,
    seed_everything,
)

CFG = TrainConfig(epochs=3, lr=0.05, progress=False)  # seed=None: the tests seed (or scramble) themselves
STEPS_PER_EPOCH = 6  # 96 samples / batch 16


class NoisyData(Dataset):
    """Augmentation that draws from torch, NumPy and python ``random`` on every item."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)  # (N, 8)
        self.y = (self.x[:, :4].sum(1) > 0).long() + 2 * (self.x[:, 4] > 0).long()  # 4 classes

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.1 * torch.randn(8) + 0.01 * float(np.random.rand()) + 0.01 * random.random()
        return self.x[i] + noise, self.y[i]


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))


def make_loaders(with_generator: bool) -> tuple[DataLoader, DataLoader]:
    gen = torch.Generator().manual_seed(3) if with_generator else None
    train = DataLoader(NoisyData(), batch_size=16, shuffle=True, generator=gen)
    return train, DataLoader(NoisyData(48), batch_size=32)  # the test split draws noise too


class FakePruner:
    """Every 3rd step masks the smallest surviving weight of the first layer; state = counter + mask."""

    def __init__(self, model: nn.Sequential) -> None:
        self.layer = model[0]
        self.steps = 0
        self.mask = torch.ones_like(self.layer.weight, dtype=torch.bool)

    def step(self) -> None:
        self.steps += 1
        if self.steps % 3 == 0:
            scores = self.layer.weight.detach().abs().masked_fill(~self.mask, math.inf)
            self.mask.view(-1)[scores.view(-1).argmin()] = False
        with torch.no_grad():
            self.layer.weight.mul_(self.mask)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "mask": self.mask.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.steps = int(d["steps"])
        self.mask = d["mask"].clone()


def run(
    with_generator: bool,
    *,
    stop_step: int | None = None,
    stop_epoch: int | None = None,
    resume_from: dict | None = None,
    make_scheduler: Callable | None = None,
    with_pruner: bool = False,
):
    """One training run from the same init; optionally stopped, optionally resumed from a saved dict."""
    model = make_model()
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
    train, test = make_loaders(with_generator)
    optimizer = scheduler = None
    if make_scheduler is not None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = make_scheduler(optimizer)
    pruner = FakePruner(model) if with_pruner else None
    if resume_from is None:
        state = TrainState()
        seed_everything(1)
    else:
        state = TrainState.from_state_dict(resume_from["state"])
        seed_everything(999)  # scrambled: the resumed run must restore every RNG itself

    def on_step(s: TrainState) -> None:
        if s.step == stop_step:
            raise StopTraining

    def on_epoch(record) -> None:
        if record.epoch == stop_epoch:
            raise StopTraining

    history = fit(
        model, train, test, CFG, on_epoch=on_epoch,
        optimizer=optimizer, scheduler=scheduler, pruner=pruner, state=state, on_step=on_step,
    )  # fmt: skip
    return model, state, history, pruner


def save_and_load(tmp_path, model: nn.Module, state: TrainState) -> dict:
    path = tmp_path / "interrupted.pt"
    torch.save({"model": model.state_dict(), "state": state.state_dict()}, path)
    return torch.load(path, weights_only=True)


def assert_same_run(a, b) -> None:
    (model_a, _, hist_a, _), (model_b, _, hist_b, _) = a, b
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    strip = [[(r.epoch, r.train_loss, r.test, r.lr) for r in h] for h in (hist_a, hist_b)]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("with_generator", [True, False])
@pytest.mark.parametrize(
    "stop,where",  # where = (epochs done, global step, steps into the epoch, history length)
    [
        (("step", 7), (1, 7, 1, 1)),  # mid-epoch
        (("step", 3), (0, 3, 3, 0)),
        (("step", 6), (0, 6, 6, 0)),  # last step of epoch 1, before its evaluation
        (("epoch", 1), (1, 6, 0, 1)),  # epoch boundary, after on_epoch
        (("step", 18), (2, 18, 6, 2)),  # the very last step
    ],
)
def test_resume_is_bit_identical(tmp_path, with_generator: bool, stop: tuple[str, int], where: tuple) -> None:
    full = run(with_generator)
    assert len(full[2]) == 3 and (full[1].epoch, full[1].step, full[1].epoch_step) == (3, 18, 0)
    kind, at = stop
    model, state, history, _ = run(with_generator, **{f"stop_{kind}": at})
    assert (state.epoch, state.step, state.epoch_step, len(history)) == where
    resumed = run(with_generator, resume_from=save_and_load(tmp_path, model, state))
    assert_same_run(full, resumed)
    assert (resumed[1].epoch, resumed[1].step, resumed[1].epoch_step) == (3, 18, 0)


def test_stop_mid_epoch_state_fields() -> None:
    _, state, history, _ = run(True, stop_step=7)
    assert (state.epoch, state.step, state.epoch_step, len(history)) == (1, 7, 1, 1)
    assert state.rng["current"] is not None and state.rng["epoch_start"]["generators"]
    assert state.optimizer["state"]  # SGD momentum buffers
    assert state.history == [history[0].as_dict()]
    _, state, history, _ = run(True, stop_step=6)  # last step of epoch 1, not yet evaluated
    assert (state.epoch, state.step, state.epoch_step, len(history)) == (0, 6, 6, 0)


@pytest.mark.parametrize("with_generator", [True, False])
def test_resume_with_torch_scheduler(tmp_path, with_generator: bool) -> None:
    def make(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)

    full = run(with_generator, make_scheduler=make)
    assert full[2][0].lr == 0.05 and full[2][1].lr == pytest.approx(
        0.05 * 0.5
    )  # steps 0 and 6: scheduler's lr
    model, state, _, _ = run(with_generator, make_scheduler=make, stop_step=9)
    assert state.scheduler["last_epoch"] == 9
    loaded = save_and_load(tmp_path, model, state)
    with pytest.raises(ConfigError, match="scheduler"):  # the state needs its scheduler back
        run(with_generator, resume_from=loaded)
    resumed = run(with_generator, make_scheduler=make, resume_from=loaded)
    assert_same_run(full, resumed)


@pytest.mark.parametrize("stop_step", [5, 12])
def test_resume_with_pruner(tmp_path, stop_step: int) -> None:
    full = run(True, with_pruner=True)
    assert full[3].steps == 18 and int((~full[3].mask).sum()) == 6
    model, state, _, pruner = run(True, with_pruner=True, stop_step=stop_step)
    assert state.pruner["steps"] == stop_step == pruner.steps
    loaded = save_and_load(tmp_path, model, state)
    with pytest.raises(ConfigError, match="pruner"):
        run(True, resume_from=loaded)
    resumed = run(True, with_pruner=True, resume_from=loaded)
    assert_same_run(full, resumed)
    assert resumed[3].steps == 18 and torch.equal(resumed[3].mask, full[3].mask)


def test_resume_checks_loader_and_finished_state(tmp_path) -> None:
    model, state, _, _ = run(True, stop_step=7)
    small = DataLoader(NoisyData(64), batch_size=16, shuffle=True, generator=torch.Generator())
    with pytest.raises(CheckpointError, match="steps per epoch"):
        fit(make_model(), small, None, CFG, state=TrainState.from_state_dict(state.state_dict()))
    no_gen = DataLoader(NoisyData(), batch_size=16, shuffle=True)
    with pytest.raises(CheckpointError, match="generator"):
        fit(make_model(), no_gen, None, CFG, state=TrainState.from_state_dict(state.state_dict()))
    full_model, done, history, _ = run(True)
    before = {k: v.clone() for k, v in full_model.state_dict().items()}
    again = fit(full_model, make_loaders(True)[0], None, CFG, state=done)  # nothing left to do
    assert again == history and all(torch.equal(before[k], v) for k, v in full_model.state_dict().items())


def test_state_dict_round_trips_weights_only(tmp_path) -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    _, state, _, _ = run(True, stop_step=8, with_pruner=True)
    sd = state.state_dict()
    torch.save(sd, tmp_path / "s.pt")
    back = TrainState.from_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (back.epoch, back.step, back.epoch_step, back.history) == (
        state.epoch,
        state.step,
        state.epoch_step,
        state.history,
    )
    assert back.epoch_loss_sum == state.epoch_loss_sum and back.epoch_lr == state.epoch_lr
    # The saved RNG states reproduce the same draws after restoring them.
    from prunekit.train.state import restore_rng

    restore_rng(back.rng["current"])
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng(state.rng["current"])
    assert a == (random.random(), float(np.random.rand()), float(torch.rand(())))
    with pytest.raises(CheckpointError, match="not a training state"):
        TrainState.from_state_dict({"epoch": 1})


def test_callbacks_order_and_state() -> None:
    events: list[tuple] = []

    class Sched:
        def step(self) -> None:
            events.append(("sched",))

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, d: dict) -> None:
            pass

    class Pruner(Sched):
        def step(self) -> None:
            events.append(("pruner",))

    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    cfg = dataclasses.replace(CFG, epochs=2, max_steps_per_epoch=2)
    history = fit(
        model, make_loaders(True)[0], None, cfg, after_step=lambda m, s: events.append(("after", s)),
        on_epoch=lambda r: events.append(("epoch", r.epoch)), optimizer=optimizer, scheduler=Sched(),
        pruner=Pruner(), on_step=lambda st: events.append(("on_step", st.step, st.epoch_step)),
        on_epoch_state=lambda r, st: events.append(("epoch_state", r.epoch, st.epoch, st.step)),
    )  # fmt: skip
    assert len(history) == 2 and math.isnan(history[0].test.top1)
    per_step = lambda s, e: [("sched",), ("pruner",), ("after", s), ("on_step", s, e)]  # noqa: E731
    assert events == [
        *per_step(1, 1), *per_step(2, 2), ("epoch", 1), ("epoch_state", 1, 1, 2),
        *per_step(3, 1), *per_step(4, 2), ("epoch", 2), ("epoch_state", 2, 2, 4),
    ]  # fmt: skip


def test_stop_from_on_epoch_state_and_after_step() -> None:
    def stop(*args) -> None:
        raise StopTraining

    model = make_model()
    train, test = make_loaders(True)
    assert [r.epoch for r in fit(model, train, test, CFG, on_epoch_state=stop)] == [1]
    state = TrainState()
    assert fit(make_model(), train, test, CFG, after_step=stop, state=state) == []
    assert (state.step, state.epoch_step) == (1, 1) and state.rng["current"] is not None


# ------------------------------------------------------------------------------ config & divergence


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"lr": float("nan")}, "lr must be > 0 and finite, got nan"),
        ({"lr": float("inf")}, "lr must be > 0 and finite, got inf"),
        ({"lr": -0.1}, "lr must be > 0"),
        ({"momentum": float("nan")}, "momentum .* got nan"),
        ({"weight_decay": float("inf")}, "weight_decay .* got inf"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"step_gamma": float("nan")}, "step_gamma"),
    ],
)
def test_non_finite_config_refused(kwargs, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**kwargs)


def test_huge_lr_raises_before_the_bad_update() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    data = NoisyData()
    train = DataLoader(TensorDataset(data.x, data.y), batch_size=16)
    snapshots: list[dict] = []

    def snapshot(m: nn.Module, step: int) -> None:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})

    cfg = TrainConfig(epochs=50, lr=1e6, momentum=0.0, weight_decay=0.0, schedule="constant", progress=False)
    with pytest.raises(
        TrainingDiverged, match=r"global step \d+ \(epoch \d+.*Lower the learning rate"
    ) as info:
        fit(model, train, None, cfg, after_step=snapshot, state=(state := TrainState()))
    err = info.value
    assert state.step == err.step - 1 and state.optimizer is not None  # the last good step
    assert isinstance(err, PrunekitError) and err.step == len(snapshots) + 1 >= 2
    assert f"global step {err.step} " in str(err) and f"epoch {err.epoch}" in str(err) and "1e+06" in str(err)
    assert not math.isfinite(err.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.equal(v, snapshots[-1][k]) for k, v in model.state_dict().items())  # last good weights


def test_nan_input_diverges_at_step_one_without_update() -> None:
    x = torch.randn(32, 8)
    x[20, 3] = math.nan
    model = make_model()
    before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k
    }
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=32)
    with pytest.raises(
        TrainingDiverged, match=r"global step 1 \(epoch 1, step 1 of the epoch\): the loss is nan"
    ):
        fit(model, loader, None, CFG)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_train_epoch_still_public() -> None:
    from prunekit.train import make_optimizer, train_epoch

    model = make_model()
    cfg = dataclasses.replace(CFG, max_steps_per_epoch=4)
    loss, step = train_epoch(model, make_loaders(True)[0], make_optimizer(model, cfg), cfg, 10, 20)
    assert step == 14 and math.isfinite(loss) and loss > 0


# ---------------------------------------------------------------------------------------- tasks


class DictData(Dataset):
    def __init__(self) -> None:
        self.base = NoisyData()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.base.x[i], "labels": self.base.y[i]}


class KwModel(nn.Module):
    """A Hugging Face-like model: keyword inputs, output object with ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 4)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.net(features), loss=None)


def test_mapping_batches_train_and_evaluate() -> None:
    torch.manual_seed(0)
    model = KwModel()
    loader = DataLoader(DictData(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    before = evaluate(model, loader).loss
    history = fit(model, loader, loader, TrainConfig(epochs=3, lr=0.1, progress=False))
    assert history[-1].test.loss < before and history[-1].test.samples == 96


def test_batch_encoding_and_logits_mapping() -> None:
    transformers = pytest.importorskip("transformers")

    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 4)

        def forward(self, features: torch.Tensor, labels: torch.Tensor) -> dict:
            return {"logits": self.net(features)}

    data = NoisyData()
    batches = [
        transformers.BatchEncoding({"features": data.x[i : i + 32], "labels": data.y[i : i + 32]})
        for i in (0, 32, 64)
    ]
    model = DictOut()
    history = fit(model, batches, batches, TrainConfig(epochs=2, lr=0.1, progress=False))
    assert history[-1].test.samples == 96 and math.isfinite(history[-1].train_loss)


def test_token_logits_skip_ignored_labels() -> None:
    logits = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]])  # (B=1, T=3, C=2)
    labels = torch.tensor([[0, 0, -100]])  # hit, miss, ignored
    res = Classification().evaluate(nn.Identity(), [(logits, labels)])
    assert res.samples == 2 and res.top1 == 0.5
    assert res.loss == pytest.approx(nn.functional.cross_entropy(logits.view(-1, 2), labels.view(-1)).item())


def test_custom_loss_fn_and_custom_task() -> None:
    calls: list[int] = []

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(y))
        return nn.functional.cross_entropy(logits, y)

    train, test = make_loaders(True)
    fit(make_model(), train, test, dataclasses.replace(CFG, epochs=1), task=Classification(loss_fn=loss_fn))
    assert calls[:6] == [16] * 6 and len(calls) == 6 + 2  # 6 training steps, 2 evaluation batches

    @dataclasses.dataclass
    class Regression:
        def loss(self, model: nn.Module, batch) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(model(x).squeeze(1), y)

        def evaluate(self, model: nn.Module, loader, max_batches=None) -> EvalResult:
            with torch.no_grad():
                errs = [nn.functional.mse_loss(model(x).squeeze(1), y, reduction="sum") for x, y in loader]
            n = sum(len(y) for _, y in loader)
            return EvalResult(math.nan, math.nan, float(sum(errs)) / n, n)

    x = torch.randn(64, 3)
    reg = DataLoader(TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5])), batch_size=16)
    torch.manual_seed(0)
    history = fit(
        nn.Linear(3, 1), reg, reg, TrainConfig(epochs=20, lr=0.1, progress=False), task=Regression()
    )
    assert history[-1].test.loss < 1e-2 < history[0].test.loss


def test_task_and_batch_errors() -> None:
    train, _ = make_loaders(True)
    with pytest.raises(ConfigError, match="label_smoothing applies to the default task"):
        fit(make_model(), train, None, dataclasses.replace(CFG, label_smoothing=0.1), task=Classification())
    with pytest.raises(ConfigError, match="not both"):
        Classification(label_smoothing=0.1, loss_fn=nn.functional.cross_entropy)
    with pytest.raises(ConfigError, match="needs loss"):
        fit(make_model(), train, None, CFG, task=object())
    triples = DataLoader(
        TensorDataset(torch.randn(8, 8), torch.zeros(8).long(), torch.zeros(8)), batch_size=4
    )
    with pytest.raises(ConfigError, match=r"\(inputs, targets\) pair or a mapping.*length 3"):
        fit(make_model(), triples, None, CFG)
    with pytest.raises(ConfigError, match="no 'labels'"):
        evaluate(KwModel(), [{"features": torch.randn(2, 8)}])
    with pytest.raises(ConfigError, match="logits"):
        evaluate(nn.Sequential(), [({"a": torch.zeros(1)}, torch.zeros(1).long())])
    with pytest.raises(ConfigError, match="optimizer it was built on"):
        fit(make_model(), train, None, CFG, scheduler=torch.optim.lr_scheduler.StepLR(
            torch.optim.SGD(make_model().parameters(), lr=0.1), 2))  # fmt: skip
    with pytest.raises(ConfigError, match="pruner .* lacks state_dict"):
        fit(make_model(), train, None, CFG, pruner=SimpleNamespace(step=lambda: None))


def test_injected_optimizer_follows_config_schedule() -> None:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=123.0)
    lrs: list[float] = []
    cfg = TrainConfig(epochs=1, lr=0.02, schedule="constant", progress=False)
    fit(
        model,
        make_loaders(True)[0],
        None,
        cfg,
        optimizer=optimizer,
        on_step=lambda s: lrs.append(optimizer.param_groups[0]["lr"]),
    )
    assert lrs == [0.02] * 6 and isinstance(optimizer, torch.optim.AdamW)


# -------------------------------------------------------------------------------------- seeding


def test_fit_does_not_reseed_unless_asked() -> None:
    loader = DataLoader(TensorDataset(torch.randn(32, 8), torch.zeros(32).long()), batch_size=16)
    random.seed(42)
    np.random.seed(42)
    py_before, np_before = random.getstate(), np.random.get_state()[1].copy()
    fit(nn.Linear(8, 4), loader, loader, TrainConfig(epochs=1, progress=False))
    assert random.getstate() == py_before and np.array_equal(np.random.get_state()[1], np_before)
    random.seed(3)
    expected = random.getstate()
    random.seed(42)
    fit(nn.Linear(8, 4), loader, loader, TrainConfig(epochs=1, progress=False, seed=3))
    assert random.getstate() == expected  # seeded: python random reset to seed 3 and not drawn from


def test_a_seeded_fit_leaves_the_loaders_own_generator_and_reseeding_it_pairs_two_runs() -> None:
    """cfg.seed reseeds the global RNGs, not a generator the loader was built with (fit's docstring):
    two seeded fits over one loader see different data orders until the caller reseeds it."""
    from prunekit.train.state import loader_generators

    cfg = dataclasses.replace(CFG, epochs=1, seed=0)

    def run(loader: DataLoader) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        model = make_model()
        model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()) if _m.training else None)
        fit(model, loader, None, cfg)
        return seen

    train, _ = make_loaders(with_generator=True)
    first, second = run(train), run(train)
    assert len(first) == len(second) == STEPS_PER_EPOCH
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # the shuffle ran on
    for g in loader_generators(train):
        g.manual_seed(3)
    again = run(train)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # same order and, seeded, same augmentation


def test_cli_train_seed_defaults_to_zero() -> None:
    from prunekit.cli.main import build_parser
    from prunekit.cli.train_cmd import make_config

    args = build_parser().parse_args(["train", "--model", "digits_cnn", "--out", "x.pt"])
    assert make_config(args).seed == 0
    args = build_parser().parse_args(["train", "--model", "digits_cnn", "--out", "x.pt", "--seed", "7"])
    assert make_config(args).seed == 7


@pytest.mark.parametrize("module_name", ["prunekit.train.engine", "prunekit.train.state"])
def test_docstring_examples_run(module_name: str) -> None:
    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
