"""``prunekit run``: a recipe in, a run folder out; every output read back and checked."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from prunekit import checkpoint
from prunekit import recipe as rc
from prunekit.cli.main import main

pytest.importorskip("yaml")
pytest.importorskip("sklearn")

FAST = """\
title: {title}
model: {{name: digits_cnn}}
data: {{dataset: digits, batch_size: 64}}
train: {{epochs: 2, lr: 0.05}}
prune:
{prune}
recover:
{recover}
deploy: {{enabled: {deploy}, repeats: 2}}
measure: {{latency_repeats: 3}}
outputs: {{progress: "off"}}
"""


def _recipe(tmp_path: Path, name: str = "r", title: str = "fast", deploy: str = "true",
            prune: str = "  allocation: {name: global, sparsity: 0.8}",
            recover: str = "  epochs: 1\n  lr: 0.01") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(FAST.format(title=title, prune=prune, recover=recover, deploy=deploy))
    return path


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("masked")
    out = tmp / "run"
    assert main(["run", str(_recipe(tmp)), "--out", str(out)]) == 0
    return out


def test_the_run_folder_holds_every_output(masked_run: Path) -> None:
    for name in ("model.pt", "recipe.yaml", "results.json", "log.txt", "report.html", "report.md"):
        assert (masked_run / name).is_file(), name
    res = _results(masked_run)
    assert res["status"] == "complete" and res["format"] == "prunekit.run-results"
    assert [s["name"] for s in res["steps"]] == [name for name, _ in rc.STEPS]
    assert "== recovery: 1 epochs" in (masked_run / "log.txt").read_text()


def test_results_match_the_saved_model(masked_run: Path) -> None:
    from prunekit.metrics import count_nonzeros

    res = _results(masked_run)
    model, ckpt = checkpoint.build(masked_run / "model.pt")
    assert ckpt.masks is not None and ckpt.metadata["recipe"]["prune"]["allocation"]["sparsity"] == 0.8
    assert abs(ckpt.masks.sparsity() - 0.8) < 1e-3  # global 80 %, exact up to rounding to whole weights
    assert res["verify"]["masked_weights_zero"] is True
    assert res["summary"]["pruned"]["nonzeros"] == count_nonzeros(model)
    assert res["summary"]["dense"]["nonzeros"] > 4 * res["summary"]["pruned"]["nonzeros"]
    assert len(res["training"]["dense"]) == 2 and len(res["training"]["recovery"]) == 2
    first = res["training"]["recovery"][0]  # epoch 0: the pruned model before recovery, as the log says
    assert first["epoch"] == 0 and first["phase"] == "after pruning"
    assert f"top-1 right after pruning: {100 * first['top1']:.2f}%" in (masked_run / "log.txt").read_text()
    names = [layer["name"] for layer in res["layers"]]
    assert names == ["features.0", "features.3", "features.7", "features.10", "classifier"]
    assert sum(layer["nonzeros"] for layer in res["layers"]) <= res["summary"]["pruned"]["nonzeros"]
    before, after = res["histograms"]["before"], res["histograms"]["after"]
    assert sum(before["counts"]) == before["total"] and after["zeros"] == before["total"] - sum(after["counts"])


def test_every_prunekit_command_reads_the_run_checkpoint(masked_run: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(masked_run / "model.pt")]) == 0
    assert main(["info", "--checkpoint", str(masked_run / "model.pt")]) == 0


def test_the_folders_recipe_repeats_the_run(masked_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["run", str(masked_run / "recipe.yaml"), "--out", str(again)]) == 0
    a, b = _results(masked_run), _results(again)
    for key in ("top1", "nonzeros", "params", "macs"):
        assert a["summary"]["pruned"][key] == b["summary"]["pruned"][key], key
    sa = checkpoint.read(masked_run / "model.pt").state_dict
    sb = checkpoint.read(again / "model.pt").state_dict
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_existing_run_is_never_overwritten_without_force(masked_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["run", str(masked_run / "recipe.yaml"), "--out", str(masked_run)]) == 1
    assert "holds an earlier run; pass --force" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["run", str(masked_run / "recipe.yaml"), "--out", str(other), "--force"]) == 1
    assert "not a prunekit run folder" in capsys.readouterr().err and (other / "notes.txt").read_text() == "mine"


def test_default_folders_are_numbered_not_overwritten(tmp_path: Path) -> None:
    r = rc.loads("model: {name: digits_cnn}\nprune: {allocation: uniform:sparsity=0.5}", "x.yaml")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text("{}")
    assert rc.default_folder(r, tmp_path) == tmp_path / "x-2"


def test_channel_pruning_writes_a_smaller_model_with_its_plan(tmp_path: Path) -> None:
    path = _recipe(tmp_path, prune="  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.5}",
                   recover="  epochs: 1", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    model, ckpt = checkpoint.build(out / "model.pt")
    assert ckpt.plan is not None and ckpt.masks is None
    assert res["summary"]["pruned"]["params"] == sum(p.numel() for p in model.parameters())
    assert res["summary"]["pruned"]["macs"] <= 0.55 * res["summary"]["dense"]["macs"]
    assert res["verify"]["small_equals_masked"] is True


def test_gradual_pruning_with_distillation_reaches_the_target(tmp_path: Path) -> None:
    path = _recipe(tmp_path, prune="  allocation: {name: uniform, sparsity: 0.7}",
                   recover="  epochs: 2\n  schedule: {name: agp, every: 5}\n  distill: {temperature: 2, alpha: 0.5}",
                   deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    sparsities = [row["sparsity"] for row in res["training"]["recovery"]]
    assert sparsities == sorted(sparsities) and abs(sparsities[-1] - 0.7) < 0.01
    assert abs(checkpoint.read(out / "model.pt").masks.sparsity() - 0.7) < 0.01


def test_a_sensitivity_search_puts_curves_and_ratios_in_the_report(tmp_path: Path) -> None:
    path = _recipe(tmp_path, prune="  allocation: {name: global, sparsity: 0.6}\n"
                                   "  search: {ratios: [0.3, 0.6, 0.9], images: 100}", recover="  epochs: 0",
                   deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    assert set(res["search"]["curves"]) == set(res["search"]["ratios"]) and len(res["search"]["ratios"]) == 5
    html = (out / "report.html").read_text()
    assert 'data-figure="sensitivity"' in html and 'data-figure="ratios"' in html


@pytest.mark.parametrize("method", ["masks", "channels"])
def test_a_sensitivity_search_can_score_probes_with_recalibrated_batchnorm(tmp_path: Path, method: str) -> None:
    """prune.search.recalibrate_bn: the same scan, each probe scored after fresh statistics; the batches
    are fixed by the seed (two runs give the same curves) and the report says what the probes did."""
    alloc = "{name: global, sparsity: 0.6}" if method == "masks" else "{name: uniform, sparsity: 0.3}"
    extra = "" if method == "masks" else "  target: macs\n"
    runs = {}
    for name, n in (("plain", 0), ("recal", 3), ("again", 3)):
        prune = (f"  method: {method}\n{extra}  allocation: {alloc}\n"
                 f"  search: {{ratios: [0.3, 0.6, 0.9], images: 100, recalibrate_bn: {n}}}")
        out = tmp_path / name
        assert main(["run", str(_recipe(tmp_path, name, prune=prune, recover="  epochs: 0", deploy="false")),
                     "--out", str(out)]) == 0
        runs[name] = _results(out)["search"]
    assert runs["recal"]["recalibrate_bn"] == 3 and runs["plain"]["recalibrate_bn"] == 0
    assert runs["recal"]["curves"] != runs["plain"]["curves"]
    assert runs["recal"]["curves"] == runs["again"]["curves"] and runs["recal"]["baseline"] == runs["again"]["baseline"]
    text = "re-estimating the BatchNorm statistics downstream of each cut from 3 augmented training batches"
    assert text in (tmp_path / "recal" / "report.md").read_text()
    assert text not in (tmp_path / "plain" / "report.md").read_text()
    assert "from 3 augmented training batches (192 images)" in (tmp_path / "recal" / "log.txt").read_text()


def test_recalibrated_probes_are_refused_where_they_do_not_apply(tmp_path: Path, capsys) -> None:
    prune = ("  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.3}\n"
             "  search: {method: amc, episodes: 4, warmup: 2, images: 100, recalibrate_bn: 2}")
    assert main(["run", str(_recipe(tmp_path, prune=prune, recover="  epochs: 0")), "--out", str(tmp_path / "x"),
                 "--check"]) == 1
    err = capsys.readouterr().err
    assert "prune.search.recalibrate_bn" in err and "not 'amc'" in err and not (tmp_path / "x").exists()
    recipe = rc.load(_recipe(tmp_path, prune="  allocation: {name: global, sparsity: 0.5}\n"
                                             "  search: {images: 100, recalibrate_bn: 2}"))
    no_bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(rc.RecipeError) as exc:
        rc.check_against_model(recipe, no_bn, torch.zeros(2, 1, 8, 8))
    assert all(s in str(exc.value) for s in ("prune.search.recalibrate_bn", "no BatchNorm", "recalibrate_bn: 0"))


def test_ctrl_c_keeps_the_last_checkpoint_and_a_partial_report(tmp_path: Path, monkeypatch, capsys) -> None:
    from prunekit.recipe import pipeline

    def interrupted(run) -> None:
        raise KeyboardInterrupt

    steps = [(name, interrupted if name == "deploy" else step) for name, step in pipeline.STEPS]
    monkeypatch.setitem(pipeline.STEPS_BY_KIND, "pipeline", steps)
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path)), "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    res = _results(out)
    assert res["status"] == "interrupted during step 'deploy'"
    assert [s["status"] for s in res["steps"]][-2:] == ["done", "interrupted"]
    assert "Run stopped" in (out / "report.html").read_text()
    assert "run stopped: interrupted during step 'deploy'" in (out / "log.txt").read_text()
    _, ckpt = checkpoint.build(out / "model.pt")  # the last good checkpoint: pruned and fine-tuned
    assert abs(ckpt.masks.sparsity() - 0.8) < 1e-3


def test_tensorboard_logs_the_fine_tuning(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    path = _recipe(tmp_path, recover="  epochs: 1", deploy="false")
    path.write_text(path.read_text().replace('progress: "off"', 'progress: "off", tensorboard: true'))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_report_rebuilds_and_compares_run_folders(masked_run: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(masked_run, other)
    res = _results(other)
    res["title"] = "the second run"
    (other / "results.json").write_text(json.dumps(res))
    (other / "report.html").unlink()
    assert main(["report", str(other), str(masked_run)]) == 0
    html = (other / "report.html").read_text()
    assert "the second run" in html and _results(masked_run)["title"] in html


def test_check_only_runs_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(_recipe(tmp_path)), "--check"]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok") and not (tmp_path / "runs").exists()


def test_a_bad_recipe_fails_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        model: {name: digits_cnn}
        prune: {allocation: {name: global, sparsity: 2}}
        """))
    assert main(["run", str(bad)]) == 1
    assert "bad.yaml:2: prune.allocation.sparsity" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_newcomers_prunekit_run_writes_the_default_run_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 0
    out = tmp_path / "runs" / "default"
    res = _results(out)
    assert res["status"] == "complete" and (out / "report.html").is_file()
    assert res["summary"]["pruned"]["top1"] > 0.9  # the digits CNN keeps its accuracy at 80 % sparsity
    assert sum(s["seconds"] for s in res["steps"]) < 120


