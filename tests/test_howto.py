"""Every command of docs/howto.md runs, in order, in an empty folder (offline digits data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from prunekit.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def commands(path: Path) -> list[list[str]]:
    """The ``prunekit ...`` lines of every bash block (line continuations joined, comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "prunekit", f"{path.name}: not a prunekit command: {line}"
                out.append(words[1:])
    return out


def test_howto_commands_run_in_order(tmp_path, monkeypatch, capsys) -> None:
    cmds = commands(REPO / "docs" / "howto.md")
    assert len(cmds) >= 12
    monkeypatch.chdir(tmp_path)
    for argv in cmds:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"prunekit {' '.join(argv)} -> {code}: {err}"
