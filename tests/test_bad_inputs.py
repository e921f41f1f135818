"""Every bad input gets a named error: the CLI prints one line (exit 1 for bad data, 2 for usage), the
Python API raises a PrunekitError subclass, and each message names the problem and the file or argument.

Offline and small: the digits data set, ``digits_cnn`` and tiny hand-made models and files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunekit import (
    NM,
    CheckpointError,
    ConfigError,
    DataError,
    Element,
    Global,
    Magnitude,
    Masks,
    OneShot,
    PrunekitError,
    Pruner,
    PruningPlan,
    Uniform,
    checkpoint,
    criteria,
    prune,
    registry,
    select,
)
from prunekit.cli.main import main
from prunekit.models import available, create
from prunekit.sparse.kernels import available_kernels
from prunekit.sparse.modules import SparseConv2d, SparseLinear
from prunekit.structure import prune_channels

UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "allow_pickle", "PyTorch issue", "trusted source")
DIGITS = ["--model", "digits_cnn", "--dataset", "digits", "--threads", "1"]


# -- files ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad and good files, made once: a real checkpoint and its damaged copies, masks, plans."""
    d = tmp_path_factory.mktemp("bad")
    model = create("digits_cnn")
    good = checkpoint.save(d / "good.pt", model, "digits_cnn", metadata={"dataset": "digits"})
    raw = good.read_bytes()
    rng = np.random.default_rng(0)
    kinds = ("missing", "empty", "truncated", "random", "directory", "json", "list", "state", "lenet_state")
    paths = {"good": good, **{kind: d / f"f{i}.pt" for i, kind in enumerate(kinds)}}  # names no needle matches
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(raw[: len(raw) // 2])
    paths["random"].write_bytes(b"\x13\x37" + rng.integers(0, 256, 4094, dtype=np.uint8).tobytes())
    paths["directory"].mkdir()
    paths["json"].write_text(json.dumps({"format": "prunekit.structured-plan", "steps": []}))
    torch.save([1, 2, 3], paths["list"])
    torch.save(model.state_dict(), paths["state"])
    torch.save(create("lenet5").state_dict(), paths["lenet_state"])
    masks = prune(model, select(model), Magnitude(), Element(), Uniform(0.5))
    masks.save(d / "m.pt")
    masks.remove()
    paths["masks"] = d / "m.pt"
    return paths


# what each kind of bad checkpoint must be called (besides its path)
CHECKPOINT_PROBLEMS = {
    "missing": "does not exist",
    "empty": "empty",
    "truncated": "truncated",
    "random": "not a file written by torch.save",
    "directory": "directory",
    "json": "JSON",
    "list": "not a prunekit checkpoint",
}


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def _strip_paths(text: str, paths) -> str:
    """``text`` with each of ``paths`` (which it must contain) cut out, so the needles cannot match a path."""
    for path in paths:
        assert str(path) in text, (str(path), text)
        text = text.replace(str(path), "<path>")
    return text


def assert_one_line(err: str, *needles: str, paths=()) -> None:
    assert err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    rest = _strip_paths(err, paths)
    for needle in needles:
        assert needle in rest, (needle, err)
    for advice in UNSAFE_ADVICE:
        assert advice not in err, err


def assert_message(exc: BaseException, *needles: str, paths=()) -> None:
    assert isinstance(exc, PrunekitError), type(exc)
    rest = _strip_paths(str(exc), paths)
    for needle in needles:
        assert needle in rest, (needle, str(exc))
    for advice in UNSAFE_ADVICE:
        assert advice not in str(exc), str(exc)


# -- CLI: checkpoints ---------------------------------------------------------------------------------------
COMMAND_ARGS = {
    "eval": ["--threads", "1"],
    "info": [],
    "prune": ["--sparsity", "0.5", "--out", "OUT"],
    "train": ["--epochs", "1", "--out", "OUT"],
    "deploy": ["--repeats", "1"],
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_PROBLEMS))
@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_cli_bad_checkpoint(command, kind, files, tmp_path, capsys) -> None:
    extra = [str(tmp_path / "out.pt") if a == "OUT" else a for a in COMMAND_ARGS[command]]
    code, err = cli([command, "--checkpoint", str(files[kind]), *extra], capsys)
    assert code == 1, err
    assert_one_line(err, f"prunekit {command}: error:", CHECKPOINT_PROBLEMS[kind], paths=[files[kind]])
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("kind", [
    "missing", "directory",
    ("empty"),
    ("truncated"),
    ("random"),
    ("json"),
])  # fmt: skip
def test_cli_bad_checkpoint_gets_no_pretrained_hint(kind, files, capsys) -> None:
    """A damaged file is no plain state dict: the --pretrained hint would send the user astray."""
    code, err = cli(["eval", "--checkpoint", str(files[kind])], capsys)
    assert code == 1 and "--pretrained" not in err, err


def test_cli_plain_state_dict_as_checkpoint_points_to_pretrained(files, capsys) -> None:
    code, err = cli(["eval", "--checkpoint", str(files["state"])], capsys)
    assert code == 1
    assert_one_line(err, "plain state dict", "--pretrained PATH", paths=[files["state"]])


def test_cli_pretrained_hint_given_once(files, capsys) -> None:
    code, err = cli(["eval", "--checkpoint", str(files["state"])], capsys)
    assert code == 1 and err.count("--pretrained PATH") == 1, err


@pytest.mark.parametrize("kind,needle", [
    ("missing", "not found"),
    ("lenet_state", "does not match the model"),
    ("empty", "empty"),
    ("truncated", "truncated"),
    ("random", "not a file written by torch.save"),
    ("json", "JSON"),
    ("directory", "directory"),
])  # fmt: skip
def test_cli_bad_pretrained(kind, needle, files, capsys) -> None:
    code, err = cli(["info", "--model", "digits_cnn", "--pretrained", str(files[kind])], capsys)
    assert code == 1
    assert_one_line(err, "prunekit info: error:", needle, paths=[files[kind]])


# -- CLI: names, numbers, options ----------------------------------------------------------------------------
def _prune(*extra: str) -> list[str]:
    return ["prune", *DIGITS, "--out", "OUT", *extra]


CLI_CASES = [
    # (id, argv, exit code, needles)
    ("model-typo", ["eval", "--model", "resnet2"], 1, ["'resnet2'", "resnet20"]),
    ("criterion-typo", _prune("--criterion", "magnitud", "--sparsity", "0.5"), 1, ["'magnitud'", "magnitude", "taylor"]),
    ("criterion-param", _prune("--criterion", "magnitude:q=2", "--sparsity", "0.5"), 1, ["'q'", "p (float"]),
    ("criterion-value", _prune("--criterion", "magnitude:p=x", "--sparsity", "0.5"), 1, ["parameter p", "'x'"]),
    ("granularity-typo", _prune("--granularity", "chanel", "--sparsity", "0.5"), 1, ["'chanel'", "channel"]),
    ("granularity-syntax", _prune("--granularity", "nm:x"), 1, ["'nm:x'", "nm:N:M"]),
    ("nm-indivisible", _prune("--granularity", "nm:2:3"), 1, ["features.0", "divisible by 3"]),
    ("block-indivisible", _prune("--granularity", "block:5x5", "--sparsity", "0.5"), 1, ["features.0", "5x5"]),
    ("scope", _prune("--scope", "glob", "--sparsity", "0.5"), 2, ["--scope", "'glob'", "global"]),
    ("sparsity-1.5", _prune("--sparsity", "1.5"), 1, ["sparsity", "1.5", "[0, 1)"]),
    ("sparsity-neg", _prune("--sparsity", "-0.1"), 1, ["sparsity", "-0.1"]),
    ("sparsity-nan", _prune("--sparsity", "nan"), 1, ["sparsity", "nan"]),
    ("sparsity-1", _prune("--sparsity", "1"), 1, ["sparsity", "1.0"]),
    ("sparsity-text", _prune("--sparsity", "abc"), 2, ["--sparsity", "'abc'"]),
    ("sparsity-missing", _prune(), 2, ["--sparsity"]),
    ("types", _prune("--types", "attention", "--sparsity", "0.5"), 2, ["--types", "'attention'", "conv"]),
    ("exclude-nothing", _prune("--exclude", "nothing*", "--sparsity", "0.5"), 1, ["exclude", "'nothing*'", "features.0"]),
    ("include-nothing", _prune("--include", "nothing*", "--sparsity", "0.5"), 1, ["include", "'nothing*'"]),
    ("layer-unknown", _prune("--layer", "foo=0.5", "--sparsity", "0.5"), 1, ["'foo'", "features.0"]),
    ("layer-ratio", _prune("--layer", "features.0=2", "--sparsity", "0.5"), 1, ["'features.0'", "2.0"]),
    ("layer-syntax", _prune("--layer", "features.0", "--sparsity", "0.5"), 2, ["--layer", "NAME=RATIO"]),
    ("min-keep", _prune("--scope", "global", "--min-keep", "2", "--sparsity", "0.5"), 1, ["min_keep", "2.0"]),
    ("finetune-lr", _prune("--sparsity", "0.5", "--finetune-epochs", "1", "--finetune-lr", "nan"), 1, ["lr", "nan"]),
    ("round-to", _prune("--structured", "--sparsity", "0.3", "--round-to", "0"), 2, ["--round-to", "'0'"]),
    ("lr-nan", ["train", *DIGITS, "--out", "OUT", "--lr", "nan"], 1, ["lr", "nan"]),
    ("lr-inf", ["train", *DIGITS, "--out", "OUT", "--lr", "inf"], 1, ["lr", "inf"]),
    ("lr-0", ["train", *DIGITS, "--out", "OUT", "--lr", "0"], 1, ["lr", "0.0"]),
    ("lr-neg", ["train", *DIGITS, "--out", "OUT", "--lr", "-1"], 1, ["lr", "-1.0"]),
    ("momentum-nan", ["train", *DIGITS, "--out", "OUT", "--momentum", "nan"], 1, ["momentum", "nan"]),
    ("label-smoothing", ["train", *DIGITS, "--out", "OUT", "--label-smoothing", "1.5"], 1, ["label_smoothing", "1.5"]),
    ("train-batch-0", ["train", *DIGITS, "--out", "OUT", "--batch-size", "0"], 2, ["--batch-size", "'0'"]),
    ("eval-batch-0", ["eval", *DIGITS, "--batch-size", "0"], 2, ["--batch-size", "'0'"]),
    ("eval-limit-0", ["eval", *DIGITS, "--limit", "0"], 2, ["--limit", "'0'"]),
    ("digits-data", ["eval", *DIGITS, "--data", "somewhere"], 2, ["--data", "digits"]),
    ("no-model", ["eval"], 2, ["--model", "--checkpoint"]),
    ("bench-shape-text", ["bench", "--shape", "abc"], 2, ["--shape", "ROWSxCOLS", "'abc'"]),
    ("bench-shape-3d", ["bench", "--shape", "4x4x4"], 2, ["--shape", "ROWSxCOLS", "'4x4x4'"]),
    ("bench-shape-0", ["bench", "--shape", "0x4"], 2, ["--shape", "ROWSxCOLS", "'0x4'"]),
    ("bench-sparsity", ["bench", "--sparsities", "1.5"], 2, ["--sparsities", "'1.5'"]),
    ("info-shape-text", ["info", "--model", "digits_cnn", "--input-shape", "abc"], 2, ["--input-shape", "'abc'"]),
    ("info-shape-wrong", ["info", "--model", "digits_cnn", "--input-shape", "1,3,32,32"], 1,
     ["--input-shape", "(1, 3, 32, 32)", "digits_cnn"]),
    ("deploy-candidate", ["deploy", *DIGITS, "--candidates", "foo"], 1, ["'foo'", "torch_csr"]),
    ("mnist-folder", ["eval", "--model", "lenet5", "--dataset", "mnist", "--data", "NODATA"], 1,
     ["NODATA", "train-images-idx3-ubyte"]),
    ("cifar-missing", ["eval", "--model", "resnet20", "--dataset", "cifar10", "--data", "NODATA/x.npz"], 1,
     ["NODATA/x.npz", "not found"]),
    ("model-unknown-lists-all", ["eval", "--model", "nosuch"], 1, ["'nosuch'", *available()]),
]


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("case_id,argv,code,needles", CLI_CASES, ids=[_case_id(c) for c in CLI_CASES])
def test_cli_bad_argument(case_id, argv, code, needles, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    nodata = str(tmp_path / "nodata")

    def fill(text: str) -> str:
        return text.replace("OUT", str(tmp_path / "out.pt")).replace("NODATA", nodata)

    got, err = cli([fill(a) for a in argv], capsys)
    assert got == code, err
    filled = [fill(n) for n in needles]
    assert_one_line(err, *(n for n in filled if str(tmp_path) not in n),
                    paths=[n for n in filled if str(tmp_path) in n])
    assert not (tmp_path / "out.pt").exists()


def test_cli_usage_errors_from_commands_have_the_parser_prefix(tmp_path, capsys) -> None:
    code, err = cli(["prune", *DIGITS, "--out", str(tmp_path / "o.pt")], capsys)  # no --sparsity
    assert code == 2 and err.startswith("prunekit prune: error:"), err


@pytest.mark.parametrize("argv", [
    pytest.param(["train", *DIGITS, "--epochs", "1", "--max-steps-per-epoch", "1", "--out", "DIR"], id="train-out"),
    pytest.param(["prune", *DIGITS, "--structured", "--sparsity", "0.3", "--no-verify", "--out", "OUT",
                  "--plan-out", "DIR"], id="prune-plan-out"),
])  # fmt: skip
def test_cli_output_path_is_a_directory(argv, tmp_path, capsys) -> None:
    """An output that is a folder is a usage error, found before any work."""
    (tmp_path / "dir").mkdir()
    argv = [str(tmp_path / "dir") if a == "DIR" else str(tmp_path / "o.pt") if a == "OUT" else a for a in argv]
    code, err = cli(argv, capsys)
    assert code == 2
    assert_one_line(err, "directory", "--", paths=[tmp_path / "dir"])
    assert not (tmp_path / "o.pt").exists()


def test_cli_help_lists_the_model_names(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in available())


def test_cli_checkpoint_with_other_model_is_usage_error(files, capsys) -> None:
    code, err = cli(["eval", "--model", "lenet5", "--checkpoint", str(files["good"])], capsys)
    assert code == 2
    assert_one_line(err, "--model", "'lenet5'", "digits_cnn")


# -- CLI: data files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,needle", [
    ("empty", "empty"),
    ("random", "not a .npz file"),
    ("truncated", "truncated"),
    ("objects", "Python objects"),
])  # fmt: skip
def test_cli_bad_cifar_npz(kind, needle, files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cifar.npz"
    if kind == "objects":
        np.savez(path, train_jpeg=np.array([{"a": 1}], dtype=object), train_offsets=np.zeros(2, np.int64),
                 train_labels=np.zeros(1, np.int64))
    elif kind == "truncated":
        np.savez(path, train_jpeg=np.zeros(1000, np.uint8), train_offsets=np.zeros(2, np.int64))
        path.write_bytes(path.read_bytes()[:600])
    else:
        path.write_bytes(files[kind].read_bytes())
    code, err = cli(["eval", "--model", "resnet20", "--dataset", "cifar10", "--data", str(path),
                     "--limit", "2", "--threads", "1"], capsys)  # fmt: skip
    assert code == 1
    assert_one_line(err, "prunekit eval: error:", needle, paths=[path])


# -- Python API: checkpoint, masks and plan files --------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(CHECKPOINT_PROBLEMS))
def test_checkpoint_read_bad_file(kind, files) -> None:
    with pytest.raises(CheckpointError) as info:
        checkpoint.read(files[kind])
    assert_message(info.value, CHECKPOINT_PROBLEMS[kind], paths=[files[kind]])


MASK_PROBLEMS = {**CHECKPOINT_PROBLEMS, "list": "not a prunekit masks state", "good": "is a prunekit checkpoint",
                 "state": "not a prunekit masks state"}


@pytest.mark.parametrize("kind", sorted(MASK_PROBLEMS))
def test_masks_load_bad_file(kind, files) -> None:
    with pytest.raises(CheckpointError) as info:
        Masks.load(files[kind])
    assert_message(info.value, MASK_PROBLEMS[kind], paths=[files[kind]])


def test_masks_load_for_another_model(files) -> None:
    with pytest.raises(ConfigError) as info:
        Masks.load(files["masks"], create("lenet5"))
    assert_message(info.value, "do not fit", "'features.0'", paths=[files["masks"]])


def test_masks_load_malformed_values(tmp_path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"format": "prunekit.masks/1", "masks": {"fc": "x"}, "param_names": {}}, path)
    with pytest.raises(CheckpointError) as info:
        Masks.load(path)
    assert_message(info.value, "malformed", "'fc'", paths=[path])


