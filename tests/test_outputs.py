"""Outputs are all-or-nothing: named temps, stale-temp cleanup, byte-identical saves, errors naming
the user's path, outputs checked before the work, several files committed together, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.checkpoint import save
from prunekit.cli.main import main
from prunekit.errors import DataError
from prunekit.io import (
    TMP_MARK,
    atomic_torch_save,
    atomic_write,
    atomic_write_many,
    atomic_write_text,
    remove_stale_temps,
    write_together,
)

BASE = ["--dataset", "digits", "--threads", "1"]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: os.kill(pid, 0) now raises ProcessLookupError
    return proc.pid


# --- one file ----------------------------------------------------------------------------------------


def test_same_model_saved_twice_gives_identical_bytes(tmp_path) -> None:
    model = _net()
    a, b = tmp_path / "one" / "a.pt", tmp_path / "two" / "other-name.pt"
    save(a, model, "toy", metadata={"k": 1})
    save(b, model, "toy", metadata={"k": 1})
    first = a.read_bytes()
    save(a, model, "toy", metadata={"k": 1})  # the same path again
    assert first == b.read_bytes() == a.read_bytes()
    obj = {"w": torch.arange(6.0), "meta": {"x": [1, 2]}}
    assert atomic_torch_save(obj, tmp_path / "x.pt").read_bytes() == atomic_torch_save(obj, tmp_path / "y").read_bytes()


def test_temp_is_named_after_the_destination_and_removed(tmp_path) -> None:
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        assert tmp.parent == tmp_path
        tmp.write_text("x")

    atomic_write(tmp_path / "out.json", write)
    assert seen[0].startswith(f".out.json{TMP_MARK}{os.getpid()}-")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path) -> None:
    dead, live = _dead_pid(), os.getppid()
    stale_file = tmp_path / f".m.pt{TMP_MARK}{dead}-aaaa"
    stale_file.write_bytes(b"half a checkpoint")
    stale_dir = tmp_path / f".m.pt{TMP_MARK}{dead}-bbbb"
    stale_dir.mkdir()
    (stale_dir / "archive").write_bytes(b"PK half")
    alive = tmp_path / f".m.pt{TMP_MARK}{live}-cccc"  # another process still writing: never touched
    alive.write_bytes(b"in progress")
    other = tmp_path / f".n.pt{TMP_MARK}{dead}-dddd"  # a temp of another destination: not ours to judge
    other.write_bytes(b"x")
    atomic_torch_save({"a": 1}, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.pt", alive.name, other.name])
    assert remove_stale_temps(tmp_path / "n.pt") == [other]


CHILD = textwrap.dedent(
    """
    import sys, torch
    from prunekit.io import atomic_torch_save
    obj = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(12)}  # 48 MB
    print("ready", flush=True)
    while True:
        atomic_torch_save(obj, sys.argv[1])
    """
)


def test_kill_9_during_a_save_then_a_second_save_leaves_one_complete_file(tmp_path) -> None:
    dest = tmp_path / "ckpt.pt"
    prefix = f".{dest.name}{TMP_MARK}"
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(dest)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 20
            caught = False
            while time.monotonic() < deadline and not caught:  # a temp with bytes in it: mid-write
                for entry in tmp_path.iterdir():
                    inner = entry / "archive"
                    if entry.name.startswith(prefix) and inner.is_file() and inner.stat().st_size > 0:
                        os.kill(proc.pid, signal.SIGKILL)
                        caught = True
                        break
                time.sleep(0.001)
        finally:
            proc.kill()
            proc.wait()
        if caught and any(p.name.startswith(prefix) for p in tmp_path.iterdir()):
            break  # a half-written temp is left behind, as after a real crash
    else:
        pytest.skip("could not kill the writer in the middle of a save in 5 tries")
    assert proc.returncode == -signal.SIGKILL
    atomic_torch_save({"w": torch.arange(3.0)}, dest)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert torch.equal(torch.load(dest, weights_only=True)["w"], torch.arange(3.0))


def test_failed_or_interrupted_write_keeps_the_old_file_and_names_the_destination(tmp_path) -> None:
    dest = tmp_path / "model.pt"
    atomic_torch_save({"round": 1}, dest)

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device", str(tmp))

    with pytest.raises(DataError) as info:
        atomic_write(dest, full_disk)
    assert str(dest) in str(info.value) and TMP_MARK not in str(info.value)

    def ctrl_c(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(dest, ctrl_c)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.load(dest, weights_only=True) == {"round": 1}


def test_unwritable_destination_raises_a_named_error(tmp_path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    for dest in (a_file / "model.pt", folder):  # the parent is a regular file; the destination a folder
        with pytest.raises(DataError, match="cannot write") as info:
            atomic_torch_save({"a": 1}, dest)
        assert str(dest) in str(info.value) and TMP_MARK not in str(info.value)
    if not ROOT:  # root writes through chmod
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(DataError, match=re.escape(str(locked / "m.pt"))):
                atomic_torch_save({"a": 1}, locked / "m.pt")
        finally:
            locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["file.txt", "folder"] + ([] if ROOT else ["locked"]))


# --- several files ---------------------------------------------------------------------------------


def test_several_files_are_written_together_or_not_at_all(tmp_path) -> None:
    old = atomic_write_text(tmp_path / "a.txt", "old a")

    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(DataError, match=r"b\.txt: disk full"):
        atomic_write_many([(old, lambda p: p.write_text("new a")), (tmp_path / "b.txt", fail)])
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and old.read_text() == "old a"
    with pytest.raises(KeyboardInterrupt), write_together():
        atomic_torch_save({"x": 1}, tmp_path / "c.pt")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    paths = atomic_write_many([(old, lambda p: p.write_text("new a")), (tmp_path / "b.txt", lambda p: p.write_text("b"))])
    assert [p.read_text() for p in paths] == ["new a", "b"]


def test_structured_prune_writes_checkpoint_and_plan_together(tmp_path, monkeypatch, capsys) -> None:
    import prunekit.structure.plan as plan_module

    out, plan_out = tmp_path / "small.pt", tmp_path / "small.plan.json"
    argv = ["prune", "--structured", "--model", "digits_cnn", "--sparsity", "0.5", *BASE, "--latency-repeats", "1",
            "--out", str(out), "--plan-out", str(plan_out)]

    def disk_full(path, text):
        def write(tmp: Path) -> None:
            tmp.write_text(text[:10])
            raise OSError(28, "No space left on device")

        return atomic_write(path, write)

    monkeypatch.setattr(plan_module, "atomic_write_text", disk_full)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot write {plan_out}: No space left on device" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # neither file, no temp
    monkeypatch.undo()
    assert main(argv) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["small.plan.json", "small.pt"]


# --- outputs checked before the work -------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "dense.pt"
    save(out, _digits_model(), "digits_cnn", metadata={"dataset": "digits"})
    return out


def _digits_model() -> nn.Module:
    from prunekit.models import create

    torch.manual_seed(0)
    return create("digits_cnn")


def test_out_equal_to_the_input_is_refused_unless_force(dense, tmp_path, capsys) -> None:
    before = dense.read_bytes()
    argv = ["prune", "--checkpoint", str(dense), "--sparsity", "0.5", *BASE, "--out", str(dense)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"would replace the input {dense}; pass --force" in err and dense.read_bytes() == before
    same = dense.parent / ".." / dense.parent.name / dense.name  # another spelling of the same file
    assert main(["train", "--checkpoint", str(dense), "--epochs", "1", *BASE, "--out", str(same)]) == 2
    copy = tmp_path / "copy.pt"
    copy.write_bytes(before)
    assert main(["prune", "--checkpoint", str(copy), "--sparsity", "0.5", *BASE, "--out", str(copy), "--force"]) == 0
    assert copy.read_bytes() != before


@pytest.mark.parametrize("case", ["directory", "parent-is-a-file", "same-two-outputs", "read-only-folder"])
def test_bad_outputs_fail_before_any_work(case, dense, tmp_path, monkeypatch, capsys) -> None:
    if case == "read-only-folder" and ROOT:
        pytest.skip("root writes through chmod")
    calls: list[str] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("load") or real(*a, **k))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    good = tmp_path / "ok.pt"
    cmd = {
        "directory": ["prune", "--checkpoint", str(dense), "--sparsity", "0.5", *BASE, "--out", str(tmp_path)],
        "parent-is-a-file": ["prune", "--structured", "--checkpoint", str(dense), "--sparsity", "0.5", *BASE,
                             "--out", str(good), "--plan-out", str(blocker / "plan.json")],
        "same-two-outputs": ["deploy", "--checkpoint", str(dense), "--out", str(good), "--onnx", str(good)],
        "read-only-folder": ["train", "--checkpoint", str(dense), *BASE, "--out", str(locked / "t.pt")],
    }[case]
    try:
        assert main(cmd) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    expected = {"directory": f"--out {tmp_path} is a directory", "parent-is-a-file": f"{blocker} is a file",
                "same-two-outputs": f"--out and --onnx are the same file {good}",
                "read-only-folder": f"cannot write in {locked}"}[case]
    assert expected in err and len(err.splitlines()) == 1 and TMP_MARK not in err
    assert calls == [] and not good.exists()  # nothing loaded, nothing written
    assert list(locked.iterdir()) == []


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_prints_one_line_and_says_what_is_kept(dense, tmp_path, monkeypatch, capsys) -> None:
    import prunekit.cli.train_cmd as train_cmd
    import prunekit.pruning

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "p.pt"
    monkeypatch.setattr(prunekit.pruning, "prune", interrupted)
    assert main(["prune", "--checkpoint", str(dense), "--sparsity", "0.5", *BASE, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "prunekit prune: interrupted; nothing was written (existing files are unchanged)"
    assert list(tmp_path.iterdir()) == []

    real = train_cmd.print_epoch

    def stop_in_epoch_2(record):
        real(record)
        if record.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_cmd, "print_epoch", stop_in_epoch_2)
    t = tmp_path / "t.pt"
    assert main(["train", "--checkpoint", str(dense), "--epochs", "3", *BASE, "--out", str(t)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prunekit train: interrupted; the last good checkpoint {t} is kept; "
                   f"continue with: prunekit train --checkpoint {t} --resume --out {t}"]
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]
    monkeypatch.undo()
    assert main(["train", "--checkpoint", str(t), "--resume", *BASE, "--out", str(t)]) == 0


def test_torch_writer_failure_names_the_destination(tmp_path, monkeypatch) -> None:
    def full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DataError, match=re.escape(f"cannot write {tmp_path / 'm.pt'}: PytorchStreamWriter failed")):
        atomic_torch_save({"a": 1}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_structured_finetune_writes_checkpoint_and_plan_together(tmp_path, monkeypatch) -> None:
    """With --finetune-epochs the checkpoint is rewritten every epoch; the plan file is written with it."""
    import prunekit.structure.plan as plan_module
    from prunekit.cli.main import main

    out, plan = tmp_path / "s.pt", tmp_path / "s.plan.json"
    real = plan_module.atomic_write_text
    calls = {"n": 0}

    def failing_plan_write(path, text):  # the plan write fails at the second epoch
        calls["n"] += 1
        if calls["n"] == 2:
            from prunekit.errors import DataError

            raise DataError(f"cannot write {path}: disk full")  # what prunekit.io raises for a failed write
        return real(path, text)

    monkeypatch.setattr(plan_module, "atomic_write_text", failing_plan_write)
    code = main(["prune", "--structured", "--model", "digits_cnn", "--dataset", "digits", "--sparsity", "0.3",
                 "--latency-repeats", "2", "--finetune-epochs", "2", "--out", str(out), "--plan-out", str(plan)])
    assert code == 1
    from prunekit.checkpoint import read

    ckpt = read(out)  # the first epoch's pair stands, complete and consistent
    assert len(ckpt.metadata["history"]) == 1 and plan.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.plan.json", "s.pt"]
