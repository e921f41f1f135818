"""Recipes: complete validation with line numbers, safe loading, the resolved round trip."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from prunekit import recipe as rc
from prunekit.recipe import RecipeError

pytest.importorskip("yaml")

GOOD = """\
model:
  name: digits_cnn
data:
  dataset: digits
prune:
  criterion: l1
  allocation: {name: global, sparsity: 0.8}
recover:
  epochs: 1
"""


def _problems(text: str, tmp_path: Path | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(RecipeError) as info:
        rc.loads(textwrap.dedent(text), "r.yaml")
    return info.value.problems


# (what is wrong, the recipe, the key path the error names, its line, a fragment of the message)
MISTAKES = [
    ("unknown top-level key", GOOD + "prnue: {}\n", "prnue", 10, "did you mean: 'prune'"),
    ("unknown nested key", GOOD.replace("criterion: l1", "criterium: l1"), "prune.criterium", 6,
     "did you mean: 'criterion'"),
    ("wrong type", GOOD.replace("epochs: 1", "epochs: three"), "recover.epochs", 9, "expected int"),
    ("float where an int belongs", GOOD.replace("epochs: 1", "epochs: 1.5"), "recover.epochs", 9, "got a number 1.5"),
    ("out-of-range ratio", GOOD.replace("sparsity: 0.8", "sparsity: 1.5"), "prune.allocation.sparsity", 7,
     "sparsity"),
    ("negative epochs", GOOD.replace("epochs: 1", "epochs: -2"), "recover.epochs", 9, "in [0"),
    ("unknown criterion", GOOD.replace("criterion: l1", "criterion: magnitud"), "prune.criterion", 6,
     "did you mean: 'magnitude'"),
    ("unknown criterion parameter", GOOD.replace("criterion: l1", "criterion: {name: magnitude, q: 2}"),
     "prune.criterion.q", 6, "has no parameter 'q'"),
    ("unknown granularity", GOOD.replace("criterion: l1", "criterion: l1\n  granularity: blok"),
     "prune.granularity", 7, "did you mean: 'block'"),
    ("unknown allocation", GOOD.replace("name: global", "name: globl"), "prune.allocation", 7, "'global'"),
    ("missing allocation", GOOD.replace("  allocation: {name: global, sparsity: 0.8}\n", ""), "prune.allocation",
     5, "missing"),
    ("missing model name", GOOD.replace("  name: digits_cnn\n", "  checkpoint: null\n"), "model.name", 1, "missing"),
    ("bad choice", GOOD.replace("criterion: l1", "criterion: l1\n  method: prune"), "prune.method", 7,
     "one of ['masks', 'channels', 'none']"),
    ("unknown data set", GOOD.replace("dataset: digits", "dataset: imagenet"), "data.dataset", 4,
     "one of ['cifar10', 'mnist', 'digits']"),
    ("missing data path", GOOD.replace("dataset: digits", "dataset: cifar10\n  path: /nonexistent/c.npz"),
     "data.path", 5, "not found at /nonexistent/c.npz"),
    ("missing checkpoint", GOOD.replace("  name: digits_cnn\n", "  name: digits_cnn\n  checkpoint: nope.pt\n"),
     "model.checkpoint", 3, "does not exist"),
    ("section that is not a mapping", GOOD.replace("recover:\n  epochs: 1\n", "recover: 3\n"), "recover", 8,
     "expected a mapping"),
    ("duplicate key", GOOD + "recover:\n  epochs: 2\n", "recover", 10, "duplicate key (first given on line 8)"),
    ("invalid YAML", GOOD.replace("  criterion: l1", "  criterion: [l1"), "", 7, "not valid YAML"),
    ("Python tag", GOOD.replace("criterion: l1", "criterion: !!python/object/apply:os.system ['echo hi']"), "",
     6, "is not allowed"),
    ("method-specific key", GOOD.replace("criterion: l1", "criterion: l1\n  target: macs"), "prune.target", 7,
     "method channels only"),
    ("schedule without recovery", GOOD.replace("epochs: 1", "epochs: 0\n  schedule: agp"), "recover.schedule", 10,
     "set recover.epochs > 0"),
    ("unknown schedule parameter", GOOD.replace("epochs: 1", "epochs: 1\n  schedule: {name: agp, evry: 5}"),
     "recover.schedule.evry", 10, "has no parameter 'evry'"),
    ("ratio override out of range", GOOD.replace("criterion: l1", "criterion: l1\n  layers: {classifier: 1.0}"),
     "prune.layers.classifier", 7, "ratio in [0, 1)"),
    ("both checkpoint and pretrained", GOOD.replace("  name: digits_cnn\n",
                                                    "  name: digits_cnn\n  checkpoint: a.pt\n  pretrained: b.pt\n"),
     "model.pretrained", 4, "not both"),
    ("unsupported version", "version: 2\n" + GOOD, "version", 1, "one of [1]"),
    ("unknown search method", GOOD.replace("criterion: l1", "criterion: l1\n  search: {method: amk}"),
     "prune.search.method", 7, "unknown search 'amk'; choose one of: sensitivity"),
    ("channel search with masks", GOOD.replace("criterion: l1", "criterion: l1\n  search: {method: netadapt}"),
     "prune.search.method", 7, "netadapt removes channels: set prune.method: channels"),
    ("unknown worker pool", GOOD.replace("criterion: l1", "criterion: l1\n  search: {method: sensitivity, pool: rey}"),
     "prune.search.pool", 7, "unknown pool 'rey'; choose one of: process, ray"),
    ("latency budget without a search", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels\n  "
                                                                       "target: latency"),
     "prune.target", 8, "add prune.search (method: sensitivity)"),
    ("boolean given as a string", GOOD + "deploy: {enabled: maybe}\n", "deploy.enabled", 10, "expected bool"),
    ("unknown regularizer", GOOD + "  regularizer: {name: slimmming, strength: 0.001}\n", "recover.regularizer.name",
     10, "unknown regularizer 'slimmming'; choose one of: l1, l2, group_lasso, slimming; did you mean: 'slimming'"),
    ("regularizer without strength", GOOD + "  regularizer: {name: l1}\n", "recover.regularizer.strength", 10,
     "missing"),
    ("groups for a term without groups", GOOD + "  regularizer: {name: l1, strength: 0.1, granularity: channel}\n",
     "recover.regularizer.granularity", 10, "applies to group_lasso only"),
    ("regularizer without training", GOOD + "train: {regularizer: {name: slimming, strength: 0.0001}}\n",
     "train.regularizer", 10, "set train.epochs > 0"),
    ("ADMM with channels", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels") + "  admm: {rho: 0.01}\n",
     "recover.admm", 11, "ADMM learns masks: set prune.method: masks"),
    ("ADMM and a schedule", GOOD + "  schedule: agp\n  admm: {epochs: 2}\n", "recover.admm", 11,
     "give recover.admm or recover.schedule, not both"),
    ("model option of the wrong kind", GOOD.replace("  name: digits_cnn\n", "  name: digits_cnn\n  config: {width: [1]}\n"),
     "model.config.width", 3, "expected a number, string or bool"),
    ("model options with a checkpoint", GOOD.replace("  name: digits_cnn\n",
                                                     "  name: digits_cnn\n  checkpoint: a.pt\n  config: {width: 8}\n"),
     "model.config", 4, "drop model.config"),
    ("lottery without training", GOOD + "  lottery: {rounds: 2}\n", "recover.lottery", 10,
     "each round trains like train: set train.epochs > 0"),
    ("lottery with channels", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels")
     + "  lottery: {rounds: 2}\ntrain: {epochs: 1}\n", "recover.lottery", 11, "set prune.method: masks"),
    ("lottery with a loss term", GOOD + "  lottery: {rounds: 2}\ntrain: {epochs: 1, regularizer: {name: l1, strength: 0.1}}\n",
     "train.regularizer", 11, "lottery rounds train without loss terms"),
    ("reconstruction with masks", GOOD.replace("criterion: l1", "criterion: l1\n  reconstruct: {selection: lasso}"),
     "prune.reconstruct", 7, "set prune.method: channels"),
    ("ADMM penalty of zero", GOOD + "  admm: {rho: 0}\n", "recover.admm.rho", 10, "in [1e-12"),
    ("AGP with channels", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels") + "  schedule: agp\n",
     "recover.schedule", 11, "channels are cut physically in rounds: use {name: iterative, rounds: N}"),
    ("channel rounds with a step interval", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels")
     + "  schedule: {name: iterative, rounds: 2, every: 10}\n", "recover.schedule", 11, "give only rounds (drop every)"),
    ("more channel rounds than epochs", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels")
     + "  schedule: {name: iterative, rounds: 3}\n", "recover.schedule", 11,
     "3 channel rounds need at least as many recover.epochs (got 1)"),
    ("channel rounds with reconstruction", GOOD.replace("criterion: l1", "criterion: l1\n  method: channels\n"
                                                        "  reconstruct: {selection: lasso}")
     + "  schedule: {name: iterative, rounds: 1}\n", "prune.reconstruct", 8, "recover.schedule (channel rounds)"),
]


@pytest.mark.parametrize("what, text, path, line, fragment", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_named_with_its_key_line_and_fix(what, text, path, line, fragment) -> None:
    problems = _problems(text)
    assert (path, line) in [(p, ln) for p, ln, _ in problems], problems
    message = next(m for p, ln, m in problems if (p, ln) == (path, line))
    assert fragment in message, message


def test_at_least_fifteen_kinds_of_mistake_are_covered() -> None:
    assert len(MISTAKES) >= 15


def test_every_mistake_is_reported_at_once_with_file_and_line() -> None:
    text = GOOD.replace("criterion: l1", "criterium: l1").replace("epochs: 1", "epochs: x")
    with pytest.raises(RecipeError) as info:
        rc.loads(text, "my.yaml")
    assert len(info.value.problems) == 2
    assert "my.yaml:6: prune.criterium" in str(info.value) and "my.yaml:9: recover.epochs" in str(info.value)


def test_an_empty_recipe_says_what_it_needs() -> None:
    with pytest.raises(RecipeError, match="empty; it needs at least model.name"):
        rc.loads("", "e.yaml")


def test_a_python_tag_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = GOOD.replace("criterion: l1", f"criterion: !!python/object/apply:os.system ['touch {marker}']")
    with pytest.raises(RecipeError):
        rc.loads(text)
    assert not marker.exists()


def test_a_missing_recipe_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(rc.RecipeError.__mro__[1], match="does not exist"):
        rc.load(tmp_path / "nope.yaml")


def test_the_resolved_recipe_loads_back_to_the_same_recipe() -> None:
    r = rc.loads(GOOD)
    again = rc.loads(r.to_yaml())
    assert again.data == r.data
    assert again["data"]["batch_size"] == 128 and again["deploy"]["enabled"] is True


def test_the_default_recipe_is_valid_and_offline() -> None:
    r = rc.default()
    assert r["model"]["name"] == "digits_cnn" and r["data"]["dataset"] == "digits"
    assert r.name == "default"


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_bundled_recipe_is_valid(path: Path) -> None:
    r = rc.load(path, check_files=False)  # the data may live elsewhere on this machine
    assert r["model"]["name"] if r.kind == "pipeline" else r["kernels"]["shape"]


_SET_RUN = re.compile(r'(?:--set\s+(?:"[^"]*"|\S+)\s*)+')  # consecutive --set overrides (one command's)
_SET_ONE = re.compile(r'--set\s+("[^"]*"|\S+)')
_STRAY = re.compile(r'--set\s+(?:"[^"]*"|\S+)\s+([a-z_]+(?:\.[a-z_]+)+=\S+)')  # KEY=VALUE without its --set


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_overrides_a_bundled_recipe_names_in_its_comments_load(path: Path) -> None:
    """Recipes name the --set lines that reproduce other table rows; each run of them must give a valid recipe."""
    comments = " ".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    assert not _STRAY.findall(comments), "a KEY=VALUE without its own --set"
    for run in _SET_RUN.finditer(comments):
        overrides = [t.strip('"').rstrip(".,;:)") for t in _SET_ONE.findall(run.group(0))]
        rc.load(path, check_files=False, overrides=overrides)


def test_granularity_that_does_not_fit_a_layer_is_named_before_any_work() -> None:
    from prunekit.data.choose import example_input_for
    from prunekit.models import create

    r = rc.loads(GOOD.replace("criterion: l1", "criterion: l1\n  granularity: block:4x4"), "g.yaml")
    with pytest.raises(RecipeError) as info:
        rc.check_against_model(r, create("digits_cnn"), example_input_for("digits"))
    assert "g.yaml:7: prune.granularity: does not fit layer" in str(info.value)


def test_a_glob_matching_no_layer_is_named() -> None:
    from prunekit.data.choose import example_input_for
    from prunekit.models import create

    r = rc.loads(GOOD.replace("criterion: l1", "criterion: l1\n  exclude: [clasifier]"), "x.yaml")
    with pytest.raises(RecipeError, match=r"x.yaml:7: prune.exclude\[0\]: 'clasifier' matches no .*classifier"):
        rc.check_against_model(r, create("digits_cnn"), example_input_for("digits"))


def test_a_model_that_does_not_take_the_data_is_named() -> None:
    from prunekit.data.choose import example_input_for
    from prunekit.models import create

    r = rc.loads(GOOD.replace("digits_cnn", "lenet5"), "m.yaml")
    with pytest.raises(RecipeError, match="m.yaml:4: data.dataset: model 'lenet5' does not accept digits"):
        rc.check_against_model(r, create("lenet5"), example_input_for("digits"))


def test_set_overrides_any_key_and_is_checked_like_the_file() -> None:
    r = rc.loads(GOOD, "r.yaml", overrides=["prune.allocation.sparsity=0.5", "recover.distill={alpha: 0.5}"])
    assert r["prune"]["allocation"] == {"name": "global", "sparsity": 0.5}
    assert r["recover"]["distill"] == {"temperature": 4.0, "alpha": 0.5}
    assert rc.loads(r.to_yaml()).data == r.data  # the run folder's recipe records the override
    with pytest.raises(RecipeError) as info:
        rc.loads(GOOD, "r.yaml", overrides=["prune.allocation.sparsity=1.2", "recover.epocs=3"])
    text = str(info.value)
    assert "r.yaml (--set): prune.allocation.sparsity" in text and "r.yaml (--set): recover.epocs" in text
    with pytest.raises(RecipeError, match="expected KEY.PATH=VALUE"):
        rc.loads(GOOD, overrides=["prune.allocation"])
