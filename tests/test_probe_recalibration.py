"""Probe(recalibrate=...): variants scored with fresh BatchNorm statistics (adaptive BN, EagleEye),
exactly what re-estimating the downstream BatchNorm layers by hand and a full forward give."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit import Element, Magnitude, select
from prunekit.errors import ConfigError
from prunekit.parallel import POOLS
from prunekit.probe import Probe
from prunekit.search.channels import scan_channels
from prunekit.sensitivity import scan
from prunekit.train.bn import batchnorms, estimating

REPO = Path(__file__).resolve().parents[1]


def _data(n: int, batch: int = 32, seed: int = 1, shift: float = 0.0) -> list:
    """Inputs labelled by the dense net's own predictions: it scores 1.0, and any change shows."""
    g = torch.Generator().manual_seed(seed)
    net = _net()
    with torch.no_grad():
        return [(x, net(x).argmax(1)) for x in (torch.randn(batch, 3, 8, 8, generator=g) + shift for _ in range(n))]


def _net() -> nn.Sequential:
    """Three conv-BN-ReLU stages and a linear head over every position (no global pooling, so the
    prediction depends on the input), with random BatchNorm statistics and affine terms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _by_hand(model: nn.Module, changed: str, recal: list, batches: list) -> float:
    """Top-1 of a copy of ``model`` after re-estimating the BatchNorm layers that run at or after
    ``changed`` (in these nets exactly the ones downstream of it), by full forwards."""
    m = copy.deepcopy(model).eval()
    order: list[str] = []
    handles = [mod.register_forward_hook(lambda *a, n=name: order.append(n)) for name, mod in m.named_modules()
               if name and not list(mod.children())]
    with torch.no_grad():
        m(recal[0][0])
    for h in handles:
        h.remove()
    after = order[order.index(changed):]
    mods = dict(m.named_modules())
    layers = [mods[n] for n in after if isinstance(mods[n], nn.BatchNorm2d)]
    correct = total = 0
    with torch.no_grad():
        with estimating(layers):
            for x, _ in recal:
                m(x)
        for x, y in batches:
            correct += int((m(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _masked(model: nn.Module, name: str, density: float):
    """A variant: ``name``'s weight with a fixed random ``density`` of its entries kept."""
    @contextlib.contextmanager
    def variant():
        w = dict(model.named_modules())[name].weight
        saved = w.detach().clone()
        keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) < density
        with torch.no_grad():
            w.mul_(keep)
        try:
            yield model
        finally:
            with torch.no_grad():
                w.copy_(saved)
    return variant


@pytest.mark.parametrize("changed", ["0", "3", "6"])
def test_sweep_equals_recalibrating_the_downstream_batchnorms_by_hand(changed: str) -> None:
    model = _net()
    batches, recal = _data(3), _data(4, seed=5, shift=0.7)
    before = _state(model)
    probe = Probe(model, batches, cache_mb=0.05, recalibrate=recal)  # a tiny cache: several chunks
    assert probe.reuse, probe.reason
    densities = (1.0, 0.5, 0.1)
    fast = probe.sweep(model, [changed], [_masked(model, changed, d) for d in densities])
    expected = []
    for d in densities:
        with _masked(model, changed, d)():
            expected.append(_by_hand(model, changed, recal, batches))
    assert fast == expected
    assert len(set(fast)) > 1
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # statistics and weights back bit-exactly
    assert not model.training and not any(m.training for m in model.modules())


