"""Kernel recipes: a sparse-kernel benchmark run by ``prunekit run``, its folder, report and mistakes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from prunekit import recipe as rc
from prunekit.recipe import kernels as kernel_recipe
from prunekit.recipe.schema import RecipeError
from prunekit.sparse.bench import BenchRow

pytest.importorskip("yaml")

SMALL = """\
version: 1
title: small grid
kernels:
  shape: [64, 96]
  batch_sizes: [1, 3]
  sparsities: [0.5, 0.9]
  kernels: [torch_csr]
  rounds: 2
  repeats: 2
  warmup: 1
"""


def test_a_kernels_recipe_runs_every_cell_into_a_run_folder(tmp_path: Path) -> None:
    recipe = rc.loads(SMALL)
    assert recipe.kind == "kernels"
    out = tmp_path / "run"
    results = rc.run_recipe(recipe, out, echo=lambda _: None)
    assert results["status"] == "complete"
    rows = json.loads((out / "results.json").read_text())["kernels"]["rows"]
    assert sorted((r["sparsity"], r["batch_size"]) for r in rows) == [(0.5, 1), (0.5, 3), (0.9, 1), (0.9, 3)]
    assert all(r["kernel"] == "torch_csr" and r["rounds"] == 2 and r["ratio"] > 0 for r in rows)
    assert not (out / "model.pt").exists()
    assert rc.load(out / "recipe.yaml").data == recipe.data  # the folder's recipe repeats the run
    md = (out / "report.md").read_text()
    assert "## Sparse kernels" in md and md.count("| torch\\_csr |") == 4
    assert "No summary" not in md and "A kernel benchmark: 4 cells timed" in md
    pytest.importorskip("matplotlib")
    assert (out / "figures" / "kernels.png").stat().st_size > 1000


def _row(kernel: str, dense: float, sparse: float) -> BenchRow:
    return BenchRow(kernel=kernel, batch_size=1, sparsity=0.9, dense_s=dense, sparse_s=sparse, dense_bytes=4,
                    sparse_bytes=1, index_dtype="int32", threads=1)


def test_a_cell_is_the_median_of_its_rounds_ratios_and_load_processes_stop(tmp_path: Path, monkeypatch) -> None:
    import prunekit.sparse.bench as bench

    rounds = iter([(1.0, 0.5), (2.0, 0.2), (1.0, 0.9)])  # ratios 0.5, 0.1, 0.9 -> median 0.5
    started: list[subprocess.Popen] = []
    busy = kernel_recipe._busy

    def fake_bench(*args, **kwargs):
        assert started and all(p.poll() is None for p in started)  # the load runs during the timing
        dense, sparse = next(rounds)
        return [_row("torch_csr", dense, sparse)]

    def spy_busy(n: int):
        started.extend(busy(n))
        return started

    monkeypatch.setattr(bench, "bench_linear", fake_bench)
    monkeypatch.setattr(kernel_recipe, "_busy", spy_busy)
    recipe = rc.loads(SMALL.replace("rounds: 2", "rounds: 3\n  load: 1"))
    results = rc.run_recipe(recipe, tmp_path / "run", echo=lambda _: None)
    (row,) = results["kernels"]["rows"]
    assert row["ratio"] == pytest.approx(0.5) and row["dense_ms"] == pytest.approx(1000.0)
    assert row["sparse_ms"] == pytest.approx(500.0)  # medians of each time, not of the ratio
    assert len(started) == 1 and started[0].poll() is not None  # stopped after the run


KERNEL_MISTAKES = [
    ("unknown kernel", SMALL.replace("[torch_csr]", "[torch_cs]"), "kernels.kernels[0]", 7,
     "did you mean: 'torch_csr'"),
    ("shape of three sizes", SMALL.replace("[64, 96]", "[64, 96, 3]"), "kernels.shape", 4, "two positive ints"),
    ("sparsity of one", SMALL.replace("[0.5, 0.9]", "[0.5, 1.0]"), "kernels.sparsities[1]", 6, "in [0, 1)"),
    ("unknown regime", SMALL + "  regimes: [cold]\n", "kernels.regimes[0]", 11, "one of ['warm', 'evicted'"),
    ("a model in a kernels recipe", SMALL + "model: {name: resnet20}\n", "model", 11,
     "a recipe takes: version, title, seed, threads, kernels, outputs"),
    ("negative load", SMALL + "  load: -1\n", "kernels.load", 11, "in [0"),
    ("empty batch list", SMALL.replace("[1, 3]", "[]"), "kernels.batch_sizes", 5, "non-empty list"),
]


@pytest.mark.parametrize("what, text, path, line, fragment", KERNEL_MISTAKES, ids=[m[0] for m in KERNEL_MISTAKES])
def test_kernel_recipe_mistakes_are_named_with_key_and_line(what, text, path, line, fragment) -> None:
    with pytest.raises(RecipeError) as info:
        rc.loads(text, "k.yaml")
    problems = info.value.problems
    assert (path, line) in [(p, ln) for p, ln, _ in problems], problems
    message = next(m for p, ln, m in problems if (p, ln) == (path, line))
    assert fragment in message, message


def test_cli_checks_and_runs_a_kernels_recipe(tmp_path: Path, capsys) -> None:
    from prunekit.cli.main import main

    path = tmp_path / "k.yaml"
    path.write_text(SMALL.replace("[0.5, 0.9]", "[0.9]").replace("[1, 3]", "[1]"))
    assert main(["run", str(path), "--check"]) == 0
    assert f"{path}: ok" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "run complete" in last and "model.pt" not in last
    assert len(json.loads((tmp_path / "r" / "results.json").read_text())["kernels"]["rows"]) == 1
