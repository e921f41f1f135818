"""The goal-cell layer (90 %-sparse 4096x4096, batch 1) against dense at 1 and 2 threads, for the prunekit
source tree given (to compare two versions back to back): 5 rounds of 30 paired calls, median ratio.

    python benchmarks/prototypes/goal_cell_ab.py /path/to/old/checkout && python benchmarks/prototypes/goal_cell_ab.py .
"""

import sys; sys.path.insert(0, sys.argv[1] + "/src")
import statistics

import torch
from torch import nn

import prunekit
from prunekit.metrics import compare_latency
from prunekit.sparse import SparseLinear

torch.manual_seed(0)
dense = nn.Linear(4096, 4096)
with torch.no_grad(): dense.weight.mul_(torch.rand_like(dense.weight) >= 0.9)
dense.eval(); x=torch.randn(1,4096)
print(prunekit.__file__)
for th in (1,2):
    torch.set_num_threads(th)
    for k in ("numba_packet","numba_csr"):
        sp=SparseLinear.from_dense(dense, kernel=k).eval()
        rs=[]
        for r in range(5):
            out=compare_latency({"dense":dense,"sparse":sp}, x, warmup=5, repeats=30, threads=th)
            rs.append(out["sparse"].median_s/out["dense"].median_s)
        print(th, k, round(statistics.median(rs),3), round(out["dense"].median_s*1e3,3))