PLAN_CASES = {
    "missing": (None, "does not exist"),
    "directory": ("DIR", "directory"),
    "empty": ("", "empty"),
    "truncated": ('{"format": "prunekit.structured-plan", "steps": [', "not valid JSON"),
    "binary": (b"\x80\x04\x95\x00\xff\xfe", "binary"),
    "list": ("[1, 2]", "holds a list"),
    "format": ('{"format": "other"}', "format 'other'"),
    "steps": ('{"format": "prunekit.structured-plan", "steps": [{"nope": 1}]}', "missing entry 'modules'"),
}


@pytest.mark.parametrize("kind", sorted(PLAN_CASES))
def test_plan_load_bad_file(kind, tmp_path) -> None:
    content, needle = PLAN_CASES[kind]
    path = tmp_path / "plan.json"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CheckpointError) as info:
        PruningPlan.load(path)
    assert_message(info.value, needle, paths=[path])


def test_plan_load_of_a_checkpoint(files) -> None:
    with pytest.raises(CheckpointError) as info:
        PruningPlan.load(files["good"])
    assert_message(info.value, "checkpoint.read(path).plan", paths=[files["good"]])


def test_plan_from_json_of_a_non_string() -> None:
    with pytest.raises(CheckpointError) as info:
        PruningPlan.from_json(b"{}")  # type: ignore[arg-type]
    assert_message(info.value, "bytes", "PruningPlan.load")


