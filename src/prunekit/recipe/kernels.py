"""Kernel recipes: a sparse-kernel benchmark described once in YAML, run by ``prunekit run``.

A recipe with a top-level ``kernels`` section (and no ``model``) times a pruned fp32 Linear against
dense over a grid of shapes' sparsities, batch sizes, kernels, cache regimes, input zeros and
thread counts, as ``prunekit bench`` does, and writes the same run folder as a pruning recipe:
``recipe.yaml``, ``results.json`` (one row per cell), ``log.txt`` and the report (a table and a
figure of sparse / dense time). Each cell is timed in ``rounds`` rounds of ``repeats`` calls
interleaved with dense; the ratio is the median of the rounds' ratios, so a busy moment moves one
round, not the cell. ``load`` starts that many busy CPU processes beside the timing (a machine
running something else) and stops them afterwards.

>>> from prunekit.recipe import loads
>>> r = loads("kernels: {shape: [64, 64], sparsities: [0.9], kernels: [torch_csr], repeats: 3}")
>>> r.kind, r["kernels"]["batch_sizes"], r["kernels"]["regimes"]
('kernels', [1], ['warm'])
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from prunekit.recipe.schema import SCHEMA, Key, _section

if TYPE_CHECKING:  # pragma: no cover
    from prunekit.recipe.pipeline import Run

KERNEL_SCHEMA: dict[str, Key] = {
    "version": SCHEMA["version"],
    "title": Key("str", None, "a name for the run (default: the shape and the kernels)"),
    "seed": Key("int", 0, "seeds the random weights and inputs", low=0),
    "threads": Key("int", 1, "torch CPU threads (kernels.threads lists several)", low=1),
    "kernels": _section({
        "shape": Key("list", [4096, 4096], "the Linear's out x in features", item="int"),
        "batch_sizes": Key("list", [1], "input rows per call", item="int"),
        "sparsities": Key("list", [0.9], "fractions of zero weights (magnitude-pruned random weights)", item="float"),
        "kernels": Key("list", None, "sparse kernels to time (default: every kernel available here; "
                                     "prunekit.sparse.available_kernels())"),
        "regimes": Key("list", ["warm"], "caches before each timed call: warm, evicted (weights and input "
                                         "flushed from the cache; x86 + numba), flushed (the whole cache)",
                       choices=("warm", "evicted", "flushed")),
        "input_zeros": Key("list", [0.0], "fractions of the input set to zero (activation sparsity)", item="float"),
        "threads": Key("list", None, "thread counts to time at (default: threads)", item="int"),
        "rounds": Key("int", 1, "rounds per cell; the ratio is the median of the rounds' ratios", low=1),
        "repeats": Key("int", 20, "timed calls per round, interleaved with dense", low=1),
        "warmup": Key("int", 3, "untimed calls first", low=0),
        "load": Key("int", 0, "busy CPU processes started beside the timing (a loaded machine)", low=0),
    }, "a sparse-kernel benchmark (a kernels recipe)"),
    "outputs": _section({k: v for k, v in SCHEMA["outputs"].keys.items() if k != "tensorboard"},
                        "what the run writes"),
}


def cross_checks(data: dict[str, Any]) -> list[tuple[str, str]]:
    """What one key alone cannot say: the grid's values, and kernels and regimes this machine has."""
    from prunekit.errors import close_matches
    from prunekit.sparse import available_kernels
    from prunekit.sparse.bench import evict_available

    k = data["kernels"]
    problems: list[tuple[str, str]] = []
    shape = k["shape"]
    if len(shape) != 2 or any(not isinstance(v, int) or v < 1 for v in shape):
        problems.append(("kernels.shape", f"expected two positive ints [out, in], got {shape!r}"))
    for key, low, high, what in (("batch_sizes", 1, None, "positive ints"), ("threads", 1, None, "positive ints"),
                                 ("sparsities", 0.0, 1.0, "fractions in [0, 1)"),
                                 ("input_zeros", 0.0, 1.0, "fractions in [0, 1]")):
        values = k[key]
        if values is None:
            continue
        if not values:
            problems.append((f"kernels.{key}", f"expected a non-empty list of {what}, got []"))
        for i, v in enumerate(values):
            bad = v < low or (high is not None and (v > high if key == "input_zeros" else v >= high))
            if bad:
                problems.append((f"kernels.{key}[{i}]", f"expected {what}, got {v!r}"))
    here = [name for name in available_kernels() if name != "dense"]
    for i, name in enumerate(k["kernels"] or []):
        if name not in here:
            problems.append((f"kernels.kernels[{i}]", f"kernel {name!r} is not available here; choose from "
                                                      f"{', '.join(here)}; {close_matches(name, here)}"))
    if "evicted" in k["regimes"] and not evict_available():
        problems.append(("kernels.regimes", "regime 'evicted' needs numba and an x86-64 CPU; use 'flushed'"))
    return problems


