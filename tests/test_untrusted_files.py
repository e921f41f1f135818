"""No code runs from a file a user hands to prunekit: every loader gets a malicious file, nothing runs,
and the error names the file.

Each payload writes a marker file when unpickled by plain ``pickle`` (checked once, so the payloads are
real); the loaders must refuse them before that happens.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import CheckpointError, DataError, Masks, PrunekitError, PruningPlan, checkpoint
from prunekit.cli.main import main
from prunekit.data import cifar10_datasets
from prunekit.data.cifar10 import load_cifar10_arrays, read_batch
from prunekit.data.mnist import load_mnist_arrays
from prunekit.models import create, load_pretrained

UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "allow_pickle", "PyTorch issue", "trusted source")


class ShellPayload:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class EvalPayload:
    """Runs Python source through builtins.eval when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class Gadget:
    """An ordinary class whose ``__setstate__`` has a side effect: unpickling any class is code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()


PAYLOADS = {"shell": ShellPayload, "eval": EvalPayload, "gadget": Gadget}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def assert_refused(exc: BaseException, path: Path, marker: Path) -> None:
    assert isinstance(exc, PrunekitError), type(exc)
    assert not marker.exists(), "the file ran code"
    assert str(path) in str(exc), str(exc)
    for advice in UNSAFE_ADVICE:
        assert advice not in str(exc), str(exc)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payloads_run_under_plain_pickle(kind, marker) -> None:
    """The control: plain pickle runs each payload (so the refusals below are meaningful)."""
    pickle.loads(pickle.dumps(PAYLOADS[kind](marker), protocol=2))
    assert marker.exists()


# -- CIFAR-10 pickle batches ------------------------------------------------------------------------------
def fake_batch(n: int = 4, seed: int = 0) -> dict[bytes, object]:
    """A batch laid out like the real cifar-10-python files (bytes keys, uint8 rows, list labels)."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_folder(folder: Path, protocol: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(fake_batch(seed=i), protocol=protocol))
    meta = {b"label_names": [b"airplane", b"automobile"], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_realistic_batches_load(protocol, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    write_folder(folder, protocol)
    arrays = load_cifar10_arrays(folder, "test", cache=False)
    want = fake_batch(seed=5)
    assert arrays.images.shape == (4, 32, 32, 3) and arrays.labels.tolist() == want[b"labels"]
    assert np.array_equal(arrays.images, want[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert read_batch(folder / "batches.meta")[b"label_names"] == [b"airplane", b"automobile"]


def test_numpy1_era_batch_loads(tmp_path) -> None:
    """Files pickled under numpy 1 name numpy.core.multiarray._reconstruct."""
    blob = pickle.dumps(fake_batch(), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    if b"numpy.core.multiarray" not in blob:
        pytest.skip("this numpy pickles arrays without numpy._core.multiarray")
    (tmp_path / "test_batch").write_bytes(blob)
    assert read_batch(tmp_path / "test_batch")[b"data"].shape == (4, 3072)


@pytest.mark.parametrize("where", ["data_batch_3", "test_batch"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_cifar_batch(kind, where, marker, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    write_folder(folder)
    batch = fake_batch()
    batch[b"labels"] = PAYLOADS[kind](marker)  # hidden inside an otherwise valid batch
    (folder / where).write_bytes(pickle.dumps(batch, protocol=2))
    split = "test" if where == "test_batch" else "train"
    with pytest.raises(DataError) as info:
        load_cifar10_arrays(folder, split)
    assert_refused(info.value, folder / where, marker)
    assert "refuses to load" in str(info.value) and "not a CIFAR-10 batch" in str(info.value)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_batches_meta(kind, marker, tmp_path) -> None:
    path = tmp_path / "batches.meta"
    path.write_bytes(pickle.dumps({b"label_names": PAYLOADS[kind](marker)}, protocol=2))
    with pytest.raises(DataError) as info:
        read_batch(path)
    assert_refused(info.value, path, marker)


def test_malicious_cifar_batch_through_the_cli(marker, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    write_folder(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(ShellPayload(marker), protocol=2))
    code = main(["eval", "--model", "resnet20", "--dataset", "cifar10", "--data", str(folder), "--limit", "2",
                 "--threads", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert not marker.exists() and str(folder / "test_batch") in err and "refuses to load" in err


# -- CIFAR-10 .npz ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_cifar_npz(kind, marker, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cifar.npz"
    np.savez(path, train_jpeg=np.array([PAYLOADS[kind](marker)], dtype=object), train_offsets=np.zeros(2, np.int64),
             train_labels=np.zeros(1, np.int64), test_jpeg=np.zeros(1, np.uint8), test_offsets=np.zeros(2, np.int64),
             test_labels=np.zeros(1, np.int64))  # fmt: skip
    with pytest.raises(DataError) as info:
        cifar10_datasets(path, limit=1)
    assert_refused(info.value, path, marker)
    assert "Python objects" in str(info.value)


# -- checkpoints, masks, state dicts (torch.load) ---------------------------------------------------------------
def malicious_pt(path: Path, marker: Path, kind: str, legacy: bool = False) -> Path:
    payload = {"format": "prunekit.checkpoint", "state_dict": {"w": torch.zeros(2)}, "metadata": PAYLOADS[kind](marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_checkpoint(kind, legacy, marker, tmp_path) -> None:
    path = malicious_pt(tmp_path / "ckpt.pt", marker, kind, legacy)
    with pytest.raises(CheckpointError) as info:
        checkpoint.read(path)
    assert_refused(info.value, path, marker)
    assert "runs no code" in str(info.value)


def test_malicious_checkpoint_through_the_cli(marker, tmp_path, capsys) -> None:
    path = malicious_pt(tmp_path / "ckpt.pt", marker, "shell")
    code = main(["eval", "--checkpoint", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and not marker.exists() and str(path) in err, err


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_masks_file(kind, marker, tmp_path) -> None:
    path = tmp_path / "masks.pt"
    torch.save({"format": "prunekit.masks/1", "masks": {"fc": PAYLOADS[kind](marker)}, "param_names": {}}, path)
    with pytest.raises(CheckpointError) as info:
        Masks.load(path)
    assert_refused(info.value, path, marker)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_pretrained_runs_nothing(kind, marker, tmp_path) -> None:
    path = malicious_pt(tmp_path / "state.pt", marker, kind)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(create("digits_cnn"), path)
    assert not marker.exists() and str(path) in str(info.value)


def test_malicious_pretrained_message(marker, tmp_path) -> None:
    path = malicious_pt(tmp_path / "state.pt", marker, "shell")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(create("digits_cnn"), path)
    assert_refused(info.value, path, marker)


# -- plans (JSON) and MNIST (raw bytes) -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_pickled_plan_file(kind, marker, tmp_path) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(pickle.dumps({"format": "prunekit.structured-plan", "steps": [PAYLOADS[kind](marker)]}))
    with pytest.raises(CheckpointError) as info:
        PruningPlan.load(path)
    assert_refused(info.value, path, marker)


def test_plan_json_with_object_hooks(marker, tmp_path) -> None:
    """JSON has no way to name a class: keys like __reduce__ are plain data and are rejected as malformed."""
    path = tmp_path / "plan.json"
    path.write_text('{"format": "prunekit.structured-plan", "steps": [{"__reduce__": ["os.system", "touch x"]}]}')
    with pytest.raises(CheckpointError) as info:
        PruningPlan.load(path)
    assert_refused(info.value, path, marker)


@pytest.mark.parametrize("compressed", [False, True])
def test_pickle_posing_as_mnist(compressed, marker, tmp_path) -> None:
    blob = pickle.dumps(ShellPayload(marker), protocol=2)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        if compressed:
            (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (tmp_path / stem).write_bytes(blob)
    with pytest.raises(DataError) as info:
        load_mnist_arrays(tmp_path, "train")
    name = "train-images-idx3-ubyte" + (".gz" if compressed else "")
    assert_refused(info.value, tmp_path / name, marker)
