"""Layering: no import cycles between prunekit's packages, counting every import, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import prunekit

SRC = Path(prunekit.__file__).parent


def _unit(module: str) -> str:
    """prunekit.structure.plan -> prunekit.structure; top-level modules stay themselves."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        src = _unit(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("prunekit.") and (SRC.parent / name.replace(".", "/")).exists() | (
                    SRC.parent / (name.replace(".", "/") + ".py")).exists():
                    dst = _unit(name)
                    if dst != src:
                        edges.setdefault(src, set()).add(dst)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


ALLOWED_UP = {
    # the CLI and the package root sit on top of everything; they may import anything
    "prunekit.cli", "prunekit",
}


def test_no_import_cycles_between_packages() -> None:
    edges = {k: v for k, v in _imports().items() if k not in ALLOWED_UP}
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_stages_do_not_import_the_cli_or_the_model_zoo() -> None:
    edges = _imports()
    for stage in ("prunekit.structure", "prunekit.masks", "prunekit.importance", "prunekit.allocation",
                  "prunekit.sparse", "prunekit.train", "prunekit.schedule"):
        assert "prunekit.cli" not in edges.get(stage, set()), stage
    assert "prunekit.models" not in edges.get("prunekit.structure", set())  # structure knows no model zoo
    assert "prunekit.checkpoint" not in edges.get("prunekit.structure", set())