def test_docs_recipes_lists_every_key() -> None:
    from prunekit.recipe.core import SCHEMAS

    def paths(keys, prefix=""):
        for name, key in keys.items():
            path = f"{prefix}.{name}" if prefix else name
            yield path
            if key.type == "section":
                yield from paths(key.keys, path)

    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    missing = [p for schema in SCHEMAS.values() for p in paths(schema) if f"`{p}`" not in text]
    assert not missing, f"docs/recipes.md does not describe: {missing}"


def test_docs_recipes_commands_run_in_order(tmp_path: Path, monkeypatch, capsys, data_root) -> None:
    from test_howto import commands

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "main"
    work.mkdir()
    for name in ("checkpoints", "recipes"):
        (work / name).symlink_to(repo / name)
    (tmp_path / "shared").symlink_to(data_root.parent)
    monkeypatch.chdir(work)
    cmds = commands(repo / "docs" / "recipes.md")
    assert len(cmds) >= 5
    for argv in cmds:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"prunekit {' '.join(argv)} -> {code}: {err}"
    html = (work / "runs" / "quick-again" / "report.html").read_text()
    assert "Comparison" in html or "comparison" in html


@pytest.mark.parametrize("search, budget", [
    ("{method: sensitivity, ratios: [0.3, 0.6], images: 100}", "macs"),
    ("{method: sensitivity, ratios: [0.3, 0.6], images: 100, workers: 2}", "latency"),
    ("{method: netadapt, latency_ratio: 0.95, step: 0.3, images: 100}", "macs"),
])
def test_channel_searches_make_the_smaller_model_of_the_run(tmp_path: Path, search: str, budget: str) -> None:
    cut = 0.1 if budget == "latency" else 0.4  # a tiny model's batch-1 latency is mostly fixed overhead
    path = _recipe(tmp_path, prune=f"  method: channels\n  target: {budget}\n  allocation: {{name: uniform, "
                                   f"sparsity: {cut}}}\n  search: {search}", recover="  epochs: 0", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    model, ckpt = checkpoint.build(out / "model.pt")
    assert ckpt.plan is not None and res["pruning"]["search"] == res["search"]["method"]
    assert res["summary"]["pruned"]["params"] == sum(p.numel() for p in model.parameters())
    if budget == "latency":  # the search's own interleaved measurement met the budget
        assert res["search"]["latency_kept"] <= 0.9 and res["search"]["budget"] == "latency"
        assert "of the measured latency kept" in (out / "report.md").read_text()
    elif res["search"]["method"] == "sensitivity":
        assert res["summary"]["pruned"]["macs"] <= 0.6 * res["summary"]["dense"]["macs"]
        assert 'data-figure="sensitivity"' in (out / "report.html").read_text()
    else:
        assert res["search"]["iterations"] and len(ckpt.plan.steps) == len(res["search"]["iterations"])


def test_an_amc_search_in_a_recipe(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    path = _recipe(tmp_path, prune="  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.4}\n"
                                   "  search: {method: amc, episodes: 4, warmup: 2, images: 100}",
                   recover="  epochs: 0", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    assert res["search"]["method"] == "amc" and res["search"]["ratios"]
    assert res["summary"]["pruned"]["macs"] <= 0.61 * res["summary"]["dense"]["macs"]
    assert 'data-figure="ratios"' in (out / "report.html").read_text()


def test_admm_trains_towards_the_masks_then_hard_prunes_and_fine_tunes(tmp_path: Path) -> None:
    path = _recipe(tmp_path, prune="  allocation: {name: global, sparsity: 0.8}",
                   recover="  epochs: 1\n  lr: 0.01\n  admm: {epochs: 2, rho: 0.01, every: 5}", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    rows = res["training"]["recovery"]
    assert [r.get("phase") for r in rows] == ["admm", "admm", "fine-tune"] and [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["admm_rho"] > 0.01 for r in rows[:2])  # rho grew at the Z-steps
    assert 0.0 <= res["admm"]["top1_after_hard_prune"] <= 1.0 and res["admm"]["epochs"] == 2
    top1 = f"top-1 {100 * res['admm']['top1_after_hard_prune']:.2f} % right after it"
    assert top1 in (out / "report.md").read_text() and top1 in (out / "report.html").read_text()
    ckpt = checkpoint.read(out / "model.pt")
    assert abs(ckpt.masks.sparsity() - 0.8) < 0.005 and abs(res["pruning"]["sparsity"] - 0.8) < 0.005
    model, _ = checkpoint.build(out / "model.pt")
    for name, keep in ckpt.masks.items():  # the fine-tune kept the hard-pruned zeros
        weight = model.get_submodule(name.split("::")[0]).weight
        assert not weight[~keep.bool()].any()


def _bn_stats(folder: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.read(folder / "model.pt").state_dict
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("method", ["masks", "channels"])
def test_batchnorm_recalibration_saves_fresh_statistics_and_reports_the_gain(tmp_path: Path, method: str) -> None:
    prune = f"  method: {method}\n  allocation: {{name: {'global' if method == 'masks' else 'uniform'}, sparsity: 0.6}}"
    plain, recal = tmp_path / "plain", tmp_path / "recal"
    assert main(["run", str(_recipe(tmp_path, "p", prune=prune, recover="  epochs: 0", deploy="false")),
                 "--out", str(plain)]) == 0
    assert main(["run", str(_recipe(tmp_path, "r", prune=prune, recover="  epochs: 0\n  recalibrate_bn: 4",
                                    deploy="false")), "--out", str(recal)]) == 0
    res, before, after = _results(recal), _bn_stats(plain), _bn_stats(recal)
    assert before.keys() == after.keys() and before
    assert all(not torch.equal(before[k], after[k]) for k in before), "statistics not re-estimated"
    bn = res["recalibrate_bn"]
    assert bn["batches"] == 4 and bn["images"] == 4 * 64 and bn["layers"] == len(before) // 2
    assert bn["top1_before"] == _results(plain)["summary"]["pruned"]["top1"]  # the model right after pruning
    assert bn["top1"] == res["summary"]["pruned"]["top1"]  # the saved model is the recalibrated one
    text = f"from {100 * bn['top1_before']:.2f} % to {100 * bn['top1']:.2f} %"
    assert text in (recal / "report.md").read_text() and text in (recal / "report.html").read_text()


def test_batchnorm_recalibration_comes_first_in_the_recovery_curve(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, recover="  epochs: 1\n  lr: 0.01\n  recalibrate_bn: 2",
                                    deploy="false")), "--out", str(out)]) == 0
    res = _results(out)
    rows = res["training"]["recovery"]
    assert [r.get("phase") for r in rows[:2]] == ["after pruning", "after BN recalibration"] and len(rows) == 3
    assert rows[1]["top1"] == res["recalibrate_bn"]["top1"] and rows[0]["top1"] == res["recalibrate_bn"]["top1_before"]


@pytest.mark.parametrize("recover, prune, needle", [
    ("  epochs: 2\n  recalibrate_bn: 2\n  schedule: {name: agp}", "  allocation: {name: global, sparsity: 0.5}",
     "masks change while fine-tuning"),
    ("  epochs: 1\n  recalibrate_bn: 2", "  method: none", "prunes nothing"),
    ("  epochs: 1\n  recalibrate_bn: -1", "  allocation: {name: global, sparsity: 0.5}", "recalibrate_bn"),
])
def test_batchnorm_recalibration_refuses_what_it_cannot_do(tmp_path: Path, capsys, recover: str, prune: str,
                                                         needle: str) -> None:
    assert main(["run", str(_recipe(tmp_path, prune=prune, recover=recover)), "--out", str(tmp_path / "x"),
                 "--check"]) == 1
    err = capsys.readouterr().err
    assert "recover.recalibrate_bn" in err and needle in err and not (tmp_path / "x").exists()


def test_batchnorm_recalibration_of_a_model_without_batchnorm_fails_at_load(tmp_path: Path) -> None:
    recipe = rc.load(_recipe(tmp_path, recover="  epochs: 1\n  recalibrate_bn: 2"))
    no_bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(rc.RecipeError) as err:
        rc.check_against_model(recipe, no_bn, torch.zeros(2, 1, 8, 8))
    assert all(s in str(err.value) for s in ("recover.recalibrate_bn", "no BatchNorm layer", "recalibrate_bn: 0"))


def _gamma_l1(folder: Path) -> float:
    model, _ = checkpoint.build(folder / "model.pt")
    return sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_a_slimming_term_in_dense_training_shrinks_the_batchnorm_scales(tmp_path: Path) -> None:
    runs = {}
    for strength in (None, 0.1):
        text = _recipe(tmp_path, name=f"s{strength}", prune="  method: none", recover="  epochs: 0",
                       deploy="false").read_text()
        if strength is not None:
            text = text.replace("train: {epochs: 2, lr: 0.05}",
                                f"train: {{epochs: 2, lr: 0.05, regularizer: {{name: slimming, strength: {strength}}}}}")
        path = tmp_path / f"s{strength}.yaml"
        path.write_text(text)
        runs[strength] = tmp_path / f"run{strength}"
        assert main(["run", str(path), "--out", str(runs[strength])]) == 0
    assert "loss term: Slimming(" in (runs[0.1] / "log.txt").read_text()
    assert _gamma_l1(runs[0.1]) < 0.8 * _gamma_l1(runs[None])  # same seed, same data: only the term differs


@pytest.mark.parametrize("name", sorted(rc.REGULARIZERS))
def test_every_loss_term_trains_the_smaller_model_of_a_channel_run(tmp_path: Path, name: str) -> None:
    path = _recipe(tmp_path, prune="  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.3}",
                   recover=f"  epochs: 1\n  steps_per_epoch: 3\n  regularizer: {{name: {name}, strength: 0.0001}}",
                   deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    term = (out / "log.txt").read_text().split("loss term: ")[1].split("\n")[0]
    assert term.lower().replace("grouplasso", "group_lasso").startswith(name)
    if name == "group_lasso":  # channels: the groups default to output channels
        assert "Channel" in term
    assert [r["epoch"] for r in _results(out)["training"]["recovery"]] == [0, 1]


def test_model_options_build_the_model_and_travel_in_its_checkpoint(tmp_path: Path, capsys) -> None:
    text = _recipe(tmp_path, recover="  epochs: 0", deploy="false").read_text()
    path = tmp_path / "w.yaml"
    path.write_text(text.replace("model: {name: digits_cnn}", "model: {name: digits_cnn, config: {width: 8}}"))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    model, ckpt = checkpoint.build(out / "model.pt")
    from prunekit.models import create

    assert ckpt.model_config == {"width": 8}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in create("digits_cnn", width=8).parameters())
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("model: {name: digits_cnn}", "model: {name: digits_cnn, config: {widht: 8}}"))
    capsys.readouterr()
    assert main(["run", str(bad), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml:2: model.config: model 'digits_cnn' has no option 'widht'" in err and "did you mean: 'width'" in err


def test_lottery_rounds_end_at_the_allocations_sparsity_with_the_ticket_as_the_pruned_model(tmp_path: Path) -> None:
    path = _recipe(tmp_path, prune="  allocation: {name: global, sparsity: 0.75}",
                   recover="  epochs: 0\n  lottery: {rounds: 2, rewind_step: 3, control: true}", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    rounds = res["lottery"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [round(r["remaining"], 2) for r in rounds] == [1.0, 0.5, 0.25]  # (1 - rate) ** r with rate 0.5
    assert res["summary"]["dense"]["top1"] == rounds[0]["top1"]  # the run's dense model is round 0's
    assert res["summary"]["pruned"]["top1"] == rounds[-1]["top1"]  # the pruned model is the last ticket
    assert 0.0 <= res["lottery"]["random_reinit"]["top1"] <= 1.0
    assert abs(checkpoint.read(out / "model.pt").masks.sparsity() - 0.75) < 0.005
    html = (out / "report.html").read_text()
    assert 'data-figure' in html and "Lottery ticket" in html and "fresh random initialisation" in html


@pytest.mark.parametrize("method", ["masks", "channels"])
def test_weight_sharing_writes_shared_values_and_eie_bytes(tmp_path: Path, method: str) -> None:
    prune = ("  allocation: {name: global, sparsity: 0.8}" if method == "masks"
             else "  method: channels\n  allocation: {name: uniform, sparsity: 0.3}")
    path = _recipe(tmp_path, deploy="false", prune=prune,
                   recover="  epochs: 1\n  lr: 0.01\n  weight_sharing: {bits: 3, epochs: 1, lr: 0.001}")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    res = _results(out)
    ws = res["weight_sharing"]
    model, ckpt = checkpoint.build(out / "model.pt")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert sorted(r["name"] for r in ws["layers"]) == sorted(linears)
    for row in ws["layers"]:
        w = linears[row["name"]].weight.detach()
        assert torch.unique(w).numel() == row["values"] <= 2 ** 3  # the shared values are the weights
        assert row["nonzeros"] == int((w != 0).sum()) and row["eie_bytes"] < row["dense_bytes"]
    if method == "masks":  # sharing keeps every masked zero: the sparsity is still exact
        assert abs(ckpt.masks.sparsity() - 0.8) < 1e-3
        assert all(torch.equal(linears[n].weight == 0, ckpt.masks[n] == 0) for n in linears if n in ckpt.masks)
    assert res["summary"]["pruned"]["top1"] == pytest.approx(ws["top1_tuned"])  # the model measured is the shared one
    md = (out / "report.md").read_text()
    assert "## Weight sharing and EIE storage" in md and "| total |" in md


def test_regression_reconstruction_cuts_each_conv_and_saves_a_plan(tmp_path: Path) -> None:
    prune = ("  method: channels\n  allocation: {name: uniform, sparsity: 0.5}\n  exclude: [features.11]\n"
             "  calibration_batches: 2\n  reconstruct: {selection: lasso, positions: 4}")
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, deploy="false", prune=prune, recover="  epochs: 0")), "--out",
                 str(out)]) == 0
    res = _results(out)
    rows = res["reconstruct"]
    assert [r["name"] for r in rows] == ["features.3", "features.7", "features.10"]  # block inputs, model order
    assert all(r["in_after"] < r["in_before"] and 0 <= r["relative_error"] < 1 for r in rows)
    model, ckpt = checkpoint.build(out / "model.pt")  # the original architecture + the plan, refitted weights
    assert len(ckpt.plan.steps) == 3
    assert [model.features[i].in_channels for i in (3, 7, 10)] == [r["in_after"] for r in rows]
    assert "verify" not in res  # refitted weights are not the masked model's: nothing to verify against


def test_regression_reconstruction_at_the_sizes_a_search_found(tmp_path: Path) -> None:
    """prune.search decides how many channels each group keeps; prune.reconstruct which, and refits them."""
    prune = ("  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.4}\n  exclude: [features.11]\n"
             "  search: {method: sensitivity, ratios: [0.3, 0.6], images: 100}\n  calibration_batches: 2")
    states = {}
    for name, extra in (("search", ""), ("both", "\n  reconstruct: {selection: lasso, positions: 4}")):
        out = tmp_path / name
        assert main(["run", str(_recipe(tmp_path, name=name, deploy="false", prune=prune + extra,
                                        recover="  epochs: 0")), "--out", str(out)]) == 0
        model, ckpt = checkpoint.build(out / "model.pt")
        states[name] = model.state_dict()
    res = _results(out)
    assert res["pruning"]["search"] == "sensitivity" and res["reconstruct"]
    assert len(ckpt.plan.steps) == len(res["reconstruct"])  # one plan step per refitted conv
    a, b = states["search"], states["both"]
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}  # the searched sizes
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("weight"))  # other channels / refitted weights