def title(data: dict[str, Any]) -> str:
    k = data["kernels"]
    out, inp = k["shape"]
    return data["title"] or f"sparse kernels: Linear {inp} -> {out}, {', '.join(k['kernels'] or ['all kernels'])}"


def _busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning on a core each (a fixed one-line loop, nothing from the recipe)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _cell_row(cell: tuple, regime: str, zeros: float) -> dict[str, Any]:
    """One grid cell from its rounds' ``BenchRow`` s: median times, and the median of the rounds' ratios."""
    first = cell[0]
    return {"kernel": first.kernel, "batch_size": first.batch_size, "sparsity": first.sparsity,
            "threads": first.threads, "regime": regime, "input_zeros": zeros,
            "dense_ms": statistics.median(c.dense_s for c in cell) * 1e3,
            "sparse_ms": statistics.median(c.sparse_s for c in cell) * 1e3,
            "ratio": statistics.median(c.sparse_s / c.dense_s for c in cell),
            "dense_bytes": first.dense_bytes, "sparse_bytes": first.sparse_bytes,
            "index_dtype": first.index_dtype, "rounds": len(cell)}


def bench_step(run: Run) -> None:
    """Time every cell of the grid; one results row per (threads, regime, input zeros, sparsity, batch, kernel)."""
    from prunekit.sparse.bench import bench_linear

    r = run.recipe
    k = r["kernels"]
    threads = k["threads"] or [r["threads"]]
    run.section("kernels")
    out, inp = k["shape"]
    run.say(f"Linear {inp} -> {out}, fp32; {k['rounds']} round(s) of {k['repeats']} calls interleaved with dense "
            f"per cell; {k['load']} busy process(es) beside")
    rows: list[dict[str, Any]] = []
    cells = len(threads) * len(k["regimes"]) * len(k["input_zeros"])
    procs = _busy(k["load"])
    try:
        from prunekit.recipe.pipeline import _bar

        with _bar(run, cells * k["rounds"], "kernels") as bar:
            for t, regime, zeros in itertools.product(threads, k["regimes"], k["input_zeros"]):
                rounds = []
                for _ in range(k["rounds"]):
                    rounds.append(bench_linear((out, inp), k["batch_sizes"], k["sparsities"], k["kernels"],
                                               repeats=k["repeats"], warmup=k["warmup"], threads=t, seed=r["seed"],
                                               regime=regime, input_zeros=zeros))
                    bar.update(1)
                for cell in zip(*rounds):
                    row = _cell_row(cell, regime, zeros)
                    rows.append(row)
                    run.say(f"threads {row['threads']}, {regime}, input zeros {zeros:.0%}, sparsity "
                            f"{row['sparsity']:.0%}, batch {row['batch_size']}, {row['kernel']}: sparse / dense "
                            f"{row['ratio']:.3f} ({row['sparse_ms']:.3f} / {row['dense_ms']:.3f} ms)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    run.results["kernels"] = {"shape": [out, inp], "rounds": k["rounds"], "repeats": k["repeats"],
                              "load": k["load"], "rows": rows}


KERNEL_STEPS = [("kernels", bench_step)]
