"""AMC: the env's state and action bounds, DDPG search determinism, resume, result round trips, errors."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from prunekit.allocation import PerLayer  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.metrics import count_macs  # noqa: E402
from prunekit.models import create  # noqa: E402
from prunekit.search import AMCEnv, AMCResult, amc_search  # noqa: E402
from prunekit.search.amc import FEATURES  # noqa: E402
from prunekit.structure.api import prune_channels  # noqa: E402

X = torch.zeros(1, 1, 8, 8)
TARGET = 0.5
SEARCH = {"episodes": 12, "warmup": 4}


def _fidelity(reference: nn.Module):
    """Higher is better: 1 - output MSE against the dense model on a fixed batch."""
    data = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(data)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> float:
        return 1.0 - float((model(data) - ref).pow(2).mean())

    return evaluate


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create("digits_cnn", width=32).eval()


@pytest.fixture(scope="module")
def evaluate(model):
    return _fidelity(model)


@pytest.fixture(scope="module")
def result(model, evaluate) -> AMCResult:
    return amc_search(model, X, evaluate, macs_ratio=TARGET, seed=0, **SEARCH)


def _run_episode(env: AMCEnv, actions) -> tuple[list[np.ndarray], dict]:
    obs, _ = env.reset()
    seen, done, t = [obs], False, 0
    while not done:
        obs, reward, done, _, info = env.step([actions(t)])
        seen.append(obs)
        t += 1
        assert (reward == 0.0) != done  # rewards only at the end (the fidelity is never exactly 1)
    assert t == len(env.layers)
    return seen, info["record"]


def test_state_has_the_papers_features_in_unit_range_and_one_step_per_prunable_layer(model, evaluate):
    env = AMCEnv(model, X, evaluate, macs_ratio=TARGET)
    assert len(FEATURES) == 11 and env.observation_space.shape == (11,)
    assert [la.module for la in env.layers] == ["features.0", "features.3", "features.7", "features.10"]
    assert len({la.key for la in env.layers}) == 4
    seen, record = _run_episode(env, lambda t: 0.3)
    for obs in seen:
        assert obs.shape == (11,) and obs.dtype == np.float32
        assert env.observation_space.contains(obs) and obs.min() >= 0.0 and obs.max() <= 1.0
    t_col, prev_col, reduced_col = FEATURES.index("t"), FEATURES.index("a_prev"), FEATURES.index("reduced")
    assert [round(float(o[t_col]), 4) for o in seen[:4]] == [0.0, 0.3333, 0.6667, 1.0]
    applied = list(record["ratios"].values())
    assert [round(float(o[prev_col]), 5) for o in seen[1:4]] == [round(r, 5) for r in applied[:3]]
    assert seen[0][reduced_col] == 0.0 and seen[3][reduced_col] > 0.0
    assert seen[0][FEATURES.index("h")] == 1.0 and seen[3][FEATURES.index("h")] == 0.0  # 8x8 input, then 4x4
    # an excluded layer is not a step; neither is a layer whose channels cannot be removed
    assert len(AMCEnv(model, X, evaluate, macs_ratio=0.8, exclude=["features.0"]).layers) == 3


@pytest.mark.parametrize("name, actions", [
    ("zeros", lambda t: 0.0), ("max", lambda t: 0.8), ("alternating", lambda t: 0.8 * (t % 2)),
    ("random", lambda t: float(np.random.default_rng(t).uniform(0, 0.8))),
])  # fmt: skip
def test_action_bounds_meet_the_macs_budget_whatever_the_agent_does(model, evaluate, name, actions):
    env = AMCEnv(model, X, evaluate, macs_ratio=TARGET)
    _, record = _run_episode(env, actions)
    assert record["modelled_macs_ratio"] <= TARGET + 1e-12, name
    small, _, _ = prune_channels(model, X, PerLayer(record["ratios"]), verify=False)
    actual = count_macs(small, X) / count_macs(model, X)
    assert actual == pytest.approx(record["macs_ratio"], abs=1e-12)
    assert abs(actual - TARGET) <= 0.02 * TARGET, (name, actual)
    assert record["meets"]


def test_flops_reward_bounds_below_only_and_params_budget(model, evaluate):
    env = AMCEnv(model, X, evaluate, macs_ratio=TARGET, reward="flops")
    _, record = _run_episode(env, lambda t: 0.8)
    assert record["macs_ratio"] < TARGET - 0.1  # free to prune past the budget
    assert record["reward"] < 0
    env = AMCEnv(model, X, evaluate, macs_ratio=None, params_ratio=0.4)
    for actions in (lambda t: 0.0, lambda t: 0.8):
        _, record = _run_episode(env, actions)
        assert 0.4 * 0.97 <= record["params_ratio"] <= 0.4 + 1e-12


def test_same_seed_same_result_and_global_random_state_untouched(model, evaluate, result):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    again = amc_search(model, X, evaluate, macs_ratio=TARGET, seed=0, **SEARCH)
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert again.ratios == result.ratios and again.history == result.history and again.reward == result.reward
    other = amc_search(model, X, evaluate, macs_ratio=TARGET, seed=1, **SEARCH)
    assert other.history != result.history
    assert len(result.history) == 12 and [h["warmup"] for h in result.history] == [True] * 4 + [False] * 8
    assert result.reward == max(h["reward"] for h in result.history if h["meets"])


class _Stop(Exception):
    pass


def test_interrupted_search_resumes_to_the_uninterrupted_result(model, evaluate, result, tmp_path):
    path = tmp_path / "amc.pt"

    def stop_at_7(episode, record):
        if episode == 7:
            raise _Stop

    with pytest.raises(_Stop):
        amc_search(model, X, evaluate, macs_ratio=TARGET, seed=0, checkpoint_path=path, checkpoint_every=3,
                   progress=stop_at_7, **SEARCH)
    state = torch.load(path, weights_only=True)  # plain tensors / numbers / lists / dicts only
    assert state["episode"] == 6 and len(state["history"]) == 6
    assert state["replay"]["pos"] == 6 * 4 and "actor.mu.0.weight" in state["policy"]
    seen = []
    resumed = amc_search(model, X, evaluate, macs_ratio=TARGET, seed=0, checkpoint_path=path, checkpoint_every=3,
                         progress=lambda e, r: seen.append(e), **SEARCH)
    assert seen == list(range(6, 12))
    assert resumed.ratios == result.ratios and resumed.history == result.history and resumed.reward == result.reward
    with pytest.raises(ConfigError, match="other settings"):
        amc_search(model, X, evaluate, macs_ratio=TARGET, seed=1, checkpoint_path=path, **SEARCH)


def test_allocation_prunes_to_the_reported_macs(model, evaluate, result):
    small, _, report = prune_channels(model, X, result.allocation(), target="channels", verify=False)
    assert count_macs(small, X) / count_macs(model, X) == pytest.approx(result.macs_ratio, abs=1e-12)
    assert result.macs_ratio <= TARGET + 1e-12 and abs(result.macs_ratio - TARGET) <= 0.02 * TARGET
    assert evaluate(small) == pytest.approx(result.accuracy, abs=1e-9)
    assert report.params_after / report.params_before == pytest.approx(result.params_ratio, abs=1e-12)


def test_plot_writes_a_png_and_json_round_trips(result, tmp_path):
    png = result.plot(tmp_path / "amc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["amc.png"]  # no temp left behind
    back = AMCResult.from_json(result.to_json())
    assert back == result and list(back.ratios) == list(result.ratios)
    assert AMCResult.from_json(result.save(tmp_path / "amc.json").read_text()) == result
    with pytest.raises(ConfigError, match="cannot read the AMC result"):
        AMCResult.from_json('{"format": "something else"}')


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.2])
def test_bad_macs_ratio_is_a_named_error(model, evaluate, ratio):
    with pytest.raises(ConfigError, match=r"macs_ratio .* in \(0, 1\)"):
        amc_search(model, X, evaluate, macs_ratio=ratio, episodes=1, warmup=0)


def test_no_prunable_layers_and_unreachable_target_are_named_errors(model, evaluate):
    lone = nn.Sequential(nn.Conv2d(1, 4, 3)).eval()  # its only channels are the model's output
    with pytest.raises(ConfigError, match="no prunable layers"):
        AMCEnv(lone, X, _fidelity(lone))
    with pytest.raises(ConfigError, match="no prunable layers"):
        AMCEnv(model, X, evaluate, exclude=["features.*"])
    with pytest.raises(ConfigError, match="below what max_ratio 0.5 allows"):
        amc_search(model, X, evaluate, macs_ratio=0.1, max_ratio=0.5, episodes=1, warmup=0)
    with pytest.raises(ConfigError, match="reward must be one of"):
        AMCEnv(model, X, evaluate, reward="accuracy")


@pytest.mark.parametrize("missing", ["stable_baselines3", "gymnasium"])
def test_missing_extra_names_the_install_command(model, evaluate, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ConfigError, match=r"pip install prunekit\[search\]"):
        amc_search(model, X, evaluate, episodes=1, warmup=0)
    with pytest.raises(ConfigError, match=r"pip install prunekit\[search\]"):
        AMCEnv(model, X, evaluate)