def test_regression_reconstruction_names_a_cut_it_cannot_refit(tmp_path: Path, capsys) -> None:
    prune = "  method: channels\n  allocation: {name: uniform, sparsity: 0.5}\n  reconstruct: {positions: 2}"
    assert main(["run", str(_recipe(tmp_path, deploy="false", prune=prune, recover="  epochs: 0")), "--out",
                 str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "prune.reconstruct refits convs" in err and "classifier.weight" in err and "prune.exclude" in err


@pytest.mark.parametrize("search", [
    "{method: sensitivity, ratios: [0.3, 0.6], images: 100}",
    "{method: netadapt, latency_ratio: 0.95, step: 0.3, images: 100}",
])
def test_channel_searches_rank_channels_by_the_recipes_criterion(tmp_path: Path, search: str) -> None:
    """prune.criterion decides which channels of each group a search removes (it was silently L1 before)."""
    models = {}
    for criterion in ("l1", "random"):
        path = _recipe(tmp_path, name=criterion, prune=f"  method: channels\n  criterion: {criterion}\n  target: "
                       f"macs\n  allocation: {{name: uniform, sparsity: 0.4}}\n  search: {search}",
                       recover="  epochs: 0", deploy="false")
        out = tmp_path / criterion
        assert main(["run", str(path), "--out", str(out)]) == 0
        models[criterion] = checkpoint.build(out / "model.pt")[0].state_dict()
        assert _results(out)["pruning"]["criterion"] == criterion
    a, b = models["l1"], models["random"]
    assert a.keys() != b.keys() or any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a.values(), b.values()))


