"""The sparse kernels behind a boundary: the fast LLVM-IR path agrees with the plain numba reference,
prunekit works (with a warning) when the fast path cannot be built, and a parallel loop that a busy
machine slows down falls back to the serial one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.sparse.formats import CSRMatrix, PacketCSRMatrix
from prunekit.sparse.kernels import numba_csr
from prunekit.sparse.kernels.numba_csr import ThreadPolicy

REPO = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not numba_csr.AVAILABLE, reason="numba not installed (pip install numba)")


def _weight(n: int, k: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) < density)


@needs_numba
@pytest.mark.parametrize("fmt", ["csr", "packet"])
@pytest.mark.parametrize("n, k, density", [(7, 40, 0.5), (64, 300, 0.1), (33, 70000, 0.001), (5, 17, 1.0)])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_batch1_loops_equal_the_reference(fmt: str, n: int, k: int, density: float, bias: bool) -> None:
    loops = numba_csr._loops()
    if loops.kind != "fast":
        pytest.skip(f"the fast loops are off here: {numba_csr.FAST_STATUS.get('why')}")
    from prunekit.sparse.kernels import _numba_fast, _numba_loops

    w = _weight(n, k, density, seed=n + k)
    b = torch.randn(n) if bias else None
    if fmt == "csr":
        m = CSRMatrix.pack(w)
        a = numba_csr.as_arrays(m.row_ptr, m.col_indices, m.values, b)
    else:
        m = PacketCSRMatrix.pack(w)
        a = numba_csr.as_arrays(m.packet_ptr, m.offsets, m.values, b, m.bases)
    x = torch.randn(k).numpy()
    outs = {}
    for name, fn in (("ref serial", lambda o: _numba_loops.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, o, 0)),
                     ("ref parallel", lambda o: _numba_loops.spmv_parallel(a.row_ptr, a.bases, a.col, a.val, x, a.bias, o, 0, 2)),
                     ("fast serial", lambda o: _numba_fast.spmv_serial(a.row_ptr, a.bases, a.col, a.val, x, a.bias, o, 256)),
                     ("fast parallel", lambda o: _numba_fast.spmv_parallel(a.row_ptr, a.bases, a.col, a.val, x, a.bias, o, 256, 2))):
        outs[name] = np.empty(n, np.float32)
        fn(outs[name])
    want = (w @ torch.from_numpy(x) + (b if b is not None else 0)).numpy()
    for name, got in outs.items():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


@needs_numba
def test_every_sparse_test_passes_with_the_fast_path_failing() -> None:
    """The fast path made to fail on purpose: prunekit warns and the reference loops pass every sparse test."""
    env = {**os.environ, "PRUNEKIT_FAST_KERNELS": "fail"}
    tests = ["tests/test_sparse_kernels.py", "tests/test_sparse_numba_paths.py", "tests/test_deploy.py",
             "tests/test_sparse_formats.py"]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


@needs_numba
def test_a_failing_fast_path_warns_and_runs_the_reference() -> None:
    code = (
        "import warnings, torch\n"
        "from prunekit.sparse import SparseLinear\n"
        "from prunekit.sparse.kernels import numba_csr\n"
        "lin = torch.nn.Linear(64, 8)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    sp = SparseLinear.from_dense(lin, kernel='numba_packet')\n"
        "    x = torch.randn(1, 64)\n"
        "    with torch.no_grad():\n"
        "        ok = torch.allclose(sp(x), lin(x), atol=1e-5)\n"
        "print(ok, numba_csr.FAST_STATUS['kind'], any('reference numba loops' in str(m.message) for m in w))\n"
    )
    env = {**os.environ, "PRUNEKIT_FAST_KERNELS": "fail"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "reference", "True"], out.stderr[-2000:]


def test_thread_policy_falls_back_to_serial_when_parallel_calls_stall(monkeypatch) -> None:
    from prunekit.sparse.kernels import numba_csr

    class Clock:  # a fake perf_counter: the calls below advance it, so no sleep jitter can flip the policy
        now = 0.0

        def perf_counter(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(numba_csr, "time", clock)
    calls: list[str] = []
    slow = {"on": False}

    def parallel() -> None:
        calls.append("p")
        clock.now += 0.010 if slow["on"] else 0.00001  # a stalled worker: 10x the serial call

    def serial() -> None:
        calls.append("s")
        clock.now += 0.001

    policy = ThreadPolicy()
    for _ in range(10):  # quiet: parallel, with the serial probes on calls 3 and 4
        policy.run(2, parallel, serial)
    assert calls == ["p", "p", "s", "s", "p", "p", "p", "p", "p", "p"] and not policy.serial_now
    slow["on"] = True  # another process takes the cores: parallel calls now wait on a descheduled worker
    calls.clear()
    for _ in range(2 + ThreadPolicy.BACKOFF0):
        policy.run(2, parallel, serial)
    assert calls == ["p", "p"] + ["s"] * ThreadPolicy.BACKOFF0  # two slow calls, then serial
    calls.clear()
    policy.run(2, parallel, serial)  # the probe after the backoff is still slow: back off twice as long
    assert calls == ["p"] and policy.serial_now and policy.serial_left == 2 * ThreadPolicy.BACKOFF0
    slow["on"] = False
    for _ in range(2 * ThreadPolicy.BACKOFF0):
        policy.run(2, parallel, serial)
    calls.clear()
    policy.run(2, parallel, serial)  # quiet again: the probe is fast, parallel resumes
    policy.run(2, parallel, serial)
    assert calls == ["p", "p"] and policy.backoff == ThreadPolicy.BACKOFF0


@needs_numba
def test_first_deploy_in_a_fresh_process_picks_what_the_second_picks(tmp_path) -> None:
    """Compilation is never timed: with an empty numba cache the first deploy chooses as the second does."""
    code = (
        "import torch\n"
        "from torch import nn\n"
        "from prunekit.sparse import deploy\n"
        "torch.manual_seed(0); torch.set_num_threads(1)\n"
        "model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 64)).eval()\n"
        "with torch.no_grad():\n"
        "    model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.95)\n"
        "x = torch.randn(1, 2048)\n"
        "for _ in range(2):\n"
        "    _, report = deploy(model, x, candidates=['numba_csr', 'torch_csr'], repeats=15)\n"
        "    print(' '.join(c.kernel for c in report.layers))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}  # nothing compiled yet
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=True)
    first, second = out.stdout.strip().splitlines()[-2:]
    assert first == second and first.split()[0] == "numba_csr", out.stdout
