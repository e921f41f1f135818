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