# -- Python API: wrong types and names ------------------------------------------------------------------------
@pytest.fixture
def digits() -> nn.Module:
    return create("digits_cnn")


@pytest.mark.parametrize("slot,args,needles", [
    ("importance", ("magnitude", Element(), Uniform(0.5)), ["importance", "str 'magnitude'", "Magnitude"]),
    ("importance", (3.0, Element(), Uniform(0.5)), ["importance", "float"]),
    ("granularity", (Magnitude(), 0.5, Uniform(0.5)), ["granularity", "float 0.5", "Element()"]),
    ("granularity", (Magnitude(), "nm:2:4", Uniform(0.5)), ["granularity", "'nm:2:4'"]),
    ("allocation", (Magnitude(), Element(), 0.5), ["allocation", "float 0.5", "Uniform(0.5)"]),
    ("allocation", (Magnitude(), Element(), "global"), ["allocation", "'global'"]),
])  # fmt: skip
def test_prune_wrong_component_types(slot, args, needles, digits) -> None:
    with pytest.raises(ConfigError) as info:
        prune(digits, select(digits), *args)
    assert_message(info.value, *needles)


def test_pruner_wrong_component_type(digits) -> None:
    with pytest.raises(ConfigError) as info:
        Pruner(digits, select(digits), "l1", Element(), Global(0.5), OneShot(0.5))
    assert_message(info.value, "importance", "'l1'")


