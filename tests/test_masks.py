"""Masks: enforcement in plain training loops, persistence, deepcopy, torch.compile, reports."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks import Masks
from prunekit.targets import select


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10),
    )


def _random_masks(model: nn.Module, keep: float = 0.3, seed: int = 1) -> Masks:
    gen = torch.Generator().manual_seed(seed)
    return Masks({t.name: torch.rand(t.weight.shape, generator=gen) < keep for t in select(model)})


def _pruned_are_zero(model: nn.Module, masks: Masks) -> bool:
    return all(bool((model.get_submodule(n).weight[~m] == 0).all()) for n, m in masks.items())


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, check=None) -> None:
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if check is not None:
            assert check()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "adamw"],
)
def test_masks_hold_through_100_steps(make_opt) -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    _train(model, make_opt(model.parameters()), 100, check=lambda: _pruned_are_zero(model, masks))
    for n, m in masks.items():
        w = model.get_submodule(n).weight
        assert not torch.equal(w[m], before[n][m])  # the kept weights did train
        assert int((w == 0).sum()) >= int((~m).sum())


def test_without_enforcement_weights_revive() -> None:
    """The enforcement test above can fail: un-enforced masks do not survive momentum."""
    model = _net()
    masks = _random_masks(model).apply(model, enforce=False)
    assert _pruned_are_zero(model, masks)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 3)
    assert not _pruned_are_zero(model, masks)


def test_remove_stops_enforcement_and_make_permanent_zeroes() -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    assert masks.enforced
    masks.remove()
    assert not masks.enforced
    _train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 3)
    assert not _pruned_are_zero(model, masks)
    masks.make_permanent(model)
    assert _pruned_are_zero(model, masks) and not masks.enforced
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


def test_plain_module_and_state_dict_keys() -> None:
    model = _net()
    keys = list(model.state_dict())
    masks = _random_masks(model).apply(model)
    assert list(model.state_dict()) == keys and not any("orig" in k or "mask" in k for k in keys)
    assert type(model) is nn.Sequential and isinstance(model[0].weight, nn.Parameter)
    # restoring dense weights into an enforced model: the next forward re-zeroes them
    model.load_state_dict(_net(seed=5).state_dict())
    model(torch.randn(1, 3, 6, 6))
    assert _pruned_are_zero(model, masks)


def test_two_forwards_before_backward() -> None:
    model = _net()
    _random_masks(model).apply(model)
    x = torch.randn(4, 3, 6, 6)
    (model(x).sum() + model(x * 2).sum()).backward()  # no in-place version error
    assert model[0].weight.grad is not None


def test_manual_update_loop_without_optimizer() -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    for _ in range(5):
        model.zero_grad()
        model(torch.randn(4, 3, 6, 6)).pow(2).mean().backward()
        assert all(bool((model.get_submodule(n).weight.grad[~m] == 0).all()) for n, m in masks.items())
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * (p.grad + 0.01)  # a bias term that would revive pruned weights
        model(torch.randn(1, 3, 6, 6))  # each forward sees pruned weights at zero
        assert _pruned_are_zero(model, masks)


def test_save_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 5)
    masks.save(tmp_path / "masks.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    model.eval()
    x = torch.randn(4, 3, 6, 6)
    expected = model(x)

    fresh = _net(seed=9)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    loaded = Masks.load(tmp_path / "masks.pt", fresh)
    fresh.eval()
    assert torch.equal(fresh(x), expected)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[n], masks[n]) for n in masks)
    assert loaded.enforced and list(tmp_path.iterdir()) and not list(tmp_path.glob("*.tmp"))
    state = masks.state_dict()
    other = Masks({}).load_state_dict(state)
    assert all(torch.equal(other[n], masks[n]) for n in masks)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Masks.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read mask file"):
        Masks.load(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a prunekit masks state"):
        Masks.load(tmp_path / "other.pt")
    _random_masks(_net()).save(tmp_path / "m.pt")
    wrong = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"mask of layer '0' has shape \(8, 3, 3, 3\)"):
        Masks.load(tmp_path / "m.pt", wrong)
    with pytest.raises(ConfigError, match=r"mask names layer '5', which the model does not have; known names include: '', '0'"):
        Masks.load(tmp_path / "m.pt", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)))


def test_from_zeros_and_report() -> None:
    model = _net()
    masks = _random_masks(model, keep=0.25).apply(model, enforce=False)
    again = Masks.from_zeros(model, select(model))
    assert all(torch.equal(again[n], masks[n]) for n in masks)
    rows = masks.sparsity_report(model)
    assert [r.name for r in rows] == ["0", "5"]
    assert all(r.zeros == int((~masks[r.name]).sum()) for r in rows)
    text = masks.format_report(model)
    assert "total" in text and f"{rows[0].sparsity:.2%}" in text
    assert abs(masks.sparsity() - sum(r.zeros for r in rows) / sum(r.numel for r in rows)) < 1e-12


def _prunekit_hooks(model: nn.Module) -> int:
    from prunekit.masks import _Detached, _PrunekitHook, _ZeroPrunedGrad

    n = 0
    for m in model.modules():
        n += sum(isinstance(h, (_PrunekitHook, _Detached)) for h in m._forward_pre_hooks.values())
        for p in m.parameters(recurse=False):
            n += sum(isinstance(h, _ZeroPrunedGrad) for h in (p._backward_hooks or {}).values())
    return n


def test_deepcopy_of_an_enforced_model_carries_no_enforcement() -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6)
    model.eval(), clone.eval()
    assert torch.equal(clone(x), model(x))  # same weights, zeros included
    assert _prunekit_hooks(clone) == 0  # the copy's inert hooks removed themselves on its forward
    # the copy is a plain model: nothing re-zeroes its weights, and the original is untouched
    with torch.no_grad():
        clone[0].weight.add_(1.0)
    clone(x)
    assert not _pruned_are_zero(clone, masks) and _pruned_are_zero(model, masks)
    # full enforcement of the copy: apply a mask set to it
    clone_masks = Masks(masks).apply(clone)
    clone.train()
    _train(clone, torch.optim.SGD(clone.parameters(), lr=0.05, momentum=0.9), 5,
           check=lambda: _pruned_are_zero(clone, clone_masks))


def test_deepcopy_then_remove_leaves_no_prunekit_hook_anywhere() -> None:
    model = _net()
    masks = _random_masks(model).apply(model)
    assert _prunekit_hooks(model) == 4  # a pre-hook and a grad hook per target
    clone = copy.deepcopy(model)
    assert _prunekit_hooks(clone) == 2  # inert copies of the pre-hooks, until remove() or a forward
    masks.remove()
    assert _prunekit_hooks(model) == 0 and _prunekit_hooks(clone) == 0


def test_thousand_prunes_leave_no_live_hooks_or_models() -> None:
    import gc
    import weakref

    from torch.optim.optimizer import _global_optimizer_post_hooks

    from prunekit import Element, Global, Magnitude, prune

    gc.collect()
    hooks_before = len(_global_optimizer_post_hooks)
    refs = []
    for i in range(1000):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        masks = prune(model, select(model), Magnitude(), Element(), Global(0.5))
        refs.append((weakref.ref(model), weakref.ref(masks)))
        if i == 0:
            assert len(_global_optimizer_post_hooks) == hooks_before + 1
    del model, masks
    gc.collect()
    assert all(m() is None and k() is None for m, k in refs)
    assert len(_global_optimizer_post_hooks) == hooks_before


def test_enforcement_outlives_the_masks_object_but_not_the_model() -> None:
    import gc

    model = _net()
    _random_masks(model).apply(model)  # the Masks object is dropped at once
    gc.collect()
    masks = _random_masks(model)  # same masks, not applied: to check against
    _train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), 3,
           check=lambda: _pruned_are_zero(model, masks))


def test_update_monotone_and_enforced_in_place() -> None:
    model = _net()
    masks = _random_masks(model, keep=0.6).apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, 3)
    new = _random_masks(model, keep=0.6, seed=7)
    old = {n: m.clone() for n, m in masks.items()}
    masks.update(dict(new), monotone=True)
    for n in masks:
        assert torch.equal(masks[n], old[n] & new[n])
    assert _pruned_are_zero(model, masks)
    # momentum buffers of the newly pruned weights are non-zero: enforcement must still hold
    _train(model, opt, 5, check=lambda: _pruned_are_zero(model, masks))
    masks.update(dict(new))  # non-monotone: pruned weights may come back (as zeros)
    assert all(torch.equal(masks[n], new[n]) for n in masks)
    with pytest.raises(ConfigError, match="has shape"):
        masks.update({"0": torch.ones(2, 2, dtype=torch.bool)})


def test_applied_restores_weights_bit_exactly() -> None:
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = _random_masks(model)
    with masks.applied(model):
        assert _pruned_are_zero(model, masks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _prunekit_hooks(model) == 0


def _compiled_matches(backend: str) -> None:
    model = _net().eval()
    masks = _random_masks(model).apply(model)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # revive pruned weights behind the masks' back
    out = compiled(x)
    assert _pruned_are_zero(model, masks)
    assert torch.allclose(out, model(x), atol=1e-5)


def test_torch_compile_eager_backend() -> None:
    _compiled_matches("eager")


@pytest.mark.slow
def test_torch_compile_inductor() -> None:
    t0 = time.time()
    _compiled_matches("inductor")
    print(f"inductor compile test took {time.time() - t0:.1f}s")


def test_non_finite_pruned_weights_are_cleared() -> None:
    model = _net().eval()
    masks = _random_masks(model).apply(model)
    with torch.no_grad():
        model[0].weight[~masks["0"]] = float("nan")
    out = model(torch.randn(2, 3, 6, 6))
    assert bool(torch.isfinite(out).all()) and _pruned_are_zero(model, masks)


@pytest.mark.gpu
def test_enforcement_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _net().cuda()
    masks = _random_masks(model).apply(model)  # CPU masks, CUDA weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(10):
        opt.zero_grad()
        model(torch.randn(8, 3, 6, 6, device="cuda")).pow(2).mean().backward()
        opt.step()
        assert all(bool((model.get_submodule(n).weight[~m.cuda()] == 0).all()) for n, m in masks.items())
