"""Batch-1 sparse kernels timed back to back (each kernel's data may stay in the large L3) vs
interleaved with dense (as in ``sparse_linear.py``), plus a gather-vectorised C CSR loop prototype.

Compiles ``spmv_simd.c`` with gcc (``-O3 -march=native -ffast-math -fopenmp-simd``: AVX-512 gathers
on this machine) into a temp folder and times it through ctypes, next to prunekit's own
``SparseLinear`` kernels (``numba_csr``, ``torch_csr``) and ``nn.Linear``, on a 4096x4096 fp32
weight at 90 % sparsity, 1 thread. Result: prunekit's numba loop beats the C prototype, which is
therefore not used.

Command:
    python benchmarks/prototypes/spmv_simd.py
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_ms(fn, repeats: int = 300) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    so = Path(tempfile.mkdtemp()) / "libspmv.so"
    src = Path(__file__).with_name("spmv_simd.c")
    subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-shared", "-fPIC",
                    str(src), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    rng = np.random.default_rng(0)
    n = 4096
    w = rng.standard_normal((n, n)).astype(np.float32)
    w[rng.random((n, n)) > 0.1] = 0.0
    csr = torch.from_numpy(w).to_sparse_csr()
    row_ptr = csr.crow_indices().to(torch.int32).numpy()
    cols = {"int32": csr.col_indices().to(torch.int32).numpy(), "uint16": csr.col_indices().numpy().astype(np.uint16)}
    vals = csr.values().numpy()
    x = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(n, np.float32)
    ptr = ctypes.c_void_p
    linear = torch.nn.Linear(n, n, bias=False)
    linear.weight.data = torch.from_numpy(w)
    xt = torch.from_numpy(x)[None]  # (1, n)
    with torch.no_grad():
        dense = median_ms(lambda: linear(xt))
        mv = median_ms(lambda: torch.mv(linear.weight, xt[0]))
    print(f"back to back: dense nn.Linear {dense:.3f} ms, torch.mv {mv:.3f} ms")
    for name, fn in (("int32", lib.spmv_i32), ("uint16", lib.spmv_u16)):
        c = cols[name]

        def call(fn=fn, c=c) -> None:
            fn(n, row_ptr.ctypes.data_as(ptr), c.ctypes.data_as(ptr), vals.ctypes.data_as(ptr),
               x.ctypes.data_as(ptr), out.ctypes.data_as(ptr))

        t = median_ms(call)
        err = float(np.abs(out - w @ x).max())
        print(f"back to back: C simd CSR ({name} columns) {t:.3f} ms = {t / dense:.3f}x nn.Linear, max abs err {err:.1e}")
    from prunekit.sparse import SparseLinear

    with torch.no_grad():
        for kernel in ("numba_csr", "torch_csr"):
            sparse = SparseLinear.from_dense(linear, kernel=kernel)
            t = median_ms(lambda sparse=sparse: sparse(xt))
            print(f"back to back: prunekit {kernel} {t:.3f} ms = {t / dense:.3f}x nn.Linear")
            pair = {"dense": [], "sparse": []}
            for _ in range(100):  # interleaved: each call finds the other's data in the cache
                for key, fn in (("dense", lambda: linear(xt)), ("sparse", lambda sparse=sparse: sparse(xt))):
                    t0 = time.perf_counter()
                    fn()
                    pair[key].append(time.perf_counter() - t0)
            d, sp_ = (float(np.median(pair[k])) * 1e3 for k in ("dense", "sparse"))
            print(f"interleaved:  prunekit {kernel} {sp_:.3f} ms vs dense {d:.3f} ms = {sp_ / d:.3f}x")


if __name__ == "__main__":
    main()
