"""Probe: a sensitivity scan that reuses the unchanged prefix scores exactly what full forwards score."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import Element, Magnitude, models, select
from prunekit.errors import ConfigError
from prunekit.parallel import POOLS
from prunekit.probe import Probe
from prunekit.search.channels import scan_channels
from prunekit.sensitivity import scan

# every model of the zoo with the input it takes (a new entry is tested by adding its shape here)
SHAPES = {"digits_cnn": (1, 8, 8), "lenet300_100": (1, 28, 28), "lenet5": (1, 28, 28)}
SLOW = {"resnet110", "resnet44", "resnet32", "vgg16_bn", "vgg19_bn"}  # deeper twins of tested models


def _data(shape: tuple[int, ...], classes: int = 10, n: int = 3, batch: int = 24) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _trained_like(model: nn.Module) -> nn.Module:
    """Random BN statistics so that pruning moves the top-1 (a freshly built net is nearly constant)."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", [n for n in models.available() if n not in SLOW])
def test_probe_scan_equals_full_forward_scan_on_every_zoo_model(name: str) -> None:
    torch.manual_seed(0)
    model = _trained_like(models.create(name))
    batches = _data(SHAPES.get(name, (3, 32, 32)))
    targets = select(model)
    targets = [targets[0], targets[len(targets) // 2], targets[-1]]  # first, middle, last layer
    probe = Probe(model, batches, cache_mb=0.05)  # a tiny cache: the frontier is flushed in several chunks
    assert probe.reuse, probe.reason
    fast = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.3, 0.6, 0.9))
    slow = scan(model, targets, Magnitude(), Element(), probe.__call__, ratios=(0.3, 0.6, 0.9))
    assert fast.values == slow.values and fast.baseline == slow.baseline
    assert len({v for row in fast.values.values() for v in row}) > 1  # the probes did see different models


def test_channel_scan_with_probe_equals_full_forwards() -> None:
    torch.manual_seed(0)
    model = _trained_like(models.create("resnet20"))
    batches = _data((3, 32, 32))
    x = batches[0][0][:2]
    probe = Probe(model, batches)
    fast = scan_channels(model, x, probe, ratios=(0.25, 0.75))
    slow = scan_channels(model, x, probe.__call__, ratios=(0.25, 0.75))
    assert fast.values == slow.values
    assert len(fast.values) == 10  # nine block interiors and the residual stream (changed from the stem on)
    assert len({v for row in fast.values.values() for v in row}) > 1


def test_probe_runs_only_the_suffix() -> None:
    """The unchanged prefix runs once per batch, not once per variant: count the first layer's calls."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    calls = {"first": 0}
    handle = model[0].register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    try:
        batches = _data((4,), classes=3, n=2)
        probe = Probe(model, batches)
        calls["first"] = 0
        scan(model, [t for t in select(model) if t.name == "4"], Magnitude(), Element(), probe,
             ratios=(0.2, 0.4, 0.6, 0.8))
        assert calls["first"] == 2 + 2  # the baseline (a full pass per batch) + the prefix once per batch
    finally:
        handle.remove()


def test_untraceable_model_falls_back_to_full_forwards() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) if float(x.sum()) > 0 else self.b(x)  # data-dependent control flow

    torch.manual_seed(0)
    model = Branchy().eval()
    batches = _data((4,), classes=3, n=2)
    probe = Probe(model, batches)
    assert not probe.reuse and "torch.fx" in probe.reason
    fast = scan(model, select(model), Magnitude(), Element(), probe, ratios=(0.5, 0.9))
    slow = scan(model, select(model), Magnitude(), Element(), probe.__call__, ratios=(0.5, 0.9))
    assert fast.values == slow.values


def test_probe_refuses_bad_batches() -> None:
    with pytest.raises(ConfigError, match="no batches"):
        Probe(nn.Linear(2, 2), [])
    with pytest.raises(ConfigError, match="tensor pairs"):
        Probe(nn.Linear(2, 2), [{"input_ids": torch.zeros(2, 2)}])
    with pytest.raises(ConfigError, match="cache_mb"):
        Probe(nn.Linear(2, 2), [(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))], cache_mb=0)


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("kind", ["masks", "channels"])
def test_parallel_pools_give_the_same_curves(kind: str, pool: str) -> None:
    if pool == "ray":
        pytest.importorskip("ray", reason='the "ray" pool needs pip install "prunekit[ray]"')
    torch.manual_seed(0)
    model = _trained_like(models.create("resnet20"))
    batches = _data((3, 32, 32), n=2, batch=16)
    probe = Probe(model, batches)
    if kind == "masks":
        targets = select(model)[:4]
        here = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.5, 0.9))
        there = scan(model, targets, Magnitude(), Element(), probe, ratios=(0.5, 0.9), workers=2, pool=pool)
    else:
        x = batches[0][0][:2]
        here = scan_channels(model, x, probe, ratios=(0.5,))
        there = scan_channels(model, x, probe, ratios=(0.5,), workers=2, pool=pool)
    assert there.values == here.values and there.names == here.names


def test_a_worker_masks_a_private_copy_not_the_tensors_it_was_sent(monkeypatch) -> None:
    """Workers get the model through torch's multiprocessing pickler, which moves its tensors into
    shared memory: a worker that masked them in place would corrupt every worker scanning at the
    same time (seen on ResNet-20 with 2 workers and 2,000 images before the fix)."""
    import prunekit.sensitivity as sens

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    for p in model.parameters():
        p.data.share_memory_()  # as a worker receives it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared = {p.data_ptr() for p in model.parameters()}
    seen = []
    real = sens._layer_row

    def spy(probe, m, *a):
        seen.append({p.data_ptr() for p in m.parameters()})
        return real(probe, m, *a)

    monkeypatch.setattr(sens, "_layer_row", spy)
    keeps = [torch.rand(3, 8) > 0.5]
    row = sens._layer_task((model, _data((4,), classes=3, n=1), 64.0, None, "2", "weight", keeps))
    assert len(row) == 1 and seen and not (seen[0] & shared)  # it probed a copy with storage of its own
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_workers_need_a_probe_and_a_known_pool() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    batches = _data((4,), classes=3, n=1)
    with pytest.raises(ConfigError, match="needs a prunekit.probe.Probe"):
        scan(model, select(model), Magnitude(), Element(), lambda m: 0.0, ratios=(0.5,), workers=2)
    with pytest.raises(ConfigError, match="unknown pool 'proces'.*process"):
        scan(model, select(model), Magnitude(), Element(), Probe(model, batches), ratios=(0.5,), pool="proces")
    with pytest.raises(ConfigError, match="workers must be"):
        scan(model, select(model), Magnitude(), Element(), Probe(model, batches), ratios=(0.5,), workers=0)