@pytest.mark.parametrize("kwargs,needles", [
    ({"allocation": "x"}, ["allocation", "str 'x'"]),
    ({"allocation": 1.5}, ["sparsity", "1.5"]),
    ({"allocation": 0.3, "importance": 3.0}, ["importance", "float 3.0"]),
    ({"allocation": 0.3, "importance": "magnitud"}, ["'magnitud'", "magnitude", "taylor"]),
])  # fmt: skip
def test_prune_channels_wrong_component_types(kwargs, needles, digits) -> None:
    with pytest.raises(ConfigError) as info:
        prune_channels(digits, torch.zeros(1, 1, 8, 8), **kwargs)
    assert_message(info.value, *needles)


@pytest.mark.parametrize("types,needles", [
    (["attention"], ["'attention'", "nn.Module classes", "nn.Conv2d"]),
    ("conv", ["str 'conv'", "nn.Module classes"]),
    (3, ["int 3"]),
    ([nn.Linear(2, 2)], ["Linear(in_features=2", "not names or instances"]),
    ((), ["empty"]),
])  # fmt: skip
def test_select_wrong_types(types, needles, digits) -> None:
    with pytest.raises(ConfigError) as info:
        select(digits, types=types)
    assert_message(info.value, "select(types=...)", *needles)


