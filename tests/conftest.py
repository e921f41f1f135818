"""Shared fixtures: where the real data lives, and one torch thread for the whole suite.

One thread: the test models are tiny, and with more threads than free cores (CI runners,
shared machines) torch's thread pool spends its time spin-waiting (measured: 13.5 min vs 25 s
for the pruning-core tests on a loaded 2-core machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("PRUNEKIT_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one torch thread, and a test that changes it cannot leak the change."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder; tests needing it skip with the reason when it is absent."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data folder not found at {DATA_ROOT} (set PRUNEKIT_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def cifar_npz(data_root: Path) -> Path:
    p = data_root / "cifar10-jpeg75.npz"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="session")
def pretrained_dir(data_root: Path) -> Path:
    p = data_root / "pretrained"
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p
