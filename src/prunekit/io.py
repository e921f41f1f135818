"""Atomic, deterministic file writing: nothing on disk is ever left half-written.

Every write goes to a hidden temp in the destination folder, ``.{name}.prunekit-tmp-{pid}-{random}``
(same filesystem, so the final rename is one atomic step), is flushed to disk (``fsync``), then
renamed onto the destination. A write that fails or is interrupted removes its temp; a temp left
by a process killed outright (``kill -9``, power loss) is recognised by its name and removed by
the next write to the same destination, once its process is gone (a live process's temp is never
touched).

Failures raise :class:`~prunekit.errors.DataError` naming the destination, never the temp.
``DataError`` is chosen because it is an ``OSError`` (callers' ``except OSError`` keep working,
e.g. the CIFAR-10 cache falls back to running uncached) and a ``PrunekitError`` (the CLI prints it
as one line, exit status 1).

Several files that belong together (a checkpoint and its plan, a model and its ONNX export) are
written with :func:`write_together` / :func:`atomic_write_many`: all of them appear, or none.

``atomic_torch_save`` gives the same bytes for the same object whatever the destination's name
(torch's zip records the file's stem as its internal folder; the temp file is always called
``archive``, the name torch uses for in-memory buffers).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import DataError, PrunekitError

TMP_MARK = ".prunekit-tmp-"
_ARCHIVE = "archive"  # torch.save's internal folder name for a file called "archive" (and for buffers)


@dataclass(frozen=True)
class _Staged:
    dest: Path  # where the file goes
    temp: Path  # what to remove if it does not get there (a file, or a folder holding it)
    file: Path  # the written file, renamed onto ``dest`` at commit


_PENDING: contextvars.ContextVar[list[_Staged] | None] = contextvars.ContextVar(
    "prunekit_io_pending", default=None
)
_COMMITTED: list[Path] = []  # every destination written by this process, in order (see written_since)


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """The name every temp of ``path`` starts with.

    >>> temp_prefix("runs/model.pt")
    '.model.pt.prunekit-tmp-'
    """
    return f".{Path(path).name}{TMP_MARK}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return True  # our own temp (another thread's write in progress) or a nonsense pid: keep
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temps of ``path`` left by processes that no longer run; return what was removed.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".m.pt.prunekit-tmp-999999999-ab12").write_bytes(b"half")  # no such process
    >>> [p.name for p in remove_stale_temps(d / "m.pt")], list(d.iterdir())
    (['.m.pt.prunekit-tmp-999999999-ab12'], [])
    """
    dest = Path(path)
    prefix = temp_prefix(dest)
    try:
        entries = sorted(dest.parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            _remove(entry)
        except OSError:
            continue
        removed.append(entry)
    return removed


def _reason(exc: BaseException, temp: Path, dest: Path) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (text or type(exc).__name__).replace(str(temp), str(dest))


def _named_error(exc: Exception, dest: Path, temp: Path) -> DataError | None:
    """``exc`` as a DataError naming ``dest``, for OS errors and errors that name the temp; else None."""
    if isinstance(exc, PrunekitError):
        return None
    if isinstance(exc, OSError) or str(temp) in str(exc) or temp.name in str(exc):
        return DataError(f"cannot write {dest}: {_reason(exc, temp, dest)}")
    return None


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: str | os.PathLike[str], write: Callable[[Path], None], inner: str | None) -> _Staged:
    """Write to a fresh temp next to ``path`` (inside a temp folder when ``inner`` names the file)."""
    dest = Path(path)
    if dest.is_dir():
        raise DataError(f"cannot write {dest}: it is a directory; give a file path")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write {dest}: cannot create the folder {dest.parent} "
                        f"({exc.strerror or exc})") from exc
    remove_stale_temps(dest)
    temp = dest.parent / f"{temp_prefix(dest)}{os.getpid()}-{secrets.token_hex(4)}"
    file = temp if inner is None else temp / inner
    try:
        if inner is not None:
            temp.mkdir()
        else:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write(file)
        _fsync(file)
        os.chmod(file, 0o666 & ~_umask())
    except Exception as exc:
        _remove(temp)
        named = _named_error(exc, dest, temp)
        if named is None:
            raise
        raise named from exc
    except BaseException:  # KeyboardInterrupt, SystemExit: leave nothing behind
        _remove(temp)
        raise
    return _Staged(dest, temp, file)