def test_select_exclude_matching_nothing(digits) -> None:
    with pytest.raises(ConfigError) as info:
        select(digits, exclude="nothing*")
    assert_message(info.value, "exclude", "'nothing*'", "features.0")


def test_nm_on_indivisible_layer(digits) -> None:
    with pytest.raises(ConfigError) as info:
        prune(digits, select(digits), Magnitude(), NM(2, 3), Uniform(0.5))
    assert_message(info.value, "'features.0'", "divisible by 3")


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, math.inf])
def test_bad_sparsity_value(value) -> None:
    with pytest.raises(ConfigError) as info:
        Uniform(value)
    assert_message(info.value, "sparsity", "[0, 1)")


@pytest.mark.parametrize("kind,spec,needles", [
    ("criterio", "l1", ["'criterio'", "criterion, granularity"]),
    ("granularity", "chanel", ["'chanel'", "channel", "element"]),
    ("allocation", "globl:sparsity=0.5", ["'globl'", "global", "uniform"]),
    ("kernel", "cuda_csr", ["'cuda_csr'", "torch_csr", "numba_csr"]),
    ("criterion", "magnitude:q=1", ["'q'", "p (float"]),
    ("criterion", "magnitude:p=abc", ["parameter p", "'abc'"]),
    ("schedule", "agp", ["agp", "final"]),
])  # fmt: skip
def test_registry_unknown_names_and_params(kind, spec, needles) -> None:
    with pytest.raises(ConfigError) as info:
        registry.build(kind, spec)
    assert_message(info.value, *needles)