class _StopAt:
    """An echo that raises KeyboardInterrupt (as Ctrl-C would) when a line starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, line: str) -> None:
        if line.startswith(self.prefix):
            raise KeyboardInterrupt


def _rows(results: dict) -> dict:
    return {label: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
            for label, rows in results["training"].items()}


RESUMABLE = {  # recover section, the line at which the first run is stopped
    "dense training": ("  epochs: 1\n  lr: 0.01", "dense epoch 1/2"),
    "fine-tuning": ("  epochs: 2\n  lr: 0.01", "recovery epoch 1/2"),
    "distillation": ("  epochs: 2\n  lr: 0.01\n  distill: {temperature: 2, alpha: 0.5}", "recovery epoch 1/2"),
    "agp": ("  epochs: 2\n  lr: 0.01\n  schedule: {name: agp, every: 5}", "recovery epoch 1/2"),
    "admm": ("  epochs: 2\n  lr: 0.01\n  admm: {epochs: 2, rho: 0.01, every: 5}", "admm epoch 1/2"),
    "BN recalibration, then fine-tuning": ("  epochs: 2\n  lr: 0.01\n  recalibrate_bn: 3", "recovery epoch 1/2"),
    "admm, then fine-tuning": ("  epochs: 2\n  lr: 0.01\n  admm: {epochs: 1, rho: 0.01, every: 5}",
                               "fine-tune epoch 1/2"),
}


@pytest.mark.parametrize("case", sorted(RESUMABLE))
def test_a_stopped_run_resumes_to_the_same_model_as_an_uninterrupted_one(case: str, tmp_path: Path) -> None:
    recover, stop = RESUMABLE[case]
    path = _recipe(tmp_path, recover=recover + "\n  steps_per_epoch: 6", deploy="false")
    recipe = rc.load(path)
    whole = rc.run_recipe(recipe, tmp_path / "whole", echo=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        rc.run_recipe(recipe, tmp_path / "stopped", echo=_StopAt(stop))
    stopped = _results(tmp_path / "stopped")
    assert stopped["status"].startswith("interrupted") and list((tmp_path / "stopped").glob("fit-*.state"))
    lines: list[str] = []
    resumed = rc.run_recipe(recipe, tmp_path / "stopped", resume=True, echo=lines.append)
    assert resumed["status"] == "complete" and resumed["resumed"][0]["earlier_status"] == stopped["status"]
    assert any("resuming after epoch 1/2" in line for line in lines), lines
    assert _rows(resumed) == _rows(whole)
    a = checkpoint.read(tmp_path / "whole" / "model.pt")
    b = checkpoint.read(tmp_path / "stopped" / "model.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), "not bit-exact"
    assert resumed["summary"]["pruned"]["top1"] == whole["summary"]["pruned"]["top1"]
    assert not list((tmp_path / "stopped").glob("fit-*.state"))  # a complete run cannot be resumed
    log = (tmp_path / "stopped" / "log.txt").read_text()
    assert "run stopped: interrupted" in log and "== resumed" in log  # both runs' lines are kept


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, capsys) -> None:
    path = _recipe(tmp_path, recover="  epochs: 2\n  steps_per_epoch: 4", deploy="false")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 1
    assert "holds no earlier run" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        rc.run_recipe(rc.load(path), out, echo=_StopAt("recovery epoch 1/2"))
    other = _recipe(tmp_path, name="other", recover="  epochs: 3\n  steps_per_epoch: 4", deploy="false")
    assert main(["run", str(other), "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "recover.epochs" in err and f"{out / 'recipe.yaml'} --out {out} --resume" in err
    state = next(out.glob("fit-*.state"))
    saved = torch.load(state, weights_only=True)
    name = next(iter(saved["masks"]))
    saved["masks"][name] = ~saved["masks"][name]  # as if the criterion had cut other weights this time
    torch.save(saved, state)
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 1
    assert f"the model pruned now differs from the interrupted run's ({name})" in capsys.readouterr().err
    state.write_bytes(b"not a torch file")
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 1
    assert f"{state} cannot be read" in capsys.readouterr().err
    state.unlink()  # no saved epoch: that training starts over, the rest of the run goes on
    assert main(["run", str(path), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "no saved epoch" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 1
    assert "completed, there is nothing to continue" in capsys.readouterr().err
    stale = out / "fit-recovery-admm.state"  # left by some earlier run in this folder
    stale.write_bytes(b"")
    with pytest.raises(KeyboardInterrupt):
        rc.run_recipe(rc.load(other), out, force=True, echo=_StopAt("recovery epoch 1/3"))
    assert not stale.exists() and (out / "fit-recovery.state").is_file()  # --force replaces the run


def test_resume_without_out_continues_the_last_numbered_folder(tmp_path: Path) -> None:
    recipe = rc.load(_recipe(tmp_path, name="job"))
    root = tmp_path / "runs"
    assert rc.default_folder(recipe, root, resume=True) == root / "job"  # nothing yet: refused later
    for folder in ("job", "job-2"):
        (root / folder).mkdir(parents=True)
        (root / folder / "results.json").write_text("{}")
    assert rc.default_folder(recipe, root) == root / "job-3"
    assert rc.default_folder(recipe, root, resume=True) == root / "job-2"


CHANNELS = "  method: channels\n  target: macs\n  allocation: {name: uniform, sparsity: 0.5}"


def test_channel_rounds_reach_the_one_shot_cut_and_fine_tune_after_each(tmp_path: Path) -> None:
    """recover.schedule iterative with channels: N physical cuts, each followed by its share of the
    epochs, ending with exactly the channel counts the one-shot cut has; the model saves and rebuilds."""
    from prunekit.metrics import count_params

    once = tmp_path / "once"
    assert main(["run", str(_recipe(tmp_path, name="once", prune=CHANNELS, recover="  epochs: 0", deploy="false")),
                 "--out", str(once)]) == 0
    rounds = tmp_path / "rounds"
    recover = "  epochs: 4\n  lr: 0.01\n  steps_per_epoch: 3\n  schedule: {name: iterative, rounds: 3}"
    assert main(["run", str(_recipe(tmp_path, name="rounds", prune=CHANNELS, recover=recover, deploy="false")),
                 "--out", str(rounds)]) == 0
    small_once, _ = checkpoint.build(once / "model.pt")
    small, ckpt = checkpoint.build(rounds / "model.pt")
    assert {n: p.shape for n, p in small.named_parameters()} == {n: p.shape for n, p in small_once.named_parameters()}
    assert len(ckpt.plan.steps) == 3  # one plan step per round: rebuilt from the original architecture
    res = _results(rounds)
    rows = res["channel_rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3] and [r["epochs"] for r in rows] == [1, 1, 2]
    params = [r["params"] for r in rows]
    assert params == sorted(params, reverse=True) and len(set(params)) == 3 and params[-1] == count_params(small)
    assert all(r["units_removed"] > 0 for r in rows)
    curve = res["training"]["recovery"]
    assert [(r["epoch"], r.get("phase")) for r in curve] == [
        (0, "after cut 1"), (1, "round1"), (1, "after cut 2"), (2, "round2"), (2, "after cut 3"), (3, "round3"),
        (4, "round3")]
    assert rows[-1]["top1"] == curve[-1]["top1"] == res["summary"]["pruned"]["top1"]
    assert res["verify"]["small_equals_masked"] is True and res["verify"]["round"] == 3
    log = (rounds / "log.txt").read_text()
    assert "reached in 3 rounds during recovery" in log and "== channel round 2/3" in log
    assert "Channel rounds" in (rounds / "report.md").read_text()


def test_stopped_channel_rounds_resume_to_the_uninterrupted_model(tmp_path: Path) -> None:
    recover = "  epochs: 4\n  lr: 0.01\n  steps_per_epoch: 3\n  schedule: {name: iterative, rounds: 2}"
    recipe = rc.load(_recipe(tmp_path, prune=CHANNELS, recover=recover, deploy="false"))
    whole = rc.run_recipe(recipe, tmp_path / "whole", echo=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        rc.run_recipe(recipe, tmp_path / "stopped", echo=_StopAt("round2 epoch 1/2"))
    lines: list[str] = []
    resumed = rc.run_recipe(recipe, tmp_path / "stopped", resume=True, echo=lines.append)
    assert any("round1: resuming after epoch 2/2" in line for line in lines), lines
    assert any("round2: resuming after epoch 1/2" in line for line in lines), lines
    assert _rows(resumed) == _rows(whole) and resumed["channel_rounds"] == whole["channel_rounds"]
    a = checkpoint.read(tmp_path / "whole" / "model.pt")
    b = checkpoint.read(tmp_path / "stopped" / "model.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), "not bit-exact"


def test_one_channel_round_is_the_one_shot_cut_and_fine_tune(tmp_path: Path) -> None:
    recover = "  epochs: 2\n  lr: 0.01\n  steps_per_epoch: 3"
    models = {}
    for name, extra in (("once", ""), ("round", "\n  schedule: {name: iterative, rounds: 1}")):
        out = tmp_path / name
        assert main(["run", str(_recipe(tmp_path, name=name, prune=CHANNELS, recover=recover + extra,
                                        deploy="false")), "--out", str(out)]) == 0
        models[name] = checkpoint.read(out / "model.pt").state_dict
    a, b = models["once"], models["round"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "one round differs from one shot"


def test_channel_rounds_reach_a_searched_cut(tmp_path: Path) -> None:
    search = "\n  search: {method: sensitivity, ratios: [0.3, 0.6], images: 100}"
    shapes = {}
    for name, extra in (("once", "  epochs: 0"), ("rounds", "  epochs: 2\n  steps_per_epoch: 2\n  schedule: "
                                                 "{name: iterative, rounds: 2}")):
        out = tmp_path / name
        assert main(["run", str(_recipe(tmp_path, name=name, prune=CHANNELS + search, recover=extra,
                                        deploy="false")), "--out", str(out)]) == 0
        shapes[name] = {n: p.shape for n, p in checkpoint.build(out / "model.pt")[0].named_parameters()}
    assert shapes["rounds"] == shapes["once"]
    assert len(_results(tmp_path / "rounds")["channel_rounds"]) == 2