def _commit(staged: Sequence[_Staged]) -> None:
    """Rename every staged file into place; on a failure the rest are discarded."""
    for i, s in enumerate(staged):
        try:
            os.replace(s.file, s.dest)
        except BaseException as exc:
            for rest in staged[i:]:
                _remove(rest.temp)
            if isinstance(exc, OSError):
                raise DataError(f"cannot write {s.dest}: {_reason(exc, s.temp, s.dest)}") from exc
            raise
        if s.temp != s.file:
            _remove(s.temp)
        _COMMITTED.append(s.dest)
    for folder in dict.fromkeys(s.dest.parent for s in staged):
        with contextlib.suppress(OSError):  # durability of the rename; not every filesystem allows it
            _fsync(folder, directory=True)


def _atomic(path: str | os.PathLike[str], write: Callable[[Path], None], inner: str | None = None) -> Path:
    staged = _stage(path, write, inner)
    pending = _PENDING.get()
    if pending is None:
        _commit([staged])
    else:
        for old in [p for p in pending if p.dest == staged.dest]:  # a second write to the same file wins
            pending.remove(old)
            _remove(old.temp)
        pending.append(staged)
    return staged.dest


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` in one step.

    The temp file lives in the destination folder and is removed if ``write`` raises. Inside
    :func:`write_together` the rename waits for the end of the block.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write(d / "a.txt", lambda p: p.write_text("hi"))
    >>> (d / "a.txt").read_text(), [p.name for p in d.iterdir()]
    ('hi', ['a.txt'])
    """
    return _atomic(path, write)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temp file and an atomic rename; the same ``obj`` gives the same bytes.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> a, b = atomic_torch_save({"x": 1}, d / "a.pt"), atomic_torch_save({"x": 1}, d / "b.pt")
    >>> torch.load(a, weights_only=True)["x"], a.read_bytes() == b.read_bytes()
    (1, True)
    """
    return _atomic(path, lambda tmp: _torch_save(obj, tmp), inner=_ARCHIVE)


def _torch_save(obj: Any, file: Path) -> None:
    try:
        torch.save(obj, file)
    except RuntimeError as exc:  # torch's zip writer reports a full disk or an I/O error this way
        text = str(exc)
        if "PytorchStreamWriter" not in text and "file write failed" not in text:
            raise
        raise OSError(text.rsplit("] ", 1)[-1].strip(" .")) from exc


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def write_together() -> Iterator[None]:
    """Every atomic write in the block (``atomic_write``, ``atomic_torch_save``, checkpoint and plan
    saves) is staged, and all of them are renamed into place when the block ends; if anything in
    the block raises (Ctrl-C included), every temp is removed and no destination changes.

    A nested block joins the outer one.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with write_together():
    ...     _ = atomic_write_text(d / "a.txt", "a")
    ...     (d / "a.txt").exists()
    False
    >>> try:
    ...     with write_together():
    ...         _ = atomic_write_text(d / "b.txt", "b")
    ...         raise RuntimeError("the second file failed")
    ... except RuntimeError:
    ...     pass
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt']
    """
    if _PENDING.get() is not None:
        yield
        return
    pending: list[_Staged] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for s in pending:
            _remove(s.temp)
        raise
    finally:
        _PENDING.reset(token)
    _commit(pending)


def atomic_write_many(writes: Sequence[tuple[str | os.PathLike[str], Callable[[Path], None]]]) -> list[Path]:
    """Write several files all-or-nothing: each ``(path, write)`` like :func:`atomic_write`.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> def fail(tmp):
    ...     raise OSError("disk full")
    >>> atomic_write_many([(d / "a.txt", lambda p: p.write_text("a")), (d / "b.txt", fail)])
    Traceback (most recent call last):
    ...
    prunekit.errors.DataError: cannot write .../b.txt: disk full
    >>> list(d.iterdir())
    []
    """
    with write_together():
        return [atomic_write(path, write) for path, write in writes]


def write_count() -> int:
    """How many files this process has written so far (a mark for :func:`written_since`).

    >>> write_count() >= 0
    True
    """
    return len(_COMMITTED)


def written_since(mark: int) -> list[Path]:
    """Destinations this process wrote after ``mark`` (a :func:`write_count`), each once, in order.

    >>> mark = write_count()
    >>> import tempfile, pathlib
    >>> p = atomic_write_text(pathlib.Path(tempfile.mkdtemp()) / "x.txt", "x")
    >>> written_since(mark) == [p]
    True
    """
    return list(dict.fromkeys(_COMMITTED[mark:]))