def test_criteria_unknown_name_lists_all() -> None:
    with pytest.raises(ConfigError) as info:
        criteria.make("tayler")
    assert_message(info.value, "'tayler'", "did you mean: 'taylor'", *criteria.CRITERIA)


def test_models_create_unknown_lists_all() -> None:
    with pytest.raises(ConfigError) as info:
        create("nosuch")
    assert_message(info.value, "'nosuch'", *available())


# -- Python API: wrong input shapes ---------------------------------------------------------------------------
LINEAR_KERNELS = list(available_kernels())
CONV_KERNELS = [k for k in available_kernels() if k not in ("numba_csc", "numba_packet")]


@pytest.mark.parametrize("shape", [(2, 10), (1, 10), (10,), ()])
@pytest.mark.parametrize("kernel", LINEAR_KERNELS)
def test_sparse_linear_wrong_input_shape(kernel, shape) -> None:
    layer = SparseLinear.from_dense(nn.Linear(16, 8), kernel=kernel)
    with torch.no_grad(), pytest.raises(ConfigError) as info:
        layer(torch.zeros(shape))
    assert str(info.value) == f"SparseLinear expects input (..., 16), got {shape}"


@pytest.mark.parametrize("shape,extra", [
    ((1, 2, 8, 8), ""),
    ((3, 8, 8), ""),
    ((1, 3, 8), ""),
    ((1, 3, 2, 2), " with H, W no smaller than the kernel 3x3 (padding 0x0, dilation 1x1)"),
])  # fmt: skip
@pytest.mark.parametrize("kernel", CONV_KERNELS)
def test_sparse_conv_wrong_input_shape(kernel, shape, extra) -> None:
    layer = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3), kernel=kernel)
    with torch.no_grad(), pytest.raises(ConfigError) as info:
        layer(torch.zeros(shape))
    assert str(info.value) == f"SparseConv2d expects input (B, 3, H, W){extra}, got {shape}"


@pytest.mark.parametrize("model,example,needles", [
    (nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), torch.zeros(1, 10), ["(1, 10)", "(..., 16)"]),
    ("digits_cnn", torch.zeros(1, 3, 8, 8), ["(1, 3, 8, 8)", "'features.0'", "(B, 1, H, W)"]),
])  # fmt: skip
def test_deploy_wrong_input_shape_before_timing(model, example, needles, monkeypatch) -> None:
    from prunekit.sparse import deployment

    def no_timing(*args: object) -> None:
        raise AssertionError("deploy timed something before checking the input")

    monkeypatch.setattr(deployment, "compare_latency", no_timing)
    model = create(model) if isinstance(model, str) else model
    with pytest.raises(ConfigError) as info:
        deployment.deploy(model, example, candidates=["torch_csr"], repeats=1, warmup=0)
    assert_message(info.value, "deploy:", *needles)


