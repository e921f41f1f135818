"""DDP fine-tuning: 2 CPU processes (gloo, under torchrun) end with the weights of 1 process at the same global batch.

The test launches ``python -m torch.distributed.run --nproc_per_node 2`` on this very file; each
process runs :func:`_worker`: different initial weights and masks on rank 1 (DDP's broadcast and
``broadcast_masks`` must make them rank 0's), 80 % magnitude masks enforced, SGD with momentum and
weight decay, global batch 16 (8 per rank) from a seeded ``DistributedSampler``, 2 epochs, a
checkpoint through ``train_and_save`` (only rank 0 may write it), then a stop mid-epoch 2 and a
resume from rank 0's saved state in freshly built models. The single-process reference trains
the same initial model on the union of the two ranks' batches, step by step.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import prunekit as pk
from prunekit.checkpoint import read
from prunekit.errors import CheckpointError, ConfigError
from prunekit.masks import Masks
from prunekit.train import EvalResult, StopTraining, TrainConfig, TrainState, evaluate, fit
from prunekit.train import distributed as dist_tools

WORLD, GLOBAL_BATCH, SEED, STOP_AT = 2, 16, 3, 11  # STOP_AT: global step of the interruption (epoch 2)
CFG = TrainConfig(epochs=2, lr=0.1, momentum=0.9, weight_decay=5e-3, schedule="cosine", progress=False)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def make_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(168, 8, generator=g)
    y = (x[:, :4] + 0.5 * torch.randn(168, 4, generator=g)).argmax(dim=1)
    return TensorDataset(x[:128], y[:128]), TensorDataset(x[128:], y[128:])  # 128 train, 40 test


def prune_80(model: nn.Module) -> Masks:
    return pk.prune(model, None, pk.Magnitude(), pk.Element(), pk.Uniform(0.8))


# -------------------------------------------------------------------------- one process of the DDP run


def _worker(out_dir: Path) -> None:
    from prunekit.cli.train_cmd import train_and_save

    torch.set_num_threads(1)
    assert dist_tools.init_from_env() and dist_tools.world_size() == WORLD
    r = dist_tools.rank()
    train_set, test_set = make_data()
    train = dist_tools.distributed_loader(train_set, GLOBAL_BATCH, seed=SEED)
    test = dist_tools.distributed_loader(test_set, GLOBAL_BATCH, seed=SEED, shuffle=False)
    assert train.batch_size == GLOBAL_BATCH // WORLD

    # 1. uninterrupted run; rank 1 starts from other weights and masks
    model = make_model(0 if r == 0 else 100)
    masks = dist_tools.broadcast_masks(prune_80(model))
    ddp = dist_tools.wrap(model)
    info = {"masks": None, "plan": None, "config": {}}
    history = train_and_save(ddp, None, info, CFG, train, test, str(out_dir / "ckpt" / f"rank{r}.pt"), {})

    # 2. the same run stopped at step STOP_AT; rank 0 saves; fresh models on every rank resume from it
    model2 = make_model(0 if r == 0 else 200)
    masks2 = dist_tools.broadcast_masks(prune_80(model2))
    state = TrainState()

    def stop(st: TrainState) -> None:
        if st.step == STOP_AT:
            raise StopTraining

    fit(dist_tools.wrap(model2), train, test, CFG, state=state, on_step=stop)
    resume_file = out_dir / "resume.pt"
    if dist_tools.is_main():
        torch.save({"model": model2.state_dict(), "masks": masks2.state_dict(), "state": state.state_dict()},
                   resume_file)
    torch.distributed.barrier()
    saved = torch.load(resume_file, weights_only=True)
    model3 = make_model(300 + r)
    model3.load_state_dict(saved["model"])
    masks3 = Masks({}).load_state_dict(saved["masks"]).apply(model3)
    state3 = TrainState.from_state_dict(saved["state"])
    resumed = fit(dist_tools.wrap(model3), train, test, CFG, state=state3)

    mine = {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "masks": masks.state_dict()["masks"],
        "resumed": {k: v.detach().clone() for k, v in model3.state_dict().items()},
        "resumed_masks": masks3.state_dict()["masks"],
        "history": [h.as_dict() for h in history],
        "resumed_history": [h.as_dict() for h in resumed],
    }
    gathered = [None] * WORLD if r == 0 else None
    torch.distributed.gather_object(mine, gathered, dst=0)
    if r == 0:
        torch.save(gathered, out_dir / "results.pt")
    torch.distributed.barrier()  # no rank tears its group down while another still talks to it (gloo aborts)
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------ single-process reference


class _GlobalBatches:
    """Batch sampler: step i of epoch e is rank 0's batch i followed by rank 1's batch i."""

    def __init__(self, dataset: TensorDataset, epochs: int) -> None:
        per_rank = GLOBAL_BATCH // WORLD
        self.epochs: list[list[list[int]]] = []
        for e in range(epochs):
            orders = []
            for r in range(WORLD):
                s = DistributedSampler(dataset, num_replicas=WORLD, rank=r, shuffle=True, seed=SEED)
                s.set_epoch(e)
                orders.append(list(s))
            steps = len(orders[0]) // per_rank
            self.epochs.append(
                [sum((o[i * per_rank:(i + 1) * per_rank] for o in orders), []) for i in range(steps)]
            )
        self.next_epoch = 0

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __iter__(self):
        e, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return iter(self.epochs[e])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed / gloo backend",
)
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the launcher and its two workers (a session of their own)
        out, _ = proc.communicate()
        pytest.fail("the DDP run did not finish in 240 s:\n" + out[-4000:])
    assert proc.returncode == 0, out[-6000:]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["rank0.pt"]  # only rank 0 wrote
    results = torch.load(tmp_path / "results.pt", weights_only=True)

    # the reference: 1 process, same initial model and masks, the same global batches in the same order
    train_set, test_set = make_data()
    ref = make_model(0)
    ref_masks = prune_80(ref)
    loader = DataLoader(train_set, batch_sampler=_GlobalBatches(train_set, CFG.epochs))
    ref_history = fit(ref, loader, DataLoader(test_set, batch_size=40), CFG)
    ref_weights = ref.state_dict()

    for r, res in enumerate(results):
        for name, mask in ref_masks.state_dict()["masks"].items():
            assert torch.equal(res["masks"][name], mask), (r, name)  # rank 0's masks everywhere
            assert torch.equal(res["resumed_masks"][name], mask), (r, name)
            weight = res["weights"][f"{name}.weight"]
            assert bool((weight[~mask] == 0).all()), (r, name)  # pruned weights exactly zero after 16 steps
        for key, value in ref_weights.items():
            torch.testing.assert_close(res["weights"][key], value, atol=1e-6, rtol=0, msg=f"rank {r} {key}")
            assert torch.equal(res["weights"][key], results[0]["weights"][key])  # identical on the ranks
            assert torch.equal(res["resumed"][key], res["weights"][key]), (r, key)  # resume is bit-exact
        for got, want in zip(res["history"], ref_history):
            assert got["train_loss"] == pytest.approx(want.train_loss, abs=1e-5)  # loss over the global batch
            test = EvalResult(**got["test"])
            assert test.samples == 40  # each rank scored 20; all-reduced
            assert (test.top1, test.top5) == pytest.approx((want.test.top1, want.test.top5), abs=1e-9)
            assert test.loss == pytest.approx(want.test.loss, abs=1e-5)
        assert [h["train_loss"] for h in res["resumed_history"]] == [h["train_loss"] for h in res["history"]]
    assert ref_history[-1].test == evaluate(ref, DataLoader(test_set, batch_size=40))

    ckpt = read(tmp_path / "ckpt" / "rank0.pt")
    assert not any(k.startswith("module.") for k in ckpt.state_dict)  # the inner model was saved
    torch.testing.assert_close(ckpt.state_dict["2.weight"], ref_weights["2.weight"], atol=1e-6, rtol=0)


def test_single_process_helpers_are_no_ops() -> None:
    model = nn.Linear(2, 2)
    masks = Masks({"": torch.ones(2, 2, dtype=torch.bool)})
    assert (dist_tools.world_size(), dist_tools.rank(), dist_tools.is_main()) == (1, 0, True)
    assert dist_tools.wrap(model) is model and dist_tools.broadcast_masks(masks) is masks
    result = EvalResult(0.5, 1.0, 0.2, 10)
    assert dist_tools.all_reduce_eval(result) is result
    assert len(dist_tools.distributed_loader(list(range(10)), 4, seed=0)) == 3
    with pytest.raises(ConfigError, match="multiple of the world size"):
        dist_tools.distributed_loader(list(range(10)), 0, seed=0)


def test_init_from_env_without_torchrun_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_tools.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist_tools.init_from_env() is False and not dist_tools.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK"):
        dist_tools.init_from_env()


def test_fit_sets_the_sampler_epoch_and_refuses_another_seed_on_resume() -> None:
    train_set, _ = make_data()
    loader = dist_tools.distributed_loader(train_set, GLOBAL_BATCH, seed=SEED)  # world size 1 here
    state = TrainState()
    fit(make_model(0), loader, None, CFG, state=state)
    assert loader.sampler.epoch == CFG.epochs - 1
    assert state.rng["sampler"] == {"seed": SEED, "epoch": CFG.epochs, "num_replicas": 1}
    state.epoch, state.step = 1, len(loader)
    state.history = state.history[:1]
    other = dist_tools.distributed_loader(train_set, GLOBAL_BATCH, seed=SEED + 1)
    with pytest.raises(CheckpointError, match="seed"):
        fit(make_model(0), other, None, CFG, state=state)


if __name__ == "__main__":  # one process of the DDP test, started by torchrun
    _worker(Path(sys.argv[1]))
