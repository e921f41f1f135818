"""Every docstring example in the package and every Python block of the README runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import prunekit

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(prunekit.__path__, "prunekit.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"


def test_core_modules_have_examples() -> None:
    """The verbs and types a newcomer meets first each show an example (a test that can fail)."""
    for name in ("prunekit", "prunekit.masks", "prunekit.pruning", "prunekit.schedule", "prunekit.checkpoint"):
        finder = doctest.DocTestFinder()
        assert sum(len(t.examples) for t in finder.find(importlib.import_module(name))) > 0, name


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_readme_python_blocks_run(monkeypatch, tmp_path) -> None:
    blocks = _python_blocks(REPO / "README.md")
    assert blocks, "the README has a Python example"
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")  # as from the repository root, writing nothing there
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


DOCS = sorted(p for p in (REPO / "docs").glob("*.md") if _python_blocks(p))


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_docs_python_blocks_run(path: Path, tmp_path, monkeypatch) -> None:
    """Each page's blocks run in order in one namespace (a page reads as one session), in a temp folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs"}
    for code in _python_blocks(path):
        exec(compile(code, str(path.name), "exec"), namespace)


def test_readme_commands_run(tmp_path, monkeypatch, capsys, data_root) -> None:
    """Every ``prunekit`` line of the README (not the two install-and-run commands), in order, from a folder
    that sees ``checkpoints/`` and ``../shared/data`` as the repository root does."""
    from prunekit.cli.main import main
    from test_howto import commands

    work = tmp_path / "main"
    work.mkdir()
    (work / "checkpoints").symlink_to(REPO / "checkpoints")
    (work / "recipes").symlink_to(REPO / "recipes")
    (tmp_path / "shared").symlink_to(data_root.parent)
    monkeypatch.chdir(work)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "pip install" not in b]
    readme = tmp_path / "readme_commands.md"
    readme.write_text("".join(f"```bash\n{b}```\n" for b in blocks), encoding="utf-8")
    cmds = commands(readme)
    assert len(cmds) >= 7
    for argv in cmds:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"prunekit {' '.join(argv)} -> {code}: {err}"