@pytest.mark.parametrize("example,needles", [
    (torch.zeros(1, 3, 8, 8), ["(1, 3, 8, 8)", "'features.0'", "(B, 1, H, W)"]),
    (torch.zeros(2, 64), ["(2, 64)", "(B, 1, H, W)"]),
])  # fmt: skip
def test_prune_channels_wrong_input_shape(example, needles, digits) -> None:
    with pytest.raises(ConfigError) as info:
        prune_channels(digits, example, 0.3)
    assert_message(info.value, "prune_channels", *needles)


def test_export_onnx_wrong_input_shape(tmp_path) -> None:
    pytest.importorskip("onnx")
    from prunekit.export import export_onnx

    with pytest.raises(ConfigError) as info:
        export_onnx(nn.Sequential(nn.Linear(4, 3)), torch.zeros(2, 5), tmp_path / "m.onnx")
    assert_message(info.value, "export_onnx", "(2, 5)", "(..., 4)")
    assert not (tmp_path / "m.onnx").exists()


def test_check_example_input_restores_modes() -> None:
    from prunekit.inputs import check_example_input

    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout())
    model.train()
    model[1].eval()
    with pytest.raises(ConfigError):
        check_example_input(model, torch.zeros(2, 5), "here")
    check_example_input(model, torch.zeros(2, 4), "here")
    assert model.training and model[0].training and not model[1].training


# -- Python API: data files -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,needle", [
    ("empty", "empty"),
    ("random", "not a .npz file"),
    ("directory-in-folder", "not found"),
    ("missing", "not found"),
])  # fmt: skip
def test_cifar10_bad_source(kind, needle, files, tmp_path, monkeypatch) -> None:
    from prunekit.data import cifar10_datasets

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.npz"
    if kind in ("empty", "random"):
        path.write_bytes(files[kind].read_bytes())
    elif kind == "directory-in-folder":
        path.mkdir()
    with pytest.raises(DataError) as info:
        cifar10_datasets(path, limit=2)
    assert_message(info.value, needle, paths=[path])


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x80\x02}q\x00(", "ends early"),
    (b"not a pickle at all", "not a CIFAR-10 batch pickle"),
])  # fmt: skip
def test_cifar10_bad_batch_file(content, needle, tmp_path, monkeypatch) -> None:
    from prunekit.data import cifar10_datasets

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(content)
    with pytest.raises(DataError) as info:
        cifar10_datasets(folder, limit=2)
    assert_message(info.value, needle, paths=[folder / "data_batch_1"])


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x05", "too short"),
    (b"\x00\x00\x08\x01" + b"\x00" * 20, "bad IDX magic"),
])  # fmt: skip
def test_mnist_bad_idx_file(content, needle, tmp_path) -> None:
    from prunekit.data.mnist import load_mnist_arrays

    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(content)
    with pytest.raises(DataError) as info:
        load_mnist_arrays(tmp_path, "train")
    assert_message(info.value, needle, paths=[tmp_path / "train-images-idx3-ubyte"])


def test_mnist_truncated_gzip(tmp_path) -> None:
    import gzip

    from prunekit.data.mnist import load_mnist_arrays

    blob = gzip.compress(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x1c" * 2 + bytes(784))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as info:
        load_mnist_arrays(tmp_path, "train")
    assert_message(info.value, "truncated", paths=[tmp_path / "train-images-idx3-ubyte.gz"])


def test_every_bad_input_error_is_a_prunekit_error() -> None:
    assert all(issubclass(e, PrunekitError) for e in (ConfigError, DataError, CheckpointError))


def test_check_example_input_passes_model_bugs_through() -> None:
    """Only a wrong input becomes a ConfigError; a bug inside the model keeps its own error."""
    from prunekit.inputs import check_example_input

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        check_example_input(Broken(), torch.zeros(1, 2), "here")
