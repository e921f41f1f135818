"""ruff runs as part of the tests: lint errors fail the suite."""

import shutil
import subprocess
import sys

from conftest import REPO


def test_ruff_clean() -> None:
    cmd = [shutil.which("ruff")] if shutil.which("ruff") else [sys.executable, "-m", "ruff"]
    proc = subprocess.run([*cmd, "check", "src", "tests", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