def test_calling_the_probe_recalibrates_every_batchnorm_and_restores_them() -> None:
    model = _net()
    batches, recal = _data(2), _data(3, seed=5, shift=0.7)
    model[4].train()  # a mixed train/eval state must come back as it was
    before = _state(model)
    score = Probe(model, batches, recalibrate=recal)(model)
    assert score == _by_hand(model, "0", recal, batches)  # layer 0 runs first: every BN re-estimated
    assert score != Probe(model, batches)(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model[4].training and not model.training and not model[1].training
    assert all(bn.momentum == 0.1 for bn in batchnorms(model))


def test_first_layer_scan_equals_the_full_forward_path_and_differs_from_stale_statistics() -> None:
    """Pruning the stem changes everything after it, so the suffix path must score what a full
    recalibration and forward score; and the recalibrated curve is not the stale one."""
    model = _net()
    batches, recal = _data(2), _data(3, seed=5, shift=0.7)
    targets = select(model)[:1]
    probe = Probe(model, batches, recalibrate=recal)
    fast = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.5, 0.9))
    slow = scan(model, targets, Magnitude(), Element(), probe.__call__, ratios=(0.5, 0.9))
    stale = scan(model, targets, Magnitude(), Element(), Probe(model, batches), ratios=(0.5, 0.9))
    assert fast.values == slow.values and fast.baseline == slow.baseline
    assert fast.values != stale.values


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("kind", ["masks", "channels"])
def test_workers_recalibrate_as_the_main_process_does(kind: str, pool: str) -> None:
    if pool == "ray":
        pytest.importorskip("ray", reason='the "ray" pool needs pip install "prunekit[ray]"')
    model = _net()
    batches, recal = _data(2), _data(2, seed=5, shift=0.7)
    probe = Probe(model, batches, recalibrate=recal)
    if kind == "masks":
        targets = select(model)[:3]
        here = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.5, 0.9))
        there = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.5, 0.9), workers=2, pool=pool)
        plain = scan(model, targets, Magnitude(), Element(), Probe(model, batches), ratios=(0.5, 0.9))
    else:
        x = batches[0][0][:2]
        here = scan_channels(model, x, probe, ratios=(0.5,))
        there = scan_channels(model, x, probe, ratios=(0.5,), workers=2, pool=pool)
        plain = scan_channels(model, x, Probe(model, batches), ratios=(0.5,))
    assert there.values == here.values
    assert here.values != plain.values  # the workers did recalibrate


def test_a_scan_state_is_not_resumed_with_other_recalibration(tmp_path: Path) -> None:
    model = _net()
    batches = _data(1)
    targets = select(model)[:2]
    state = tmp_path / "scan.json"
    scan(model, targets, Magnitude(), Element(), Probe(model, batches), ratios=(0.5,), state_path=state)
    with pytest.raises(ConfigError, match="data differs"):
        scan(model, targets, Magnitude(), Element(), Probe(model, batches, recalibrate=_data(1, seed=5)),
             ratios=(0.5,), state_path=state)


def test_clear_errors() -> None:
    model = _net()
    batches = _data(1)
    with pytest.raises(ConfigError, match="recalibrate= with no batches"):
        Probe(model, batches, recalibrate=[])
    with pytest.raises(ConfigError, match="no BatchNorm.*drop recalibrate="):
        no_bn = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        Probe(no_bn, batches, recalibrate=batches)
    with pytest.raises(ConfigError, match="input tensors or \\(inputs, labels\\) pairs"):
        Probe(model, batches, recalibrate=[{"x": torch.zeros(1)}])
    bare = Probe(model, batches, recalibrate=[x for x, _ in _data(1, seed=5)])  # bare input tensors are fine
    assert bare.recalibrate is not None and len(bare.recalibrate) == 1


def test_on_the_pretrained_resnet20_it_is_exact_and_keeps_a_pruned_layer_usable(cifar_npz) -> None:
    """The behaviour it exists for, on the real checkpoint and data: a middle block's conv at 90 %
    (fixed random mask) scores far lower with the dense model's statistics than with re-estimated
    ones, and the residual network's suffix path scores exactly what the hand computation does."""
    from prunekit.checkpoint import build
    from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders

    train, test = cifar10_loaders(cifar_npz, 100, IMAGENET_MEAN, IMAGENET_STD, limit=500)
    model, _ = build(REPO / "checkpoints" / "resnet20_cifar10jpeg.pt")
    model.eval()
    test = list(test)
    recal = [b for _, b in zip(range(5), train)]
    name = "layer2.0.conv2"
    variants = [_masked(model, name, d) for d in (1.0, 0.1)]
    stale = Probe(model, test).sweep(model, [name], variants)
    fresh = Probe(model, test, recalibrate=recal).sweep(model, [name], variants)
    with variants[1]():
        assert fresh[1] == _by_hand(model, name, recal, test)
    assert fresh[1] > stale[1] + 0.1, (stale, fresh)
