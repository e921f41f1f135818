"""prune(): end-to-end on real models, enforcement by default, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.allocation import Global, Uniform
from prunekit.errors import ConfigError
from prunekit.granularity import NM, Channel, Element, Kernel, Pattern
from prunekit.importance import DataDrivenImportance, Magnitude, Random
from prunekit.models import create
from prunekit.pruning import prune
from prunekit.targets import Target, select


def test_uniform_element_on_resnet20_is_exact_and_enforced() -> None:
    torch.manual_seed(0)
    model = create("resnet20")
    masks = prune(model, None, Magnitude(), Element(), Uniform(0.6))
    assert set(masks) == {t.name for t in select(model)} and masks.enforced
    for t in select(model):
        assert int((t.weight == 0).sum()) == round(0.6 * t.weight.numel())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    for t in select(model):
        assert int((t.weight == 0).sum()) >= round(0.6 * t.weight.numel())
    masks.remove()


def test_enforce_false_zeroes_once() -> None:
    model = create("resnet20")
    masks = prune(model, select(model), Random(seed=3), Channel(0), Global(0.3), enforce=False)
    assert not masks.enforced
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    assert abs(masks.sparsity() - 0.3) < 0.02


def test_structured_masks_on_resnet() -> None:
    model = create("resnet20")
    convs = select(model, types=(nn.Conv2d,))
    prune(model, convs, Magnitude(), Kernel(), Global(0.5, normalize="lamp"), enforce=False)
    for t in convs:
        per_kernel = (t.weight != 0).reshape(t.weight.shape[0] * t.weight.shape[1], -1).sum(1)
        assert set(per_kernel.tolist()) <= {0, 9}
    model = create("resnet20")
    convs = select(model, types=(nn.Conv2d,))
    pat = Pattern.from_weights([t.weight for t in convs])
    prune(model, convs, Magnitude(), pat, Uniform(None), enforce=False)
    allowed = {tuple(r) for r in pat.patterns.int().tolist()}
    for t in convs:
        assert all(tuple(r) in allowed for r in (t.weight != 0).reshape(-1, 9).int().tolist())


def test_granularity_not_applicable_names_the_layer() -> None:
    model = create("resnet20")
    with pytest.raises(ConfigError, match=r"Kernel\(\) applies to conv layers only; 'linear' is a Linear"):
        prune(model, None, Magnitude(), Kernel(), Uniform(0.5))
    with pytest.raises(ConfigError, match=r"layer 'conv1' to be divisible by 4, but it is 3"):
        prune(model, None, Magnitude(), NM(2, 4), Uniform(None))
    masks = prune(model, select(model, exclude="conv1"), Magnitude(), NM(2, 4), Uniform(None))
    w = model.layer2.get_submodule("0").conv1.weight  # (32, 16, 3, 3): groups along Cin
    assert int(w.movedim(1, -1).reshape(-1, 4).ne(0).sum(1).max()) == 2
    masks.remove()


def test_uncalibrated_and_bad_importances() -> None:
    class NeedsData(DataDrivenImportance):
        def _attach(self, model, targets):
            return []

        def _score(self, target):
            return target.weight.abs()

    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match=r"NeedsData needs calibration data: call calibrate\(model, loader"):
        prune(model, None, NeedsData(), Element(), Uniform(0.5))

    class WrongShape:
        def scores(self, target: Target) -> torch.Tensor:
            return torch.ones(3)

    with pytest.raises(ConfigError, match=r"scores of shape \(3,\) for layer '0', expected .*\(4, 4\)"):
        prune(model, None, WrongShape(), Element(), Uniform(0.5))

    class Negative:
        def scores(self, target: Target) -> torch.Tensor:
            return -target.weight.abs() - 1

    with pytest.raises(ConfigError, match="negative or non-finite scores for layer '0'"):
        prune(model, None, Negative(), Element(), Uniform(0.5))


def test_l1_beats_random_on_pretrained_resnet20(pretrained_dir, cifar_npz) -> None:
    from prunekit.data import IMAGENET_MEAN, IMAGENET_STD, cifar10_loaders
    from prunekit.models import load_pretrained
    from prunekit.train import evaluate

    _, test = cifar10_loaders(cifar_npz, 256, IMAGENET_MEAN, IMAGENET_STD, augment=False, limit=512)
    accs = {}
    for name, imp in (("dense", None), ("l1", Magnitude()), ("random", Random(0))):
        model = load_pretrained(create("resnet20"), pretrained_dir / "resnet20-12fca82f.th")
        if imp is not None:
            prune(model, None, imp, Element(), Uniform(0.5), enforce=False)
        accs[name] = evaluate(model, test, max_batches=1).top1
    assert accs["dense"] > 0.6
    assert accs["l1"] > accs["dense"] - 0.10  # 50% magnitude pruning barely hurts
    assert accs["random"] < accs["l1"] - 0.3  # random pruning destroys the network
